//! Freight benchmarks: the timing and memory harness used to compare Freight against
//! conventional tools ([`harness`]), chunk transport over loopback QUIC in one process
//! ([`loopback`]) and the peers' servers ([`servers`]). The deterministic dataset generator,
//! tree comparison and the UDP impairment proxy live in `freight-test-support`, which the
//! benchmarks share with the tests.

#![warn(missing_docs)]

pub mod harness;
pub mod loopback;
pub mod servers;
