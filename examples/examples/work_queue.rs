//! A reliable work queue on Redis that survives a crashed worker. A producer
//! pushes three restock jobs; worker 1 takes one and "crashes" (it drops the
//! delivery and never acknowledges it); worker 2 does the other two. Taking
//! a job moved it atomically to a processing list with a lease, so the
//! crashed worker's job is not lost: once its visibility timeout (1 s here)
//! has passed, `requeue_expired` puts it back, and worker 2 gets the same
//! job, with the same id, and acknowledges it. Delivery is at least once, so
//! handlers must be idempotent.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example work_queue`
//!
//! Each run uses a queue of its own (`restock-<run id>`), so a run never
//! takes jobs an interrupted earlier run left behind.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use larder_examples::cli::{finish, required_env};
use std::process::ExitCode;
use std::time::Duration;

use larder::prelude::*;
use larder::redis::{WorkQueue, redact};
use serde::{Deserialize, Serialize};

/// A job: restock `units` of product `sku`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Restock {
    sku: String,
    units: u32,
}

/// How long a worker may hold a job before it is given to another.
const VISIBILITY: Duration = Duration::from_secs(1);
/// How long `pop` waits for a job when the queue is empty.
const WAIT: Duration = Duration::from_millis(200);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let url = match required_env("work_queue", "REDIS_URL", "redis://127.0.0.1:6379") {
        Ok(url) => url,
        Err(code) => return code,
    };
    finish("work_queue", run(&url).await)
}

async fn run(url: &str) -> Result<()> {
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace("larder-example")
            .build()?,
    )?;
    let name = format!("restock-{:08x}", fastrand::u32(..));
    let producer: WorkQueue<Restock> = WorkQueue::new(&store, &name, VISIBILITY)?;
    // Each worker has its own handle: a clone gets its own connection for
    // the blocking wait of `pop`.
    let worker1 = producer.clone();
    let worker2 = producer.clone();
    println!(
        "queue {name} on {}, visibility timeout {} ms",
        redact(url),
        VISIBILITY.as_millis()
    );

    for (sku, units) in [("TEA-01", 40), ("MUG-02", 12), ("POT-03", 5)] {
        let job = Restock {
            sku: sku.to_owned(),
            units,
        };
        let id = producer.push(&job).await?;
        println!("producer pushed job #{id}: restock {units} x {sku}");
    }

    // Worker 1 takes the oldest job, then dies before acknowledging it.
    let Some(taken) = worker1.pop(WAIT).await? else {
        return Err(Error::new(ErrorKind::Backend, "the queue was empty"));
    };
    let crashed_id = taken.id;
    println!(
        "worker-1 took job #{crashed_id} (restock {} x {}) and crashed without acking",
        taken.item.units, taken.item.sku
    );
    drop(taken);
    drop(worker1);

    // Worker 2 does the rest, acknowledging each job when done. (`try_pop`
    // does not wait when the queue is empty; `pop(wait)` blocks up to `wait`.)
    while let Some(job) = worker2.try_pop().await? {
        let acked = worker2.ack(&job).await?;
        println!(
            "worker-2 did job #{} (restock {} x {}), ack: {acked}",
            job.id, job.item.units, job.item.sku
        );
    }
    println!(
        "waiting: {}, in flight: {} (the crashed worker's job)",
        worker2.len().await?,
        worker2.in_flight().await?
    );

    // Any worker runs the reaper, periodically. Within the visibility
    // timeout the job still belongs to worker 1: nothing moves.
    let early = worker2.requeue_expired().await?;
    println!("requeued before the visibility timeout: {early}");
    tokio::time::sleep(VISIBILITY + Duration::from_millis(100)).await;
    let late = worker2.requeue_expired().await?;
    println!("requeued after the visibility timeout: {late}");

    let Some(again) = worker2.pop(WAIT).await? else {
        return Err(Error::new(
            ErrorKind::Backend,
            "the crashed worker's job was not re-delivered",
        ));
    };
    let acked = worker2.ack(&again).await?;
    println!(
        "worker-2 got job #{} again (restock {} x {}), ack: {acked}",
        again.id, again.item.units, again.item.sku
    );
    if again.id == crashed_id {
        println!(
            "re-delivered job #{} is the one worker-1 crashed holding",
            again.id
        );
    } else {
        println!(
            "re-delivered job #{} is NOT the one worker-1 crashed holding (#{crashed_id})",
            again.id
        );
    }
    println!(
        "waiting: {}, in flight: {}",
        worker2.len().await?,
        worker2.in_flight().await?
    );
    Ok(())
}
