//! Running verger on Apache DataFusion Ballista: one scheduler, N executors.
//!
//! This is the only crate that knows Ballista. It owns:
//! - [`slices`]: the sliced sources (`ImageListExec`, `StagedReadExec` over
//!   in-memory seeds) that let Ballista split a phase into tasks;
//! - [`part_write`]: `PartWriteExec`, which writes a task's Parquet parts
//!   under names taken from its slice and the run's attempt, and returns the
//!   task's summary;
//! - `plan_node`: the `ExecutionPlan` plumbing those three operators share;
//! - [`codec`]: how those operators travel in plans, and the session
//!   settings all cluster processes share;
//! - [`scheduler`] and [`executor`]: the `verger scheduler` and
//!   `verger executor` processes (the executor loads the model once);
//! - [`client`]: planning and submitting each phase from `verger run --cluster`.
//!
//! It must not own pipeline decisions (what the phases are, the commit
//! protocol, reports): `verger-pipeline` drives it. Credentials never enter
//! a plan: every process opens locations with its own AWS environment.

pub mod client;
pub mod codec;
pub mod executor;
pub mod part_write;
mod plan_node;
pub mod scheduler;
pub mod slices;

pub use client::{Cluster, FeaturizeJob};
pub use executor::{ExecutorOptions, run_executor};
pub use part_write::WorkerInfo;
pub use scheduler::{SchedulerOptions, run_scheduler};
