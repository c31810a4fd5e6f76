//! A product catalogue as an HTTP service, the way a cache is usually
//! deployed: axum in front, Larder in the middle (L1, optionally Redis as
//! the L2), SQLite behind (the shop of `examples/src/lib.rs`: a page is the
//! product, its stock and its review aggregate).
//!
//! | route | what |
//! |---|---|
//! | `GET /products/{id}` | the product page as JSON (404 if there is none) |
//! | `PUT /products/{id}/price` | body `{"price_cents": 1299}`: writes the database, then invalidates the key |
//! | `GET /metrics` | Prometheus text: the cache's figures and the HTTP requests by route and status |
//! | `GET /healthz` | `ok`, and the L2's state (a Redis outage degrades the cache, not the service) |
//!
//! Run: `cargo run --release --example catalog_service -- --port 8080`
//! Options: `--port P` (8080; 0 picks a free port), `--redis URL` (Redis as
//! the L2), `--products N` (100000), `--db-delay-ms F` (emulated network
//! delay per query, 0), `--no-cache` (every read goes to the database, for
//! comparison). It prints `listening on http://ADDR` once it accepts
//! connections. See README.md beside this file for a load test.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints
#![allow(clippy::disallowed_methods)] // it times the catalogue's creation with Instant::now

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use larder::prelude::*;
use larder::redis::redact;
use larder_examples::shop::{Db, PageLoader, ProductPage};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

const USAGE: &str =
    "usage: catalog_service [--port P] [--redis URL] [--products N] [--db-delay-ms F] [--no-cache]";

struct Args {
    port: u16,
    redis: Option<String>,
    products: u64,
    db_delay_ms: f64,
    no_cache: bool,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        port: 8080,
        redis: None,
        products: 100_000,
        db_delay_ms: 0.0,
        no_cache: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        let bad = |what: &str| format!("{flag}: expected {what}\n{USAGE}");
        match flag.as_str() {
            "--port" => a.port = value()?.parse().map_err(|_| bad("a port number"))?,
            "--redis" => a.redis = Some(value()?),
            "--products" => a.products = value()?.parse().map_err(|_| bad("a count"))?,
            "--db-delay-ms" => a.db_delay_ms = value()?.parse().map_err(|_| bad("milliseconds"))?,
            "--no-cache" => a.no_cache = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    if a.products == 0
        || !a.db_delay_ms.is_finite()
        || a.db_delay_ms < 0.0
        || (a.no_cache && a.redis.is_some())
    {
        return Err(format!(
            "need products >= 1, db-delay-ms >= 0, and not both --no-cache and --redis\n{USAGE}"
        ));
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("catalog_service: {e} (kind {:?})", e.kind());
            ExitCode::FAILURE
        }
    }
}

/// What every handler shares.
struct App {
    db: Arc<Db>,
    /// `None` with `--no-cache`.
    cache: Option<Cache<u64, ProductPage>>,
    prometheus: PrometheusHandle,
}

type Shared = State<Arc<App>>;

/// An error as the client sees it: a status chosen from the error's kind
/// (never from its message), and a JSON body.
struct ApiError {
    status: StatusCode,
    kind: String,
    message: String,
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::InvalidKey | ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Connection | ErrorKind::CircuitOpen | ErrorKind::Closed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Source | ErrorKind::SourcePanicked => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            kind: format!("{:?}", e.kind()),
            message: e.to_string(),
        }
    }
}

impl ApiError {
    fn not_found(id: u64) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "NotFound".into(),
            message: format!("no product {id}"),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    kind: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(ErrorBody {
            error: &self.message,
            kind: &self.kind,
        });
        (self.status, body).into_response()
    }
}

/// Counts a request by route and status (`catalog_http_requests_total`).
fn count(route: &'static str, status: StatusCode) {
    metrics::counter!(
        "catalog_http_requests_total",
        "route" => route,
        "status" => status.as_u16().to_string()
    )
    .increment(1);
}

fn counted<T: IntoResponse>(route: &'static str, r: std::result::Result<T, ApiError>) -> Response {
    let resp = match r {
        Ok(ok) => ok.into_response(),
        Err(e) => e.into_response(),
    };
    count(route, resp.status());
    resp
}

/// Runs a blocking database call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
}

/// `GET /products/{id}`: the cache (L1, L2, then one load per key for all
/// concurrent callers), or the database with `--no-cache`.
async fn get_product(State(app): Shared, Path(id): Path<u64>) -> Response {
    let page = async {
        let page = match &app.cache {
            Some(cache) => cache.get_or_load(&id).await?,
            None => {
                let db = Arc::clone(&app.db);
                blocking(move || db.page(id)).await?
            }
        };
        page.map(axum::Json).ok_or_else(|| ApiError::not_found(id))
    };
    counted("/products/{id}", page.await)
}

#[derive(Deserialize)]
struct PriceChange {
    price_cents: i64,
}

#[derive(Serialize)]
struct PriceChanged {
    id: u64,
    price_cents: i64,
}

/// `PUT /products/{id}/price`: cache-aside. Write the database first, then
/// invalidate, so no reader can cache the old price after this returns.
async fn put_price(
    State(app): Shared,
    Path(id): Path<u64>,
    axum::Json(change): axum::Json<PriceChange>,
) -> Response {
    let result = async {
        if change.price_cents <= 0 {
            return Err(ApiError::from(Error::new(
                ErrorKind::InvalidArgument,
                "price_cents must be positive",
            )));
        }
        let db = Arc::clone(&app.db);
        let price = change.price_cents;
        if !blocking(move || db.update_price(id, price)).await? {
            return Err(ApiError::not_found(id));
        }
        if let Some(cache) = &app.cache {
            // If this fails (Redis unreachable), the price is written but
            // other instances may serve the old one until it expires: say so.
            cache.invalidate(&id).await?;
        }
        Ok(axum::Json(PriceChanged {
            id,
            price_cents: price,
        }))
    };
    counted("/products/{id}/price", result.await)
}

/// `GET /metrics`: the cache's figures, published at scrape time.
async fn metrics_text(State(app): Shared) -> Response {
    if let Some(cache) = &app.cache {
        cache.export_metrics("products");
    }
    count("/metrics", StatusCode::OK);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
        .into_response()
}

/// `GET /healthz`: the process serves. Redis is reported, not required:
/// without it reads fall back to the L1 and the database.
async fn healthz(State(app): Shared) -> Response {
    let l2 = match app.cache.as_ref().and_then(|c| c.redis()) {
        None => "none".to_owned(),
        Some(redis) => match tokio::time::timeout(Duration::from_secs(1), redis.ping()).await {
            Ok(Ok(())) => "up".to_owned(),
            Ok(Err(e)) => format!("down ({:?}); serving from L1 and the database", e.kind()),
            Err(_) => "down (no answer in 1 s); serving from L1 and the database".to_owned(),
        },
    };
    count("/healthz", StatusCode::OK);
    format!("ok\nl2: {l2}\n").into_response()
}

async fn run(args: Args) -> Result<()> {
    let prometheus = PrometheusBuilder::new().install_recorder().map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidConfig,
            "installing the Prometheus recorder",
            e,
        )
    })?;
    let started = Instant::now();
    let delay = Duration::from_secs_f64(args.db_delay_ms / 1e3);
    let db = Db::create(args.products, 5, 4, delay)?;
    println!(
        "catalogue: {} products in SQLite, created in {:.1} s{}",
        args.products,
        started.elapsed().as_secs_f64(),
        if delay.is_zero() {
            String::new()
        } else {
            format!(" (EMULATED delay per query: {} ms)", args.db_delay_ms)
        }
    );
    let cache = if args.no_cache {
        println!("cache: none (--no-cache): every read queries the database");
        None
    } else {
        let mut builder = Cache::<u64, ProductPage>::builder()
            .memory(20_000)
            .ttl(
                Ttl::fixed(Duration::from_secs(60))
                    .jitter(0.1)
                    .stale_for(Duration::from_secs(10)),
            )
            .negative_ttl(Duration::from_secs(5))
            .load_timeout(Duration::from_secs(2))
            .loader(PageLoader(Arc::clone(&db)));
        match &args.redis {
            Some(url) => {
                let store = RedisStore::new(
                    RedisConfig::builder(Topology::Standalone(url.clone()))
                        .namespace("catalog")
                        .build()?,
                )?;
                println!(
                    "cache: L1 (20000 entries) + Redis L2 at {} (namespace catalog)",
                    redact(url)
                );
                builder = builder.redis(store);
            }
            None => println!("cache: L1 (20000 entries), no L2"),
        }
        Some(builder.build()?)
    };

    let app = Arc::new(App {
        db,
        cache: cache.clone(),
        prometheus,
    });
    let router = Router::new()
        .route("/products/{id}", get(get_product))
        .route("/products/{id}/price", put(put_price))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "binding the port", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "the bound address", e))?;
    println!("listening on http://{addr}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Connection, "serving HTTP", e))?;
    println!("shutting down");
    if let Some(cache) = cache {
        cache.close().await;
    }
    Ok(())
}
