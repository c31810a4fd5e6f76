//! Activity feeds on Redis lists, fanned out on write: each event goes to
//! its author's own feed and to the timeline of every follower. A feed keeps
//! its newest 5 items (older ones are trimmed as new ones arrive) and
//! expires 10 minutes after its last push; push, trim and expire are one
//! `MULTI`, so a feed is never left uncapped or immortal.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example activity_feed`
//!
//! Each run uses feeds of its own (`activity-<run id>`, `timeline-<run id>`),
//! so a second run starts empty; they expire by themselves.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use larder_examples::cli::{finish, required_env};
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use larder::prelude::*;
use larder::redis::{Feed, redact};
use serde::{Deserialize, Serialize};

/// One event, stored with the default codec.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    seq: u32,
    actor: String,
    verb: String,
    object: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {} {} {}",
            self.seq, self.actor, self.verb, self.object
        )
    }
}

/// Newest items a feed keeps.
const CAP: u64 = 5;

/// Who follows whom: cho follows ann and bob.
fn followers(actor: &str) -> &'static [&'static str] {
    match actor {
        "ann" | "bob" => &["cho"],
        _ => &[],
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let url = match required_env("activity_feed", "REDIS_URL", "redis://127.0.0.1:6379") {
        Ok(url) => url,
        Err(code) => return code,
    };
    finish("activity_feed", run(&url).await)
}

async fn run(url: &str) -> Result<()> {
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace("larder-example")
            .build()?,
    )?;
    let run_id = format!("{:08x}", fastrand::u32(..));
    let ttl = Duration::from_secs(600);
    // Two feed families: what a user did, and what the people they follow did.
    let activity: Feed<Event> = Feed::new(&store, &format!("activity-{run_id}"), CAP, ttl)?;
    let timeline: Feed<Event> = Feed::new(&store, &format!("timeline-{run_id}"), CAP, ttl)?;
    println!(
        "feeds of run {run_id} on {}: at most {CAP} items each, expiring 10 min after the last push",
        redact(url)
    );

    let events = [
        ("ann", "ordered", "TEA-01"),
        ("bob", "reviewed", "TEA-01"),
        ("ann", "ordered", "MUG-02"),
        ("ann", "reviewed", "MUG-02"),
        ("bob", "ordered", "POT-03"),
        ("ann", "ordered", "TEA-04"),
        ("ann", "ordered", "TEA-05"),
        ("ann", "returned", "MUG-02"),
        ("ann", "ordered", "CUP-06"),
    ];
    for (seq, (actor, verb, object)) in (1..).zip(events) {
        let event = Event {
            seq,
            actor: actor.to_owned(),
            verb: verb.to_owned(),
            object: object.to_owned(),
        };
        // Fan-out on write: one push per feed. `push` answers the feed's
        // length after trimming, so it never grows past CAP.
        let own = activity.push(actor, &event).await?;
        let mut fanned = Vec::new();
        for follower in followers(actor) {
            let len = timeline.push(follower, &event).await?;
            fanned.push(format!("{follower}'s timeline {len}"));
        }
        println!(
            "pushed {event}: {actor}'s feed {own}, {}",
            fanned.join(", ")
        );
    }

    // Reading is one LRANGE, newest first.
    println!("cho's timeline, first page (3 newest):");
    for e in timeline.recent("cho", 3).await? {
        println!("  {e}");
    }
    println!(
        "cho's timeline holds {} items (9 pushed, cap {CAP})",
        timeline.len("cho").await?
    );

    // ann pushed 7 events; her feed kept the newest 5.
    let ann = activity.recent("ann", 10).await?;
    println!("ann's feed ({} items):", ann.len());
    for e in &ann {
        println!("  {e}");
    }
    let kept: Vec<u32> = ann.iter().map(|e| e.seq).collect();
    let trimmed: Vec<String> = (1..)
        .zip(events)
        .filter(|(seq, (actor, ..))| *actor == "ann" && !kept.contains(seq))
        .map(|(seq, _)| format!("#{seq}"))
        .collect();
    println!("trimmed from ann's feed: {}", trimmed.join(", "));

    println!("bob's feed:");
    for e in activity.recent("bob", 10).await? {
        println!("  {e}");
    }
    // An owner who never pushed has an empty feed, not an error.
    println!("dan's feed holds {} items", activity.len("dan").await?);
    Ok(())
}
