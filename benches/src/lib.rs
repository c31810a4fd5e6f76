//! Shared pieces of Larder's benchmarks: realistic fixtures, and the
//! manifest through which each bench tells `cargo xtask bench` what it
//! measured and which peer each figure is compared with.
//!
//! Criterion measures times; the manifest adds what criterion cannot know:
//! how many operations one iteration performs, which figure is Larder's and
//! which is its peer's, and plain figures (sizes, hit ratios) with units.

pub mod facade_hit;
pub mod fixtures;
pub mod manifest;
pub mod traces;
pub mod zipf;
