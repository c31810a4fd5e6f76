//! `metrics` feature: what `export_metrics` publishes, read back through a
//! recorder of the test's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use larder::Cache;
use larder::core::MockClock;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

use crate::TestLoader;

#[derive(Default, Clone)]
struct Seen(Arc<Mutex<HashMap<String, f64>>>);

struct Cell(String, Seen);

impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        *self.1.0.lock().unwrap().entry(self.0.clone()).or_default() += v as f64;
    }
    fn absolute(&self, v: u64) {
        self.1.0.lock().unwrap().insert(self.0.clone(), v as f64);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, v: f64) {
        *self.1.0.lock().unwrap().entry(self.0.clone()).or_default() += v;
    }
    fn decrement(&self, v: f64) {
        *self.1.0.lock().unwrap().entry(self.0.clone()).or_default() -= v;
    }
    fn set(&self, v: f64) {
        self.1.0.lock().unwrap().insert(self.0.clone(), v);
    }
}

fn name(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Seen {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Cell(name(key), self.clone())))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Cell(name(key), self.clone())))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_metrics_publishes_the_figures_per_level() {
    let clock = MockClock::new();
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .loader(TestLoader::default())
        .build()
        .unwrap();
    for _ in 0..3 {
        c.get_or_load(&1).await.unwrap();
    }
    let seen = Seen::default();
    metrics::with_local_recorder(&seen, || c.export_metrics("products"));
    let m = seen.0.lock().unwrap();
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:?}"))
    };
    assert_eq!(
        get("larder_requests_total{cache=products,level=l1,result=hit}"),
        2.0
    );
    assert_eq!(
        get("larder_requests_total{cache=products,level=l1,result=miss}"),
        1.0
    );
    assert_eq!(get("larder_loads_total{cache=products,result=ok}"), 1.0);
    assert_eq!(get("larder_l1_entries{cache=products}"), 1.0);
}

/// The write-side figures: the durable journal and coherence.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_metrics_publishes_the_journal_and_coherence_figures() {
    use std::time::Duration;

    let server = larder_testkit::RedisServer::start().unwrap();
    let db = crate::write::MapDb::default();
    let c: Cache<u64, String> = Cache::builder()
        .redis(larder::redis::RedisStore::from_url(&server.url()).unwrap())
        .loader(db.clone())
        .writer(db.clone())
        .write_behind(larder::WriteBehind::new())
        .durable("metrics-test")
        .coherence(larder::CoherenceMode::Tracking)
        .build()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), c.coherence_ready())
        .await
        .unwrap();
    c.put_behind(&1, "v".into()).await.unwrap();
    let seen = Seen::default();
    metrics::with_local_recorder(&seen, || c.export_metrics("shop"));
    {
        let m = seen.0.lock().unwrap();
        assert_eq!(
            m.get("larder_write_behind_journalled_total{cache=shop}"),
            Some(&1.0)
        );
        assert_eq!(m.get("larder_coherence_connected{cache=shop}"), Some(&1.0));
        assert!(
            m.contains_key("larder_coherence_evicted_total{cache=shop}"),
            "{m:?}"
        );
    }
    c.close().await;
}
