//! Integration tests, workloads and benchmarks of vzcpt.
//!
//! Tests follow the workload protocol of DESIGN.md (see `workloads/wl.h`): a workload starts,
//! sets up its state and reports ready; the harness dumps it and restores it; then asks it to
//! check; the workload verifies every piece of its state itself and answers PASS or FAIL.
//! Each scenario runs in [`driver`] as PID 1 of its own PID namespace, so it reaps every
//! orphan and everything it started dies with it, whatever happens.
#![forbid(unsafe_code)]

pub mod ctl;
pub mod paths;
pub mod reaper;
pub mod script;
pub mod ve_harness;
