use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rst::RestoreOptions;

/// Restore a process tree from an image directory. Without --detach, wait for the restored
/// root and exit with its status.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub dir: PathBuf,
    /// Return at once, printing the root PID; the tree is not the restorer's child.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Write the root PID to this file.
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    /// Root file system of a tree that had its own mount namespace (its mounts are rebuilt
    /// on it, then it becomes the tree's root).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &RestoreArgs) -> anyhow::Result<i32> {
    let restored = rst::restore(&RestoreOptions {
        dir: a.dir.clone(),
        detach: a.detach,
        root: a.root.clone(),
        cgroup_rewrite: None,
        net_hook: None,
    })
    .with_context(|| format!("restore from {} failed", a.dir.display()))?;
    let stats = restored.stats.clone();
    if let Some(p) = &a.pidfile {
        std::fs::write(p, format!("{}\n", stats.root_pid))
            .with_context(|| format!("cannot write pidfile {}", p.display()))?;
    }
    if a.json {
        super::print_json(&stats)?;
    } else if a.detach {
        println!("{}", stats.root_pid);
    }
    if a.detach {
        return Ok(0);
    }
    Ok(restored.wait()?)
}
