//! A flash sale against a real SQLite catalogue, three ways: straight to the
//! database, through Larder's L1, and (with `--redis URL`) through L1 +
//! Redis L2.
//!
//! Shoppers (Tokio tasks) browse product pages with Zipf popularity; a page
//! is one real query (product, stock, review count and average). Mid-run a
//! flash sale sends most traffic to a few products that were cold until
//! then, shoppers buy them, and prices change, all through the cache
//! (cache-aside: write the database, then invalidate). Every page served is
//! checked against the price the database held while it was read: a page
//! whose price was already replaced before the read began is counted as
//! wrong (expected: 0).
//!
//! A last phase keeps the stock of the flash-sale products in a second
//! cache with write-behind: an order updates the cached stock at once and
//! SQLite in batches (durable, journalled in Redis, with `--redis`); at the
//! end the demo checks that SQLite's stock matches the orders exactly.
//!
//! Run: `cargo run --release --example flash_sale`
//! Options: `--shoppers N` (64), `--seconds S` per phase (8), `--products N`
//! (100000), `--reviews N` per product (5), `--db-delay-ms F` emulated
//! network delay per query (0), `--redis URL` (adds the L1 + L2 phase),
//! `--chart FILE.svg` (throughput and p99 latency over time).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a demo prints
#![allow(clippy::disallowed_methods)] // it measures wall time with Instant::now

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder::core::LatencyHistogram;
use larder::prelude::*;
use larder_examples::shop::{Db, PageLoader, ProductPage, Zipf, initial_price};
use parking_lot::RwLock;

/// The products the flash sale is about: cold until the sale starts.
const HOT: [u64; 5] = [50_001, 50_002, 50_003, 50_004, 50_005];
/// The stock each flash-sale product starts every phase with.
const RESTOCK: i64 = 100_000;
/// Chart and progress resolution.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
struct Args {
    shoppers: usize,
    seconds: f64,
    products: u64,
    reviews: u64,
    db_delay_ms: f64,
    redis: Option<String>,
    chart: Option<String>,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        shoppers: 64,
        seconds: 8.0,
        products: 100_000,
        reviews: 5,
        db_delay_ms: 0.0,
        redis: None,
        chart: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |v: &str| format!("{flag}: bad value {v:?}");
        match flag.as_str() {
            "--shoppers" => a.shoppers = value()?.parse().map_err(|_| bad("shoppers"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|_| bad("seconds"))?,
            "--products" => a.products = value()?.parse().map_err(|_| bad("products"))?,
            "--reviews" => a.reviews = value()?.parse().map_err(|_| bad("reviews"))?,
            "--db-delay-ms" => a.db_delay_ms = value()?.parse().map_err(|_| bad("ms"))?,
            "--redis" => a.redis = Some(value()?),
            "--chart" => a.chart = Some(value()?),
            "-h" | "--help" => {
                return Err(
                    "usage: flash_sale [--shoppers N] [--seconds S] [--products N] \
                     [--reviews N] [--db-delay-ms F] [--redis URL] [--chart FILE.svg]"
                        .into(),
                );
            }
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    if a.shoppers == 0 || a.seconds <= 0.0 || a.products <= HOT[4] || a.db_delay_ms < 0.0 {
        return Err(format!(
            "need shoppers >= 1, seconds > 0, products > {}, db-delay-ms >= 0",
            HOT[4]
        ));
    }
    Ok(a)
}

/// The prices each product had, and when each change was under way, to
/// judge every page served. Only changed products have an entry.
#[derive(Default)]
struct Truth {
    log: RwLock<HashMap<u64, Vec<Change>>>,
}

struct Change {
    price: i64,
    /// Before the database write.
    start: Instant,
    /// After the invalidation returned (`None` while under way).
    end: Option<Instant>,
}

impl Truth {
    fn begin(&self, id: u64, price: i64) -> usize {
        let mut log = self.log.write();
        let v = log.entry(id).or_default();
        v.push(Change {
            price,
            start: Instant::now(),
            end: None,
        });
        v.len() - 1
    }

    fn end(&self, id: u64, i: usize) {
        if let Some(c) = self.log.write().get_mut(&id).and_then(|v| v.get_mut(i)) {
            c.end = Some(Instant::now());
        }
    }

    /// Whether `price`, read between `t0` and `t1`, was the product's
    /// price at some point of that read: the price before a change stays
    /// valid until the change has finished (database written and cache
    /// invalidated); a new price is valid once its change began.
    fn plausible(&self, id: u64, price: i64, t0: Instant, t1: Instant) -> bool {
        let log = self.log.read();
        let Some(changes) = log.get(&id) else {
            return price == initial_price(id);
        };
        let valid_until = |i: usize| changes.get(i).is_none_or(|c| c.end.is_none_or(|e| e > t0));
        (price == initial_price(id) && valid_until(0))
            || changes
                .iter()
                .enumerate()
                .any(|(i, c)| c.price == price && c.start <= t1 && valid_until(i + 1))
    }
}

/// The stock of products, kept by write-behind: read from SQLite on a miss,
/// written back in batches.
#[derive(Clone)]
struct StockDb {
    db: Arc<Db>,
    batches: Arc<AtomicU64>,
}

impl Loader<u64, i64> for StockDb {
    async fn load(&self, id: &u64) -> Result<Option<i64>> {
        let (db, id) = (Arc::clone(&self.db), *id);
        tokio::task::spawn_blocking(move || db.stock(id))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
    }
}

impl Writer<u64, i64> for StockDb {
    async fn write(&self, id: &u64, stock: &i64) -> Result<()> {
        self.write_many(&[(*id, *stock)]).await
    }

    async fn delete(&self, _id: &u64) -> Result<()> {
        Err(Error::new(ErrorKind::Unsupported, "stock is never deleted"))
    }

    async fn write_many(&self, rows: &[(u64, i64)]) -> Result<()> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let (db, rows) = (Arc::clone(&self.db), rows.to_vec());
        tokio::task::spawn_blocking(move || db.set_stocks(&rows))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
    }
}

/// How orders take stock: straight in the database, or through the stock
/// cache with write-behind (one lock per product: read, check, decrement).
#[derive(Clone)]
enum Orders {
    Direct,
    Behind {
        stock: Cache<u64, i64>,
        locks: Arc<HashMap<u64, tokio::sync::Mutex<()>>>,
    },
}

impl Orders {
    /// Takes one unit of `id` if there is one: `true` if sold.
    async fn buy(&self, db: &Arc<Db>, id: u64) -> Result<bool> {
        match self {
            Orders::Direct => {
                let d = Arc::clone(db);
                tokio::task::spawn_blocking(move || d.buy(id))
                    .await
                    .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
            }
            Orders::Behind { stock, locks } => {
                let _one_at_a_time = match locks.get(&id) {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                match stock.get_or_load(&id).await? {
                    Some(n) if n > 0 => {
                        stock.put_behind(&id, n - 1).await?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
        }
    }
}

#[derive(Clone)]
enum Level {
    Db(Arc<Db>),
    Cache(Cache<u64, ProductPage>),
}

impl Level {
    async fn page(&self, id: u64) -> Result<Option<ProductPage>> {
        match self {
            Level::Db(db) => {
                let db = Arc::clone(db);
                tokio::task::spawn_blocking(move || db.page(id))
                    .await
                    .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
            }
            Level::Cache(c) => c.get_or_load(&id).await,
        }
    }

    /// Cache-aside: the database first, then the cache.
    async fn after_write(&self, id: u64) -> Result<()> {
        match self {
            Level::Db(_) => Ok(()),
            Level::Cache(c) => c.invalidate(&id).await,
        }
    }
}

/// One tick of the timeline.
#[derive(Default)]
struct Tick {
    requests: AtomicU64,
    latency: LatencyHistogram,
}

struct Phase {
    name: String,
    requests: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    db_queries: u64,
    errors: u64,
    wrong_prices: u64,
    orders: u64,
    price_changes: u64,
    stats: Option<Stats>,
    timeline: Vec<(f64, f64, f64)>,
    /// Per product, the orders taken (for the stock check).
    sold: HashMap<u64, u64>,
}

async fn run_phase(
    name: &str,
    level: Level,
    db: &Arc<Db>,
    truth: &Arc<Truth>,
    args: &Args,
    orders: &Orders,
) -> Phase {
    let zipf = Arc::new(Zipf::new(args.products, 1.0));
    let duration = Duration::from_secs_f64(args.seconds);
    let ticks: Arc<Vec<Tick>> = Arc::new(
        (0..=(duration.as_millis() / TICK.as_millis()) as usize)
            .map(|_| Tick::default())
            .collect(),
    );
    let start = Instant::now();
    let (sale_from, sale_to) = (duration.mul_f64(0.35), duration.mul_f64(0.65));
    let done = Arc::new(AtomicBool::new(false));
    let queries_before = db.queries();

    // Price changes: every 20 ms, one product (half of them hot), sequentially.
    let updater = {
        let (level, db, truth, done, zipf) = (
            level.clone(),
            Arc::clone(db),
            Arc::clone(truth),
            Arc::clone(&done),
            Arc::clone(&zipf),
        );
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(11);
            let mut changes = 0u64;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let id = if rng.bool() {
                    HOT[rng.usize(..HOT.len())]
                } else {
                    zipf.sample(&mut rng)
                };
                let price = rng.i64(500..5_000);
                let i = truth.begin(id, price);
                let d = Arc::clone(&db);
                let written = tokio::task::spawn_blocking(move || d.set_price(id, price)).await;
                if matches!(written, Ok(Ok(()))) && level.after_write(id).await.is_ok() {
                    changes += 1;
                }
                truth.end(id, i);
            }
            changes
        })
    };

    let mut shoppers = Vec::new();
    for s in 0..args.shoppers {
        let (level, db, truth, zipf, ticks, done, buyer) = (
            level.clone(),
            Arc::clone(db),
            Arc::clone(truth),
            Arc::clone(&zipf),
            Arc::clone(&ticks),
            Arc::clone(&done),
            orders.clone(),
        );
        shoppers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(1000 + s as u64);
            let mut lat = Vec::with_capacity(1 << 16);
            let (mut errors, mut wrong) = (0u64, 0u64);
            let mut sold: HashMap<u64, u64> = HashMap::new();
            while !done.load(Ordering::Relaxed) {
                let since = start.elapsed();
                let sale = since >= sale_from && since < sale_to;
                let hot = sale && rng.f64() < 0.8;
                let id = if hot {
                    HOT[rng.usize(..HOT.len())]
                } else {
                    zipf.sample(&mut rng)
                };
                let t0 = Instant::now();
                let page = level.page(id).await;
                let t1 = Instant::now();
                let took = t1 - t0;
                lat.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                let at = ((t1 - start).as_millis() / TICK.as_millis()) as usize;
                let tick = &ticks[at.min(ticks.len() - 1)];
                tick.requests.fetch_add(1, Ordering::Relaxed);
                tick.latency.record(took);
                match page {
                    Ok(Some(p)) => {
                        if !truth.plausible(id, p.price_cents, t0, t1) {
                            wrong += 1;
                        }
                    }
                    Ok(None) => wrong += 1, // every product exists
                    Err(_) => errors += 1,
                }
                // Some flash-sale shoppers buy: a write, then an invalidation.
                if hot && rng.f64() < 0.02 {
                    match buyer.buy(&db, id).await {
                        Ok(true) => {
                            *sold.entry(id).or_default() += 1;
                            let _ = level.after_write(id).await;
                        }
                        Ok(false) => {}
                        Err(_) => errors += 1,
                    }
                }
            }
            (lat, errors, wrong, sold)
        }));
    }

    // Progress, then stop everyone at the deadline.
    loop {
        tokio::time::sleep(TICK).await;
        let elapsed = start.elapsed();
        let shown = elapsed.min(duration);
        let i = ((shown.as_millis() / TICK.as_millis()) as usize).min(ticks.len() - 1);
        let rate =
            ticks[i.saturating_sub(1)].requests.load(Ordering::Relaxed) as f64 / TICK.as_secs_f64();
        let frac = shown.as_secs_f64() / duration.as_secs_f64();
        let bar: String = (0..30)
            .map(|j| if (j as f64) < frac * 30.0 { '#' } else { '-' })
            .collect();
        let sale = if shown >= sale_from && shown < sale_to {
            "  FLASH SALE"
        } else {
            ""
        };
        eprint!(
            "\r  {name:<14} [{bar}] {:>3.0}% {rate:>10.0} req/s{sale:<12}",
            frac * 100.0
        );
        let _ = std::io::stderr().flush();
        if elapsed >= duration {
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    eprintln!();
    let mut phase = Phase {
        name: name.to_owned(),
        requests: 0,
        elapsed,
        latencies_us: Vec::new(),
        db_queries: 0,
        errors: 0,
        wrong_prices: 0,
        orders: 0,
        price_changes: updater.await.unwrap_or(0),
        stats: match &level {
            Level::Cache(c) => Some(c.stats()),
            Level::Db(_) => None,
        },
        timeline: Vec::new(),
        sold: HashMap::new(),
    };
    for s in shoppers {
        if let Ok((lat, errors, wrong, sold)) = s.await {
            phase.latencies_us.extend(lat);
            phase.errors += errors;
            phase.wrong_prices += wrong;
            for (id, n) in sold {
                phase.orders += n;
                *phase.sold.entry(id).or_default() += n;
            }
        }
    }
    phase.requests = phase.latencies_us.len() as u64;
    phase.db_queries = db.queries() - queries_before;
    if let Level::Cache(c) = &level {
        phase.stats = Some(c.stats());
        c.close().await;
    }
    phase.timeline = ticks
        .iter()
        .enumerate()
        .take(ticks.len() - 1)
        .map(|(i, t)| {
            let snap = t.latency.snapshot();
            (
                (i + 1) as f64 * TICK.as_secs_f64(),
                t.requests.load(Ordering::Relaxed) as f64 / TICK.as_secs_f64(),
                snap.quantile(0.99).as_secs_f64() * 1e3,
            )
        })
        .collect();
    phase
}

fn cache_level(db: &Arc<Db>, redis: Option<&str>, phase: &str) -> Result<Level> {
    let builder = Cache::<u64, ProductPage>::builder()
        .memory(20_000)
        .ttl(
            Ttl::fixed(Duration::from_secs(30))
                .jitter(0.1)
                .stale_for(Duration::from_secs(5)),
        )
        .load_timeout(Duration::from_secs(5))
        .loader(PageLoader(Arc::clone(db)));
    let builder = match redis {
        Some(url) => {
            let ns = format!("flash-sale-{}-{phase}", std::process::id());
            let config = RedisConfig::builder(Topology::Standalone(url.to_owned()))
                .namespace(&ns)
                .build()?;
            builder.redis(RedisStore::new(config)?)
        }
        None => builder,
    };
    Ok(Level::Cache(builder.build()?))
}

/// The stock cache of the write-behind phase: L1 (and, with Redis, L2 and
/// the durable journal), batches every 100 ms.
fn stock_cache(
    db: &Arc<Db>,
    batches: &Arc<AtomicU64>,
    redis: Option<&str>,
) -> Result<Cache<u64, i64>> {
    let source = StockDb {
        db: Arc::clone(db),
        batches: Arc::clone(batches),
    };
    let builder = Cache::<u64, i64>::builder()
        .ttl(Ttl::fixed(Duration::from_secs(60)))
        .loader(source.clone())
        .writer(source)
        .write_behind(
            WriteBehind::new()
                .batch(500)
                .interval(Duration::from_millis(100)),
        );
    match redis {
        Some(url) => {
            let ns = format!("flash-sale-stock-{}", std::process::id());
            let config = RedisConfig::builder(Topology::Standalone(url.to_owned()))
                .namespace(&ns)
                .build()?;
            builder
                .redis(RedisStore::new(config)?)
                .durable(&format!("flash-sale-{}", std::process::id()))
                .build()
        }
        None => builder.build(),
    }
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i])
}

fn print_table(phases: &mut [Phase]) {
    println!();
    println!(
        "| phase | req/s | p50 µs | p99 µs | p999 µs | DB queries | L1 hits | L2 hits | coalesced | served in grace | wrong prices | errors |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for p in phases.iter_mut() {
        p.latencies_us.sort_unstable();
        let rps = p.requests as f64 / p.elapsed.as_secs_f64();
        let pct = |n: u64| {
            if p.requests == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", n as f64 * 100.0 / p.requests as f64)
            }
        };
        let (l1, l2, coalesced, grace) = match &p.stats {
            Some(s) => (
                pct(s.l1_hits),
                if s.l2_hits + s.l2_misses > 0 {
                    pct(s.l2_hits)
                } else {
                    "-".into()
                },
                s.coalesced.to_string(),
                s.stale_served.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            rps,
            quantile(&p.latencies_us, 0.5),
            quantile(&p.latencies_us, 0.99),
            quantile(&p.latencies_us, 0.999),
            p.db_queries,
            l1,
            l2,
            coalesced,
            grace,
            p.wrong_prices,
            p.errors
        );
    }
}

/// Two panels (throughput, p99 latency) with one line per phase.
fn chart(phases: &[Phase]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 220.0;
    const COLORS: [&str; 4] = ["#c0392b", "#2471a3", "#1e8449", "#b9770e"];
    let max_t = phases
        .iter()
        .flat_map(|p| p.timeline.iter().map(|t| t.0))
        .fold(1.0, f64::max);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n",
        W + 80.0,
        2.0 * H + 120.0
    );
    for (panel, (label, pick)) in [
        ("requests per second", 1usize),
        ("p99 latency, ms (log2 bucket upper bound)", 2),
    ]
    .into_iter()
    .enumerate()
    {
        let top = 30.0 + panel as f64 * (H + 50.0);
        let max_y = phases
            .iter()
            .flat_map(|p| p.timeline.iter().map(|t| if pick == 1 { t.1 } else { t.2 }))
            .fold(1e-9, f64::max);
        let _ = writeln!(
            svg,
            "<text x='60' y='{}'>{label} (max {max_y:.1})</text>\n<rect x='60' y='{top}' width='{W}' height='{H}' fill='none' stroke='#999'/>",
            top - 8.0
        );
        for (i, p) in phases.iter().enumerate() {
            let points: Vec<String> = p
                .timeline
                .iter()
                .map(|t| {
                    let y = if pick == 1 { t.1 } else { t.2 };
                    format!(
                        "{:.1},{:.1}",
                        60.0 + t.0 / max_t * W,
                        top + H - y / max_y * H
                    )
                })
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill='none' stroke='{}' stroke-width='1.5' points='{}'/>",
                COLORS[i % COLORS.len()],
                points.join(" ")
            );
        }
    }
    for (i, p) in phases.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x='{}' y='{}' fill='{}'>{}</text>",
            60.0 + i as f64 * 200.0,
            2.0 * H + 110.0,
            COLORS[i % COLORS.len()],
            p.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(args).await {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("flash_sale: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<u64> {
    let delay = Duration::from_secs_f64(args.db_delay_ms / 1e3);
    println!(
        "Larder flash sale: {} shoppers, {} products ({} reviews each) in SQLite, {:.0} s per phase",
        args.shoppers, args.products, args.reviews, args.seconds
    );
    if !delay.is_zero() {
        println!(
            "EMULATED network delay per database query: {:.2} ms",
            args.db_delay_ms
        );
    }
    println!(
        "Zipf(1.0) browsing; from 35% to 65% of each phase a flash sale sends 80% of traffic to products {:?}; \
         2% of those shoppers buy; a price changes every 20 ms. Writes go to the database, then invalidate the cache.",
        HOT
    );
    let t = Instant::now();
    let db = Db::create(args.products, args.reviews, 4, delay)?;
    println!("catalogue created in {:.1} s", t.elapsed().as_secs_f64());

    // The price history spans the phases: the database carries over.
    let truth = Arc::new(Truth::default());
    // Every phase starts with the same stock of the sale's products, so
    // each can sell as much as the last.
    let restock = || db.set_stocks(&HOT.map(|id| (id, RESTOCK)));
    restock()?;
    let mut phases = vec![
        run_phase(
            "database only",
            Level::Db(Arc::clone(&db)),
            &db,
            &truth,
            &args,
            &Orders::Direct,
        )
        .await,
    ];
    let direct = Orders::Direct;
    restock()?;
    phases.push(
        run_phase(
            "larder L1",
            cache_level(&db, None, "l1")?,
            &db,
            &truth,
            &args,
            &direct,
        )
        .await,
    );
    if let Some(url) = &args.redis {
        restock()?;
        let level = cache_level(&db, Some(url), "l2")?;
        phases.push(run_phase("larder L1 + L2", level, &db, &truth, &args, &direct).await);
    }
    // The same again (on the last phase's levels, in a namespace of its
    // own), with orders through a stock cache with write-behind.
    restock()?;
    let before: Vec<(u64, i64)> = HOT
        .iter()
        .map(|&id| Ok((id, db.stock(id)?.unwrap_or(0))))
        .collect::<Result<_>>()?;
    let batches = Arc::new(AtomicU64::new(0));
    let stock = stock_cache(&db, &batches, args.redis.as_deref())?;
    let orders = Orders::Behind {
        stock: stock.clone(),
        locks: Arc::new(
            HOT.iter()
                .map(|&id| (id, tokio::sync::Mutex::new(())))
                .collect(),
        ),
    };
    let name = if args.redis.is_some() {
        "+ write-behind (durable)"
    } else {
        "+ write-behind"
    };
    let level = cache_level(&db, args.redis.as_deref(), "wb")?;
    phases.push(run_phase(name, level, &db, &truth, &args, &orders).await);
    stock.close().await;
    let wb = stock.stats().write_behind.unwrap_or_default();
    let last = phases.last().expect("phases");
    let mismatched: Vec<u64> = before
        .iter()
        .filter(|&&(id, was)| {
            let sold = last.sold.get(&id).copied().unwrap_or(0).cast_signed();
            db.stock(id).ok().flatten() != Some(was - sold)
        })
        .map(|&(id, _)| id)
        .collect();
    let wb_line = format!(
        "write-behind: {} orders took stock in the cache; SQLite got them in {} batches \
         ({} writes coalesced, {} journalled, {} dead letters); SQLite's stock matches the \
         orders for {} of {} products",
        last.orders,
        batches.load(Ordering::Relaxed),
        wb.coalesced,
        wb.journalled,
        wb.dead_letters,
        HOT.len() - mismatched.len(),
        HOT.len()
    );
    if let Some(redis) = stock.redis() {
        redis.clear_namespace().await?;
        let journal = redis.keyspace().global_key("wb:journal")?;
        let mut del = larder::redis::redis::cmd("DEL");
        del.arg(&journal);
        redis.command::<u64>(Some(&journal), del, true).await?;
    }
    print_table(&mut phases);
    println!("{wb_line}");
    let wrong: u64 = phases.iter().map(|p| p.wrong_prices).sum();
    let base = phases[0].requests as f64 / phases[0].elapsed.as_secs_f64();
    for p in &phases[1..] {
        let rps = p.requests as f64 / p.elapsed.as_secs_f64();
        println!(
            "{}: {:.1}x the database's throughput with {:.1}% of its queries per request",
            p.name,
            rps / base,
            100.0 * (p.db_queries as f64 / p.requests.max(1) as f64)
                / (phases[0].db_queries as f64 / phases[0].requests.max(1) as f64)
        );
    }
    let changes: u64 = phases.iter().map(|p| p.price_changes).sum();
    let orders: u64 = phases.iter().map(|p| p.orders).sum();
    println!(
        "{changes} price changes and {orders} orders went through; pages with a price replaced before the read began \
         (the bound: 0 ms after the invalidation returns): {wrong} (expected 0)"
    );
    if let Some(path) = &args.chart {
        std::fs::write(path, chart(&phases))
            .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "writing the chart", e))?;
        println!("chart written to {path}");
    }
    Ok(wrong + mismatched.len() as u64)
}
