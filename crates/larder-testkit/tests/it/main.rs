//! The testkit's own tests: each facility demonstrated against real servers.

mod cluster;
mod faults;
mod servers;
