//! `vzctl`: the VE lifecycle verbs (see the `ve` crate for what each does).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use ve::config::parse_size;
use ve::{Layout, VeConfig};

#[derive(Subcommand, Debug)]
pub enum VzctlCommand {
    /// Create a VE: its config and private area.
    Create(CreateArgs),
    /// Start a stopped VE.
    Start(CtidArgs),
    /// Stop a running VE (SIGTERM to its init, then kill what is left).
    Stop(StopArgs),
    /// Stop, then start.
    Restart(StopArgs),
    /// Print the VE's status.
    Status(StatusArgs),
    /// Run a command inside the running VE and exit with its status.
    Exec(ExecArgs),
    /// Run an interactive shell inside the running VE.
    Enter(CtidArgs),
    /// Remove a stopped VE: config, private area, image.
    Destroy(CtidArgs),
    /// Freeze every process of the VE (cgroup freezer).
    Suspend(CtidArgs),
    /// Thaw a suspended VE.
    Resume(CtidArgs),
    /// Checkpoint the VE into an image; it is stopped unless --leave-running.
    Chkpnt(ChkpntArgs),
    /// Restore the VE from its image.
    Restore(RestoreVeArgs),
    /// Change limits (and names): applied to a running VE, and with --save to its config.
    Set(SetArgs),
    /// Snapshot the VE: memory (if it runs) and files of one instant; it keeps running.
    /// Needs its private area on btrfs.
    Snapshot(SnapshotArgs),
    /// Print the VE's snapshots as a tree (* marks the one its current state descends from).
    SnapshotList(SnapshotListArgs),
    /// Bring the VE back to a snapshot: files, config and, if the snapshot has memory,
    /// running processes; its current state is discarded. Without memory it stays stopped.
    Rollback(SnapshotNameArgs),
    /// Delete a snapshot; its children get its parent.
    SnapshotDelete(SnapshotNameArgs),
    // Backups (issue 7, part 3): `backup`, `restore-backup`, `backup-keygen`.
    #[command(flatten)]
    Backup(BackupCommand),
}

#[derive(Args, Debug)]
pub struct CtidArgs {
    pub ctid: u32,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub ctid: u32,
    #[arg(long)]
    pub hostname: Option<String>,
    /// Base of the root file system (default: the host's /, seen through an overlay).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Shell command the VE runs under its init; the VE stops when it exits.
    #[arg(long, value_name = "SHELL-COMMAND")]
    pub command: Option<String>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    pub ctid: u32,
    /// Seconds to wait after SIGTERM before killing what is left.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    pub ctid: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    pub ctid: u32,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ChkpntArgs {
    pub ctid: u32,
    /// Image directory (default: $VZ_DIR/dump/CTID).
    #[arg(long, value_name = "DIR")]
    pub dumpfile: Option<PathBuf>,
    /// Keep the VE running: a snapshot.
    #[arg(long)]
    pub leave_running: bool,
    /// Keep written-page tracking armed in the VE after the dump, for a later `--parent`
    /// dump (see `vzcpt dump --track-mem`).
    #[arg(long, conflicts_with = "hold")]
    pub track_mem: bool,
    /// An incremental dump: store only the pages written since the image DIR (an earlier
    /// `--track-mem` checkpoint of this VE) and refer to the rest; restoring needs DIR in place.
    #[arg(long, value_name = "DIR", conflicts_with = "hold")]
    pub parent: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// For vzmigrate: once the image is complete print `held` and keep the VE stopped until a
    /// line on stdin says `commit` (kill it), `abort` (let it go on) or `suspend` (freeze it).
    #[arg(long, hide = true, conflicts_with = "leave_running")]
    pub hold: bool,
    /// For vzmigrate: pages the destination holds already (a `sent-pages` file); the image
    /// then refers to them in a `parent-pages` record instead of storing them.
    #[arg(long, hide = true, value_name = "FILE", requires = "hold")]
    pub sent_pages: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestoreVeArgs {
    pub ctid: u32,
    /// Image directory (default: $VZ_DIR/dump/CTID, removed after a successful restore).
    #[arg(long, value_name = "DIR")]
    pub dumpfile: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    pub ctid: u32,
    /// Memory limit (e.g. 512M, 2G; "unlimited" lifts it).
    #[arg(long)]
    pub memory: Option<String>,
    /// Maximum number of tasks ("unlimited" lifts it).
    #[arg(long)]
    pub pids: Option<String>,
    /// CPU bandwidth in CPUs, e.g. 0.5 ("unlimited" lifts it).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Host name (applies at the next start).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Shell command of the VE (applies at the next start).
    #[arg(long)]
    pub command: Option<String>,
    /// Add an IP address (ADDR or ADDR/PREFIX, repeatable): the VE gets a veth pair.
    #[arg(long, value_name = "ADDR[/PREFIX]")]
    pub ipadd: Vec<String>,
    /// Remove an IP address ("all" removes every one).
    #[arg(long, value_name = "ADDR|all")]
    pub ipdel: Vec<String>,
    /// Put the VE's veth host end on this bridge ("none": routed through the host).
    #[arg(long, value_name = "BRIDGE")]
    pub bridge: Option<String>,
    /// Write the change to the VE's config.
    #[arg(long)]
    pub save: bool,
}

fn limit<T>(
    v: &Option<String>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<Option<T>>> {
    Ok(match v.as_deref() {
        None => None,
        Some("unlimited") => Some(None),
        Some(s) => Some(Some(parse(s).map_err(anyhow::Error::msg)?)),
    })
}

pub fn run(cmd: &VzctlCommand) -> anyhow::Result<i32> {
    let layout = Layout::from_env();
    match cmd {
        VzctlCommand::Snapshot(_)
        | VzctlCommand::SnapshotList(_)
        | VzctlCommand::Rollback(_)
        | VzctlCommand::SnapshotDelete(_) => run_snapshot(&layout, cmd)?,
        VzctlCommand::Backup(b) => return run_backup(&layout, b),
        VzctlCommand::Create(a) => {
            let cfg = VeConfig {
                hostname: a.hostname.clone(),
                command: a.command.clone(),
                root: a.root.clone(),
                ..Default::default()
            };
            ve::ops::create(&layout, a.ctid, &cfg)?;
            eprintln!("VE {} created", a.ctid);
        }
        VzctlCommand::Start(a) => {
            let pid = ve::start::start(&layout, a.ctid)?;
            eprintln!("VE {} started (init PID {pid})", a.ctid);
        }
        VzctlCommand::Stop(a) => {
            ve::ops::stop(&layout, a.ctid, Duration::from_secs(a.timeout))?;
            eprintln!("VE {} stopped", a.ctid);
        }
        VzctlCommand::Restart(a) => {
            ve::ops::stop(&layout, a.ctid, Duration::from_secs(a.timeout))?;
            let pid = ve::start::start(&layout, a.ctid)?;
            eprintln!("VE {} restarted (init PID {pid})", a.ctid);
        }
        VzctlCommand::Status(a) => {
            let s = ve::ops::status(&layout, a.ctid)?;
            if a.json {
                super::print_json(&serde_json::json!({ "ctid": a.ctid, "status": s }))?;
            } else {
                println!("VE {} {s}", a.ctid);
            }
        }
        VzctlCommand::Exec(a) => return Ok(ve::ops::exec(&layout, a.ctid, &a.command)?),
        VzctlCommand::Enter(a) => {
            let shell = ["/bin/bash", "/bin/sh"]
                .into_iter()
                .find(|s| layout.root(a.ctid).join(&s[1..]).exists())
                .unwrap_or("/bin/sh");
            return Ok(ve::ops::exec(
                &layout,
                a.ctid,
                &[shell.to_string(), "-i".into()],
            )?);
        }
        VzctlCommand::Destroy(a) => {
            ve::ops::destroy(&layout, a.ctid)?;
            eprintln!("VE {} destroyed", a.ctid);
        }
        VzctlCommand::Suspend(a) => ve::ops::suspend(&layout, a.ctid)?,
        VzctlCommand::Resume(a) => ve::ops::resume(&layout, a.ctid)?,
        VzctlCommand::Chkpnt(a) if a.hold => {
            let dir = a.dumpfile.clone().unwrap_or_else(|| layout.dump(a.ctid));
            let sent = match &a.sent_pages {
                Some(f) => Some(ve::ops::read_sent_pages(f)?),
                None => None,
            };
            let mut held = ve::ops::chkpnt_hold(&layout, a.ctid, &dir, sent)?;
            {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                writeln!(out, "held")?;
                out.flush()?;
            }
            let mut committing = false;
            let mut end = None;
            for line in std::io::stdin().lines() {
                match line?.trim() {
                    "committing" => {
                        held.committing()?;
                        committing = true;
                    }
                    "commit" => end = Some(ve::ops::HoldEnd::Commit),
                    "abort" => end = Some(ve::ops::HoldEnd::Abort),
                    _ => end = Some(ve::ops::HoldEnd::Suspend),
                }
                if end.is_some() {
                    break;
                }
            }
            // Told nothing: abort, unless the destination may have committed already.
            let end = end.unwrap_or(if committing {
                ve::ops::HoldEnd::Suspend
            } else {
                ve::ops::HoldEnd::Abort
            });
            held.end(&layout, end)?;
        }
        VzctlCommand::Chkpnt(a) => {
            let inc = cpt::incremental::IncrementalOptions {
                track_mem: a.track_mem,
                parent: a.parent.clone(),
                keeper_exe: None,
            };
            let incremental = a.track_mem || a.parent.is_some();
            let stats = ve::ops::chkpnt(
                &layout,
                a.ctid,
                a.dumpfile.as_deref(),
                a.leave_running,
                incremental.then_some(&inc),
            )?;
            if a.json {
                super::print_json(&stats)?;
            } else {
                eprintln!(
                    "VE {} checkpointed: {} processes, frozen {:.1} ms, total {:.1} ms",
                    a.ctid, stats.processes, stats.frozen_ms, stats.total_ms
                );
            }
        }
        VzctlCommand::Restore(a) => {
            let stats = ve::ops::restore(&layout, a.ctid, a.dumpfile.as_deref())?;
            if a.json {
                super::print_json(&stats)?;
            } else {
                eprintln!(
                    "VE {} restored: {} processes, total {:.1} ms",
                    a.ctid, stats.processes, stats.total_ms
                );
            }
        }
        VzctlCommand::Set(a) => {
            let mut cfg = ve::ops::load_config(&layout, a.ctid)?;
            if let Some(m) = limit(&a.memory, parse_size)? {
                cfg.memory = m;
            }
            if let Some(p) = limit(&a.pids, |s| s.parse::<u64>().map_err(|e| e.to_string()))? {
                cfg.pids = p;
            }
            if let Some(c) = limit(&a.cpus, |s| s.parse::<f64>().map_err(|e| e.to_string()))? {
                cfg.cpus = c;
            }
            if a.hostname.is_some() {
                cfg.hostname = a.hostname.clone();
            }
            if a.command.is_some() {
                cfg.command = a.command.clone();
            }
            for d in &a.ipdel {
                if d == "all" {
                    cfg.ipadd.clear();
                } else {
                    cfg.ipadd
                        .retain(|x| x.split('/').next() != d.split('/').next());
                }
            }
            for addr in &a.ipadd {
                if !cfg.ipadd.contains(addr) {
                    cfg.ipadd.push(addr.clone());
                }
            }
            match a.bridge.as_deref() {
                Some("none") => cfg.bridge = None,
                Some(b) => cfg.bridge = Some(b.to_string()),
                None => {}
            }
            let net_change = !a.ipadd.is_empty() || !a.ipdel.is_empty() || a.bridge.is_some();
            if net_change && !a.save {
                anyhow::bail!("network changes (--ipadd, --ipdel, --bridge) need --save; they apply at the next start");
            }
            ve::ops::set(&layout, a.ctid, &cfg, a.save)?;
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    pub ctid: u32,
    /// The snapshot's name: letters, digits, '.', '_', '-'.
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotListArgs {
    pub ctid: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SnapshotNameArgs {
    pub ctid: u32,
    /// The snapshot's name.
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

/// The snapshot verbs.
fn run_snapshot(layout: &Layout, cmd: &VzctlCommand) -> anyhow::Result<()> {
    match cmd {
        VzctlCommand::Snapshot(a) => {
            let s = ve::snapshot::snapshot(layout, a.ctid, &a.name)?;
            if a.json {
                super::print_json(&s)?;
            } else if s.memory {
                eprintln!(
                    "VE {} snapshot {} taken: memory and files, frozen {:.1} ms, total {:.1} ms",
                    a.ctid, s.name, s.frozen_ms, s.total_ms
                );
            } else {
                eprintln!(
                    "VE {} snapshot {} taken: files only (the VE is not running), total {:.1} ms",
                    a.ctid, s.name, s.total_ms
                );
            }
        }
        VzctlCommand::SnapshotList(a) => {
            let l = ve::snapshot::list(layout, a.ctid)?;
            if a.json {
                super::print_json(&l)?;
            } else {
                if l.snapshots.is_empty() {
                    eprintln!("VE {} has no snapshots", a.ctid);
                }
                for s in &l.snapshots {
                    let mark = if s.current { '*' } else { ' ' };
                    let what = if s.memory { "memory+files" } else { "files" };
                    let name = format!("{}{}", "  ".repeat(s.depth), s.name);
                    println!("{mark} {name:<32} {}  {what}", s.created);
                }
            }
        }
        VzctlCommand::Rollback(a) => {
            let r = ve::snapshot::rollback(layout, a.ctid, &a.name)?;
            if a.json {
                super::print_json(&r)?;
            } else if r.running {
                eprintln!(
                    "VE {} rolled back to {}: running as at the snapshot, total {:.1} ms",
                    a.ctid, r.name, r.total_ms
                );
            } else {
                eprintln!(
                    "VE {} rolled back to {}: files only (stopped, as at the snapshot)",
                    a.ctid, r.name
                );
            }
        }
        VzctlCommand::SnapshotDelete(a) => {
            ve::snapshot::delete(layout, a.ctid, &a.name)?;
            if a.json {
                super::print_json(&serde_json::json!({ "ctid": a.ctid, "deleted": a.name }))?;
            } else {
                eprintln!("VE {} snapshot {} deleted", a.ctid, a.name);
            }
        }
        _ => {}
    }
    Ok(())
}

// ---- Backups (issue 7, part 3) ----

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Back up the VE (config, private area, checkpoint image) as one stream.
    ///
    /// zstd-compressed; encrypted and authenticated with --encrypt-key. A running VE goes on:
    /// on btrfs its memory and files are taken at one instant (as a snapshot); elsewhere it is
    /// checkpointed with --leave-running and its files are copied while it runs (not at the
    /// instant of its memory image). A suspended VE is refused.
    Backup(BackupArgs),
    /// Create VE CTID (which must not exist) from a backup.
    ///
    /// Nothing is created unless the whole backup verifies. With an image it is left dumped
    /// (`vzctl restore CTID`), else stopped (`vzctl start CTID`). Its config comes back as it
    /// was, IP addresses included: change them first if the original runs on the same network.
    RestoreBackup(RestoreBackupArgs),
    /// Write a new backup key: 32 random bytes, mode 0600 (an existing file is refused).
    BackupKeygen(KeygenArgs),
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    pub ctid: u32,
    /// A file (written under a temporary name, then renamed; must not exist), a directory
    /// (the backup is named CTID-YYYYmmdd-HHMMSS.vzb in it, UTC), or - for standard output.
    #[arg(long, value_name = "PATH|DIR|-")]
    pub to: PathBuf,
    /// Encrypt and authenticate with the 32-byte key in FILE (see backup-keygen).
    #[arg(long, value_name = "FILE")]
    pub encrypt_key: Option<PathBuf>,
    /// zstd level 1-19; 0 stores it uncompressed.
    #[arg(long, value_name = "LEVEL", default_value_t = ve::backup::DEFAULT_COMPRESS)]
    pub compress: i32,
    /// With --to DIR: then delete the backups of this VE in DIR (CTID-*.vzb) but the newest N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
    /// Print the figures as JSON (on stderr when the backup goes to stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreBackupArgs {
    pub ctid: u32,
    /// The backup file, or - for standard input.
    #[arg(long, value_name = "PATH|-")]
    pub from: PathBuf,
    /// The key the backup was encrypted with.
    #[arg(long, value_name = "FILE")]
    pub encrypt_key: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    pub file: PathBuf,
}

fn run_backup(layout: &Layout, cmd: &BackupCommand) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    let key = |p: &Option<PathBuf>| -> anyhow::Result<Option<ve::backup::KeyMaterial>> {
        Ok(match p {
            Some(p) => Some(ve::backup::read_key(p)?),
            None => None,
        })
    };
    match cmd {
        BackupCommand::BackupKeygen(a) => {
            ve::backup::keygen(&a.file)?;
            eprintln!("backup key written to {}", a.file.display());
        }
        BackupCommand::Backup(a) => {
            let dest = if a.to.as_os_str() == "-" {
                if std::io::stdout().is_terminal() {
                    anyhow::bail!("--to -: standard output is a terminal; pipe it or redirect it");
                }
                ve::backup::Destination::Stdout
            } else if a.to.is_dir() {
                ve::backup::Destination::Dir {
                    dir: a.to.clone(),
                    keep: a.keep.map(|k| k as usize),
                }
            } else {
                ve::backup::Destination::File(a.to.clone())
            };
            if a.keep.is_some() && !matches!(dest, ve::backup::Destination::Dir { .. }) {
                anyhow::bail!(
                    "--keep needs --to DIR (an existing directory holding this VE's backups)"
                );
            }
            let opts = ve::backup::BackupOptions {
                key: key(&a.encrypt_key)?,
                compress: a.compress,
            };
            let stats = ve::backup::backup(layout, a.ctid, &dest, &opts)?;
            let to_stdout = matches!(dest, ve::backup::Destination::Stdout);
            if a.json && !to_stdout {
                super::print_json(&stats)?;
            } else if a.json {
                eprintln!("{}", serde_json::to_string(&stats)?);
            } else {
                eprintln!(
                    "VE {} ({}) backed up to {}: {} files, {:.1} MiB, {:.1} MiB written, {:.0} ms{}",
                    a.ctid,
                    stats.status,
                    stats
                        .path
                        .as_ref()
                        .map_or("standard output".to_string(), |p| p.display().to_string()),
                    stats.nodes,
                    stats.archive_bytes as f64 / (1 << 20) as f64,
                    stats.written_bytes as f64 / (1 << 20) as f64,
                    stats.total_ms,
                    if stats.pruned.is_empty() {
                        String::new()
                    } else {
                        format!("; {} older backups deleted", stats.pruned.len())
                    }
                );
            }
        }
        BackupCommand::RestoreBackup(a) => {
            let k = key(&a.encrypt_key)?;
            let stats = if a.from.as_os_str() == "-" {
                ve::backup::restore_backup(layout, a.ctid, std::io::stdin().lock(), k.as_ref())?
            } else {
                let f = std::fs::File::open(&a.from)
                    .map_err(|e| anyhow::anyhow!("open the backup {}: {e}", a.from.display()))?;
                ve::backup::restore_backup(
                    layout,
                    a.ctid,
                    std::io::BufReader::with_capacity(1 << 20, f),
                    k.as_ref(),
                )?
            };
            if a.json {
                super::print_json(&stats)?;
            } else {
                eprintln!(
                    "VE {} restored from a backup of VE {}: {} files, {:.1} MiB; it is {}{}",
                    a.ctid,
                    stats.from_ctid,
                    stats.nodes,
                    stats.file_bytes as f64 / (1 << 20) as f64,
                    stats.status,
                    match stats.status {
                        ve::Status::Dumped => format!(" (vzctl restore {})", a.ctid),
                        _ => format!(" (vzctl start {})", a.ctid),
                    }
                );
            }
        }
    }
    Ok(0)
}
