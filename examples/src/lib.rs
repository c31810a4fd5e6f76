//! Runnable examples of Larder live in `examples/examples/`; run one with
//! `cargo run --release --example <name>`. This library holds what several
//! of them share: a real SQLite catalogue ([`shop::Db`]) and a Zipf
//! popularity sampler ([`shop::Zipf`]), and a minimal HTTP/1.1 client
//! ([`http`]) for the examples that serve HTTP and the tests that call them.

pub mod shop {
    //! A shop's catalogue in an embedded SQLite database: products with a
    //! price and a stock, and their reviews. A product page is a real query:
    //! the product, its stock, and the count and average of its reviews.

    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    use larder::core::{Error, ErrorKind, Loader, Result};
    use parking_lot::Mutex;
    use rusqlite::{Connection, OptionalExtension, params};
    use serde::{Deserialize, Serialize};

    /// What a shopper sees.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct ProductPage {
        /// Product id.
        pub id: u64,
        /// Display name.
        pub name: String,
        /// Price in cents.
        pub price_cents: i64,
        /// Units left.
        pub stock: i64,
        /// How many reviews.
        pub reviews: i64,
        /// Their average rating (1 to 5), 0 without reviews.
        pub rating: f64,
    }

    fn db_error(e: rusqlite::Error) -> Error {
        Error::with_source(ErrorKind::Source, "SQLite", e)
    }

    /// The database: a file in a temporary directory (removed on drop), a
    /// small pool of connections, a count of queries, and an optional
    /// emulated network delay per query.
    pub struct Db {
        dir: PathBuf,
        pool: Vec<Mutex<Connection>>,
        next: AtomicUsize,
        queries: AtomicU64,
        delay: Duration,
    }

    impl Drop for Db {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Db {
        /// Creates a catalogue of `products` products with `reviews_per`
        /// reviews each, in a new database under the temporary directory,
        /// opened with `connections` connections.
        pub fn create(
            products: u64,
            reviews_per: u64,
            connections: usize,
            delay: Duration,
        ) -> Result<Arc<Db>> {
            let dir = std::env::temp_dir().join(format!(
                "larder-shop-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::with_source(ErrorKind::Source, "temporary directory", e))?;
            let path = dir.join("shop.db");
            let mut conn = open(&path)?;
            seed(&mut conn, products, reviews_per).map_err(db_error)?;
            let mut pool = vec![Mutex::new(conn)];
            for _ in 1..connections.max(1) {
                pool.push(Mutex::new(open(&path)?));
            }
            Ok(Arc::new(Db {
                dir,
                pool,
                next: AtomicUsize::new(0),
                queries: AtomicU64::new(0),
                delay,
            }))
        }

        /// Queries made so far.
        pub fn queries(&self) -> u64 {
            self.queries.load(Ordering::Relaxed)
        }

        fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
            self.queries.fetch_add(1, Ordering::Relaxed);
            if !self.delay.is_zero() {
                // Emulated network delay (this database is in process).
                std::thread::sleep(self.delay);
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
            let conn = self.pool[i].lock();
            f(&conn).map_err(db_error)
        }

        /// The product page of `id` (blocking): one query.
        pub fn page(&self, id: u64) -> Result<Option<ProductPage>> {
            self.with_conn(|c| {
                c.prepare_cached(
                    "SELECT p.name, p.price_cents, p.stock,
                            (SELECT COUNT(*) FROM reviews r WHERE r.product_id = p.id),
                            (SELECT COALESCE(AVG(r.rating), 0.0) FROM reviews r WHERE r.product_id = p.id)
                     FROM products p WHERE p.id = ?1",
                )?
                .query_row(params![id as i64], |r| {
                    Ok(ProductPage {
                        id,
                        name: r.get(0)?,
                        price_cents: r.get(1)?,
                        stock: r.get(2)?,
                        reviews: r.get(3)?,
                        rating: r.get(4)?,
                    })
                })
                .optional()
            })
        }

        /// Sets a product's price (blocking).
        pub fn set_price(&self, id: u64, price_cents: i64) -> Result<()> {
            self.with_conn(|c| {
                c.prepare_cached("UPDATE products SET price_cents = ?2 WHERE id = ?1")?
                    .execute(params![id as i64, price_cents])
                    .map(|_| ())
            })
        }

        /// Takes one unit of stock if there is one (blocking): `true` if sold.
        pub fn buy(&self, id: u64) -> Result<bool> {
            self.with_conn(|c| {
                c.prepare_cached(
                    "UPDATE products SET stock = stock - 1 WHERE id = ?1 AND stock > 0",
                )?
                .execute(params![id as i64])
                .map(|n| n == 1)
            })
        }

        /// The stock of a product (blocking).
        pub fn stock(&self, id: u64) -> Result<Option<i64>> {
            self.with_conn(|c| {
                c.prepare_cached("SELECT stock FROM products WHERE id = ?1")?
                    .query_row(params![id as i64], |r| r.get(0))
                    .optional()
            })
        }

        /// Sets the stock of several products in one transaction (blocking).
        pub fn set_stocks(&self, rows: &[(u64, i64)]) -> Result<()> {
            self.queries.fetch_add(1, Ordering::Relaxed);
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
            let mut conn = self.pool[i].lock();
            let tx = conn.transaction().map_err(db_error)?;
            {
                let mut q = tx
                    .prepare_cached("UPDATE products SET stock = ?2 WHERE id = ?1")
                    .map_err(db_error)?;
                for (id, stock) in rows {
                    q.execute(params![*id as i64, stock]).map_err(db_error)?;
                }
            }
            tx.commit().map_err(db_error)
        }

        /// The current price (blocking).
        pub fn price(&self, id: u64) -> Result<Option<i64>> {
            self.with_conn(|c| {
                c.prepare_cached("SELECT price_cents FROM products WHERE id = ?1")?
                    .query_row(params![id as i64], |r| r.get(0))
                    .optional()
            })
        }

        /// Sets a product's price (blocking): `false` if there is no such
        /// product (nothing written).
        pub fn update_price(&self, id: u64, price_cents: i64) -> Result<bool> {
            self.with_conn(|c| {
                c.prepare_cached("UPDATE products SET price_cents = ?2 WHERE id = ?1")?
                    .execute(params![id as i64, price_cents])
                    .map(|n| n == 1)
            })
        }
    }

    fn open(path: &Path) -> Result<Connection> {
        let c = Connection::open(path).map_err(db_error)?;
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_error)?;
        c.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_error)?;
        c.busy_timeout(Duration::from_secs(5)).map_err(db_error)?;
        Ok(c)
    }

    fn seed(c: &mut Connection, products: u64, reviews_per: u64) -> rusqlite::Result<()> {
        c.execute_batch(
            "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                    price_cents INTEGER NOT NULL, stock INTEGER NOT NULL);
             CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL,
                                   rating INTEGER NOT NULL, body TEXT NOT NULL);",
        )?;
        let tx = c.transaction()?;
        {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut p = tx.prepare(
                "INSERT INTO products (id, name, price_cents, stock) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut r =
                tx.prepare("INSERT INTO reviews (product_id, rating, body) VALUES (?1, ?2, ?3)")?;
            for id in 0..products {
                p.execute(params![
                    id as i64,
                    format!("Product {id}"),
                    initial_price(id),
                    rng.i64(50..500)
                ])?;
                for _ in 0..reviews_per {
                    r.execute(params![id as i64, rng.i64(1..=5), "Good value."])?;
                }
            }
        }
        tx.execute_batch("CREATE INDEX reviews_by_product ON reviews (product_id);")?;
        tx.commit()
    }

    /// The price every product starts with.
    pub fn initial_price(id: u64) -> i64 {
        999 + (id % 100) as i64 * 10
    }

    /// A [`Loader`] of product pages: each load is a query on a blocking thread.
    #[derive(Clone)]
    pub struct PageLoader(pub Arc<Db>);

    impl Loader<u64, ProductPage> for PageLoader {
        async fn load(&self, id: &u64) -> Result<Option<ProductPage>> {
            let (db, id) = (Arc::clone(&self.0), *id);
            tokio::task::spawn_blocking(move || db.page(id))
                .await
                .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
        }
    }

    /// Zipf(s) popularity over `n` items: item 0 is the most popular.
    pub struct Zipf {
        cdf: Vec<f64>,
    }

    impl Zipf {
        /// The distribution over `n` items with exponent `s`.
        pub fn new(n: u64, s: f64) -> Self {
            let mut cdf = Vec::with_capacity(n as usize);
            let mut sum = 0.0;
            for i in 1..=n {
                sum += 1.0 / (i as f64).powf(s);
                cdf.push(sum);
            }
            for c in &mut cdf {
                *c /= sum;
            }
            Zipf { cdf }
        }

        /// One draw.
        pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
            let u = rng.f64();
            self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u64
        }
    }
}

pub mod http {
    //! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`: one
    //! request per connection (`Connection: close`), enough for the
    //! examples' self-checks and the tests that call their HTTP endpoints.
    //! Not a general client: no chunked encoding, no redirects, no TLS.

    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// A response: the status code and the body as text.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Response {
        /// The status code (200, 404, ...).
        pub status: u16,
        /// The `Content-Type` header, if any.
        pub content_type: Option<String>,
        /// The body.
        pub body: String,
    }

    /// Sends `method path` with an optional JSON `body` to `addr` and reads
    /// the whole response (the server closes the connection after it).
    pub fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Response> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        parse(&raw).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw)),
            )
        })
    }

    fn parse(raw: &[u8]) -> Option<Response> {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let content_type = lines.find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        });
        Some(Response {
            status,
            content_type,
            body: body.to_owned(),
        })
    }
}

pub mod cli {
    //! How the examples start and end: the environment they need, and the
    //! exit code for their outcome. (Examples talk to their user on stderr.)
    #![allow(clippy::print_stderr)]

    use std::process::ExitCode;

    /// The value of `var`; when it is unset or empty, prints what to set
    /// (with `sample` as the example value) and answers exit code 2.
    pub fn required_env(example: &str, var: &str, sample: &str) -> Result<String, ExitCode> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => {
                eprintln!(
                    "{example}: set {var} to reach Redis, e.g.\n  \
                     {var}={sample} cargo run --release --example {example}"
                );
                Err(ExitCode::from(2))
            }
        }
    }

    /// Exit code 0 for `Ok`; otherwise prints the error and answers 1.
    pub fn finish(example: &str, outcome: larder::core::Result<()>) -> ExitCode {
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{example}: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
