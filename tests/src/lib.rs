//! Freight's end-to-end tests: they run the real `freight` and `freightd` binaries as processes
//! (CLI verbs, demos, SIGKILL at random moments, site servers and DPs on loopback). This library
//! holds what the test files share: a [`World`] of sites and libraries driven through `freight`,
//! and [`hosts`], real `freightd` processes driven through the admin API. The binaries are found
//! by [`freight_test_support::bins::appliance`]: a test run at the workspace root builds them.

#![warn(missing_docs)]

pub mod hosts;
mod world;

pub use world::{World, freight};
