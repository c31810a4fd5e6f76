//! Realistic values for codec and cache benchmarks.

use serde::{Deserialize, Serialize};

/// A postal address, nested in [`Profile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Address {
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postcode: String,
    /// ISO 3166 alpha-2.
    pub country: String,
}

/// A user profile as a shop would cache it: strings, numbers, a nested
/// struct, a list of tags, a list of ids and an optional field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Primary key.
    pub id: u64,
    /// Login name.
    pub username: String,
    /// Name shown to others.
    pub display_name: String,
    /// E-mail address.
    pub email: String,
    /// Free text.
    pub bio: String,
    /// Account creation (Unix ms).
    pub created_at_ms: u64,
    /// Follower count.
    pub followers: u32,
    /// Loyalty balance in cents.
    pub balance_cents: i64,
    /// Verified account.
    pub verified: bool,
    /// Shipping address.
    pub address: Address,
    /// Interests.
    pub tags: Vec<String>,
    /// Recent orders.
    pub recent_orders: Vec<u64>,
    /// Preferred locale, if set.
    pub locale: Option<String>,
}

/// A deterministic profile; `i` varies every field.
pub fn profile(i: u64) -> Profile {
    const CITIES: [&str; 4] = ["Lisbon", "Osaka", "Toronto", "Nairobi"];
    const TAGS: [&str; 8] = [
        "tea",
        "hiking",
        "jazz",
        "cycling",
        "photography",
        "cooking",
        "chess",
        "gardening",
    ];
    Profile {
        id: 1_000_000 + i,
        username: format!("shopper_{i}"),
        display_name: format!("Shopper Number {i}"),
        email: format!("shopper.{i}@example.com"),
        bio: "Loves limited editions and fast checkouts. Usually buys on launch day.".into(),
        created_at_ms: 1_600_000_000_000 + i * 86_400_000,
        followers: (i * 37 % 10_000) as u32,
        balance_cents: (i as i64 * 1_234) % 100_000 - 20_000,
        verified: i.is_multiple_of(3),
        address: Address {
            street: format!("{} Market Street", 1 + i % 400),
            city: CITIES[(i % 4) as usize].into(),
            postcode: format!("{:05}", i * 7 % 100_000),
            country: ["PT", "JP", "CA", "KE"][(i % 4) as usize].into(),
        },
        tags: (0..(3 + i % 4))
            .map(|t| TAGS[((i + t) % 8) as usize].into())
            .collect(),
        recent_orders: (0..(5 + i % 6)).map(|o| 90_000_000 + i * 100 + o).collect(),
        locale: i.is_multiple_of(2).then(|| "en-GB".into()),
    }
}
