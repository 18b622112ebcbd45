//! Command-line front ends of vzcpt: argument parsing and output only; the work is done by the
//! `cpt`, `rst` and `images-format` crates.
#![forbid(unsafe_code)]

pub mod commands;
pub mod logging;
