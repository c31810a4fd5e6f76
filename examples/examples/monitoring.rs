//! A Prometheus endpoint for a Larder cache: the `metrics` crate's
//! Prometheus recorder, a `GET /metrics` handler (axum) that publishes the
//! cache's figures (`Cache::export_metrics`) and renders them, and a short
//! workload over the SQLite shop so that there is something to see: hits
//! and misses per level, loads, load time, invalidations, entries.
//!
//! Run: `cargo run --example monitoring` runs the workload, scrapes its own
//! endpoint once over HTTP, prints the scrape and exits.
//! `cargo run --example monitoring -- --serve-for 300 --port 9898` keeps
//! serving (with a trickle of reads) for Prometheus or
//! `curl localhost:9898/metrics`. With `REDIS_URL` set, Redis is the L2 and
//! the `level="l2"` series and `larder_breaker_open` move too.
//!
//! Useful queries: L1 hit ratio
//! `sum(rate(larder_requests_total{level="l1",result="hit"}[1m])) / sum(rate(larder_requests_total{level="l1"}[1m]))`;
//! mean load time
//! `rate(larder_load_duration_microseconds_sum[1m]) / rate(larder_load_duration_microseconds_count[1m]) / 1e6`.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use larder::prelude::*;
use larder::redis::redact;
use larder_examples::shop::{Db, PageLoader, ProductPage, Zipf};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const USAGE: &str = "usage: monitoring [--serve-for SECONDS] [--port PORT]";

struct Args {
    serve_for: Option<u64>,
    port: u16,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        serve_for: None,
        port: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--serve-for" => {
                a.serve_for = Some(value()?.parse().map_err(|_| "--serve-for: seconds")?);
            }
            "--port" => a.port = value()?.parse().map_err(|_| "--port: a port number")?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
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
    let redis = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    match run(args, redis.as_deref()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitoring: {e} (kind {:?})", e.kind());
            ExitCode::FAILURE
        }
    }
}

/// What the handler needs.
#[derive(Clone)]
struct AppState {
    cache: Cache<u64, ProductPage>,
    prometheus: PrometheusHandle,
}

/// `GET /metrics`: publish the cache's current figures, then render
/// everything the recorder holds in the Prometheus text format.
async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    app.cache.export_metrics("products");
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
}

async fn run(args: Args, redis: Option<&str>) -> Result<()> {
    // 1. The recorder: installed once per process, before anything records.
    let prometheus = PrometheusBuilder::new().install_recorder().map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidConfig,
            "installing the Prometheus recorder",
            e,
        )
    })?;

    // 2. The cache over the SQLite shop: 5,000 products, an L1 of 1,000
    //    entries (so the long tail misses), optionally Redis as the L2.
    let db = Db::create(5_000, 2, 2, Duration::ZERO)?;
    let mut builder = Cache::<u64, ProductPage>::builder()
        .memory(1_000)
        .ttl(Ttl::fixed(Duration::from_secs(60)).jitter(0.1))
        .loader(PageLoader(Arc::clone(&db)));
    if let Some(url) = redis {
        let store = RedisStore::new(
            RedisConfig::builder(Topology::Standalone(url.to_owned()))
                .namespace("larder-example-monitoring")
                .build()?,
        )?;
        store.clear_namespace().await?;
        println!("L2: Redis at {}", redact(url));
        builder = builder.redis(store);
    }
    let cache = builder.build()?;

    // 3. A short workload: 4 tasks, 5,000 Zipf reads each, and 50 price
    //    changes (write the database, then invalidate).
    let zipf = Arc::new(Zipf::new(5_000, 1.0));
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (cache, zipf) = (cache.clone(), Arc::clone(&zipf));
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            for _ in 0..5_000 {
                cache.get_or_load(&zipf.sample(&mut rng)).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for id in 0..50u64 {
        let d = Arc::clone(&db);
        tokio::task::spawn_blocking(move || d.set_price(id, 500 + id as i64))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))??;
        cache.invalidate(&id).await?;
    }
    for t in tasks {
        t.await
            .map_err(|e| Error::with_source(ErrorKind::Source, "workload task", e))??;
    }
    let s = cache.stats();
    println!(
        "workload: {} reads; l1 hits {}, l1 misses {}, l2 hits {}, loads ok {}, coalesced {}, invalidations {}; {} SQL queries",
        s.l1_hits + s.l1_misses,
        s.l1_hits,
        s.l1_misses,
        s.l2_hits,
        s.loads_ok,
        s.coalesced,
        s.invalidations,
        db.queries()
    );

    // 4. The endpoint.
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(AppState {
            cache: cache.clone(),
            prometheus,
        });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "binding the port", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::with_source(ErrorKind::InvalidArgument, "the bound address", e))?;
    println!("serving http://{addr}/metrics");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    match args.serve_for {
        None => {
            // One scrape over HTTP, as Prometheus would make it.
            let body = scrape(addr).await?;
            println!("--- one scrape of /metrics (larder_ series) ---");
            for line in body.lines().filter(|l| l.contains("larder_")) {
                println!("{line}");
            }
        }
        Some(secs) => {
            // Keep a trickle of reads going so the graphs move.
            let deadline = tokio::time::sleep(Duration::from_secs(secs));
            tokio::pin!(deadline);
            let mut rng = fastrand::Rng::with_seed(99);
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = tick.tick() => {
                        let id = zipf.sample(&mut rng);
                        if let Err(e) = cache.get_or_load(&id).await {
                            eprintln!("read {id}: {e}");
                        }
                    }
                }
            }
        }
    }
    server.abort();
    cache.close().await;
    Ok(())
}

/// `GET /metrics` with the examples' minimal client (blocking, so on a
/// blocking thread).
async fn scrape(addr: SocketAddr) -> Result<String> {
    let resp = tokio::task::spawn_blocking(move || {
        larder_examples::http::request(addr, "GET", "/metrics", None)
    })
    .await
    .map_err(|e| Error::with_source(ErrorKind::Source, "scrape task", e))?
    .map_err(|e| Error::with_source(ErrorKind::Connection, "scraping /metrics", e))?;
    println!(
        "GET /metrics -> {} ({})",
        resp.status,
        resp.content_type.as_deref().unwrap_or("no content type")
    );
    if resp.status != 200 {
        return Err(Error::new(
            ErrorKind::Backend,
            format!("/metrics answered {}", resp.status),
        ));
    }
    Ok(resp.body)
}
