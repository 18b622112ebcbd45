use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use cpt::{DumpOptions, FinalState, Target};

/// Checkpoint a process tree (or every task of a cgroup) into an image directory.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Root of the process tree to dump (it and all its descendants).
    #[arg(
        short = 't',
        long = "tree",
        value_name = "PID",
        conflicts_with = "cgroup"
    )]
    pub pid: Option<i32>,
    /// A cgroup (v1 freezer or v2) whose tasks form the tree; frozen by the cgroup freezer.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Image directory to create.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub dir: PathBuf,
    /// Resume the tree after the dump (a snapshot).
    #[arg(long, conflicts_with = "leave_stopped")]
    pub leave_running: bool,
    /// Leave the tree stopped (SIGSTOP) after the dump.
    #[arg(long)]
    pub leave_stopped: bool,
    /// Compress page chunks with zstd (default level 3).
    #[arg(long, value_name = "LEVEL", num_args = 0..=1, default_missing_value = "3", require_equals = true)]
    pub compress: Option<i32>,
    /// Parent image for an incremental dump: only pages written since it (or differing
    /// from its copy) are stored, the rest is referred to. Restoring the image needs the
    /// parent (and its own parents) in place, at the same relative path.
    #[arg(long, value_name = "DIR")]
    pub parent: Option<PathBuf>,
    /// Keep written-page tracking armed in the tree after the dump (a detached keeper
    /// process holds it), so that a later `--parent` dump knows which pages were written.
    #[arg(long)]
    pub track_mem: bool,
    /// Also dump established TCP connections to peers outside the tree (restored with
    /// TCP_REPAIR); without it such a connection fails the dump. Connections between two
    /// tasks of the tree are always dumped.
    #[arg(long)]
    pub tcp_established: bool,
    /// Background (copy-on-write) memory dump, with --leave-running: the tree is stopped only
    /// for its small state; its private anonymous memory is write-protected (userfaultfd),
    /// the tree resumed, and the memory copied while it runs, each page before the tree first
    /// writes it. The image holds the memory of the frozen instant. A page the tree unmaps or
    /// discards before it is copied fails the dump (the tree runs on, no image is left).
    #[arg(long)]
    pub cow: bool,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &DumpArgs) -> anyhow::Result<i32> {
    if a.cow && !a.leave_running {
        bail!("--cow copies memory while the tree runs: it needs --leave-running");
    }
    if a.cow && (a.parent.is_some() || a.track_mem) {
        bail!(
            "--cow with --parent or --track-mem: a background dump stores every page, it cannot be incremental"
        );
    }
    let target = match (a.pid, &a.cgroup) {
        (Some(pid), None) => Target::Tree(pid),
        (None, Some(cg)) => Target::Cgroup(cg.clone()),
        _ => bail!("give the tree to dump with -t PID or --cgroup PATH"),
    };
    let final_state = if a.leave_running {
        FinalState::LeaveRunning
    } else if a.leave_stopped {
        FinalState::LeaveStopped
    } else {
        FinalState::Kill
    };
    let opts = DumpOptions {
        target,
        dir: a.dir.clone(),
        final_state,
        compress: a.compress,
        tcp_established: a.tcp_established,
        sent_pages: None,
        journal: None,
        cow: a.cow,
    };
    let inc = cpt::incremental::IncrementalOptions {
        track_mem: a.track_mem,
        parent: a.parent.clone(),
        keeper_exe: None,
    };
    let stats = cpt::dump_incremental(&opts, &inc)
        .with_context(|| format!("dump into {} failed", a.dir.display()))?;
    if a.json {
        super::print_json(&stats)?;
    } else {
        eprintln!(
            "dumped {} processes ({} threads) into {}: {} pages stored{}, {:.1} ms frozen, {:.1} ms in all",
            stats.processes,
            stats.threads,
            a.dir.display(),
            stats.pages_stored,
            if a.parent.is_some() {
                format!(", {} left to the parent", stats.pages_in_parent)
            } else {
                String::new()
            },
            stats.frozen_ms,
            stats.total_ms
        );
        if a.cow {
            eprintln!(
                "background copy: {} pages in {:.1} ms, {} of them ahead of a write (attempt {})",
                stats.cow_pages_copied,
                stats.cow_copy_ms,
                stats.cow_pages_ahead_of_writes,
                stats.cow_attempts
            );
        }
    }
    Ok(0)
}
