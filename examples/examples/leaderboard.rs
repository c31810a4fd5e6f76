//! A game's weekly leaderboard on a Redis sorted set: set and increment
//! scores, a player's rank and score, the top N with per-player details in
//! one round trip, a page of the ranking, and the players around one player.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example leaderboard`
//!
//! Keys live in the `larder-example` namespace; the board is cleared at the
//! start, so every run prints the same ranking.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use larder_examples::cli::{finish, required_env};
use std::process::ExitCode;

use larder::prelude::*;
use larder::redis::{Leaderboard, Ranked, redact};
use serde::{Deserialize, Serialize};

/// What the board shows beside a player's name: kept in a hash next to the
/// sorted set, encoded with the default codec.
#[derive(Debug, Serialize, Deserialize)]
struct Profile {
    name: String,
    country: String,
}

/// (member, score, display name, country).
const PLAYERS: [(&str, f64, &str, &str); 10] = [
    ("ann", 3120.0, "Ann Lee", "NZ"),
    ("bob", 2870.0, "Bob Stone", "US"),
    ("cho", 4410.0, "Cho Min-jun", "KR"),
    ("dev", 1990.0, "Dev Patel", "IN"),
    ("eve", 3650.0, "Eve Martin", "FR"),
    ("fay", 2500.0, "Fay Wong", "HK"),
    ("gus", 1200.0, "Gus Berg", "SE"),
    ("hal", 3880.0, "Hal Jordan", "CA"),
    ("ivy", 2210.0, "Ivy Chen", "TW"),
    ("jon", 2990.0, "Jon Snow", "GB"),
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let url = match required_env("leaderboard", "REDIS_URL", "redis://127.0.0.1:6379") {
        Ok(url) => url,
        Err(code) => return code,
    };
    finish("leaderboard", run(&url).await)
}

/// `Ranked::rank` is 0-based (0 = the best score); people count from 1.
fn line(r: &Ranked) -> String {
    format!("#{} {} {}", r.rank + 1, r.member, r.score)
}

async fn run(url: &str) -> Result<()> {
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace("larder-example")
            .build()?,
    )?;
    // One sorted set (`larder-example:{board:weekly}`) and one hash of
    // details beside it, in the same hash slot.
    let board: Leaderboard = Leaderboard::new(&store, "weekly")?;
    println!("leaderboard \"weekly\" on {}", redact(url));

    // Start from an empty board: remove whatever an earlier run left.
    for r in board.top(board.len().await?).await? {
        board.remove(&r.member).await?;
    }

    for (member, score, name, country) in PLAYERS {
        board.set_score(member, score).await?;
        let profile = Profile {
            name: name.to_owned(),
            country: country.to_owned(),
        };
        board.set_details(member, &profile).await?;
    }
    println!("{} players on the board", board.len().await?);

    // ZINCRBY: atomic, so concurrent match results never lose points.
    let bob = board.incr_score("bob", 700.0).await?;
    println!("bob wins a match: +700 -> {bob} points");

    match (board.rank("bob").await?, board.score("bob").await?) {
        (Some(rank), Some(score)) => println!("bob: rank #{}, {score} points", rank + 1),
        _ => println!("bob: not on the board"),
    }
    // A player who never scored has no rank: `None`, not an error.
    if board.rank("zed").await?.is_none() {
        println!("zed: not on the board");
    }

    // The top 3 with their profiles: one Lua script reads the sorted set and
    // the details hash together.
    println!("top 3:");
    for (r, profile) in board.top_with_details::<Profile>(3).await? {
        match profile {
            Some(p) => println!("  {} ({}, {})", line(&r), p.name, p.country),
            None => println!("  {} (no profile)", line(&r)),
        }
    }

    // Pages are 0-based: page 1 of size 3 is ranks #4 to #6.
    println!("page 2 (3 per page):");
    for r in board.page(1, 3).await? {
        println!("  {}", line(&r));
    }

    // "Where am I?": the player and up to 2 players above and below.
    println!("around fay (2 either side):");
    for r in board.around("fay", 2).await? {
        let you = if r.member == "fay" { "   <- you" } else { "" };
        println!("  {}{you}", line(&r));
    }
    Ok(())
}
