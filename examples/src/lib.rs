//! Runnable examples of Larder live in `examples/examples/`; run one with
//! `cargo run --example <name>`. This library is empty on purpose.
