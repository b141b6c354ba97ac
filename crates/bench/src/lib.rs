//! The benchmarks: figures taken in one run, as ratios with the absolute
//! numbers beside them (the machine is shared and noisy).
//!
//! - [`pipeline`]: `verger bench`, a real `verger run` child process against
//!   the model-only ceiling (embedded or on a local Ballista cluster), and
//!   the listing-scale benchmark on synthetic collections;
//! - [`photos`]: phone-sized JPEGs made in memory from the shared sample,
//!   for the scaled-decode fidelity test and benchmarks;
//! - [`serve_load`]: `verger bench-serve`, a bounded load test of a running
//!   `verger serve`;
//! - [`hostile`]: its `--hostile` clients (stalled connections and
//!   decompression bombs alongside the normal load).
//!
//! It owns child processes, `wait4` and `/proc` readings; it never reaches
//! into the pipeline or the service, it runs them as users do.

pub mod hostile;
pub mod photos;
pub mod pipeline;
pub mod serve_load;
