//! Integration tests of larder-core: property tests of the envelope and codecs,
//! and the `Store` trait's default bulk methods.

mod envelope_props;
mod store_defaults;
