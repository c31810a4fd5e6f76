//! larder-memory: model-based properties, expiry on a mock clock, listener
//! causes, single flight (panics, errors, cancellation), and a bounded stress test.

mod expiry;
mod flight;
mod model;
mod stress;
