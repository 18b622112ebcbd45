//! Integration tests, workloads and benchmarks of vzcpt.
#![forbid(unsafe_code)]
