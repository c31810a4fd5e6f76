//! larder-ring against other implementations (oracles, live Redis) and
//! against its own promises (property tests).

mod oracles;
mod props;
