//! Freight benchmarks: a deterministic generator of realistic package trees
//! ([`dataset`]) and the timing and memory harness used to compare Freight
//! against conventional tools ([`harness`]).

#![warn(missing_docs)]

pub mod dataset;
pub mod harness;
mod words;

pub use dataset::{DatasetSpec, DatasetSummary, generate, is_generated, write_marker};
pub mod tree;
