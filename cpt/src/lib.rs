//! Dumping a process tree: freeze, seize, collect each resource, write the image.
//!
//! The flow is [`dump`]; each resource kind has its own module. A resource the engine cannot
//! dump is an error naming it and its task ([`DumpError::Unsupported`]), never a silent skip.
//! Any error resumes the tree exactly as it was (see [`seize::Frozen`]) and removes the partial
//! image (see [`images_format::ImageWriter`]).
#![forbid(unsafe_code)]

pub mod cow;
pub mod events;
pub mod files;
pub mod freeze;
pub mod incremental;
pub mod inet;
pub mod ipc;
pub mod journal;
pub mod memory;
pub mod ns;
pub mod pagesink;
pub mod pipes;
pub mod proc;
pub mod seize;
pub mod task;
pub mod timers;
pub mod tmpfs;
pub mod track;
pub mod unix;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use images_format::core::CoreImage;
use images_format::files::FilesImage;
use images_format::inventory::Inventory;
use images_format::mm::{MmImage, PagemapImage, ParentPagesImage};
use images_format::pipes::PipesImage;
use images_format::pstree::{ProcState, ProcessEntry, PstreeImage};
use images_format::{FormatError, ImageWriter};
use serde::Serialize;
use sys::{Pid, SysError};
use tracing::info;

pub use seize::FinalState;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("task {pid}: cannot dump {resource}: {reason}")]
    Unsupported {
        pid: i32,
        resource: String,
        reason: String,
    },
    #[error("task {pid}: cannot dump {what}: {reason}")]
    Task {
        pid: i32,
        what: String,
        reason: String,
    },
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: PathBuf, reason: String },
    #[error("process tree: {0}")]
    Tree(String),
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parent image {path}: {reason}")]
    Parent { path: PathBuf, reason: String },
    #[error("system call failed")]
    Sys(#[from] SysError),
    #[error("cannot write the image")]
    Image(#[from] FormatError),
    #[error("{0}")]
    Options(String),
    /// A background (`cow`) copy lost the race with the running tree: pages of the frozen
    /// instant left the address space (unmapped, discarded, moved; the task exited or
    /// execed) before they were copied. The image was removed; a new dump may succeed.
    #[error("task {pid}: cannot dump {what}: {reason}")]
    CowRace {
        pid: i32,
        what: String,
        reason: String,
    },
}

/// What to dump.
#[derive(Debug, Clone)]
pub enum Target {
    /// A process and all its descendants.
    Tree(i32),
    /// Every task of a cgroup (v1 freezer or v2), frozen by the cgroup freezer.
    Cgroup(PathBuf),
}

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub target: Target,
    pub dir: PathBuf,
    pub final_state: FinalState,
    /// zstd level for page chunks; `None` stores them raw.
    pub compress: Option<i32>,
    /// Also dump TCP connections whose peer is outside the tree (as CRIU's option of that
    /// name); without it such a connection fails the dump.
    pub tcp_established: bool,
    /// What a live migration's destination already holds (`track::Tracker::sent`): present
    /// pages of those areas that were sent and not written since are recorded in a
    /// `parent-pages` record instead of the page store. The tracker must still be alive.
    pub sent_pages: Option<images_format::track::SentPagesImage>,
    /// Where to keep the journal of the hold (see `journal`): the next command undoes what a
    /// dumper killed halfway left. `None`: no journal (a dumper killed halfway leaves its
    /// tree with every signal blocked and its TCP connections in repair mode).
    pub journal: Option<PathBuf>,
    /// Background (copy-on-write) memory dump (see [`cow`]): the tree is stopped only for its
    /// small state; its private anonymous memory is write-protected, the tree resumed, and the
    /// memory copied while it runs, each page before the tree first writes it. The image holds
    /// the memory of the frozen instant. Needs `final_state` `LeaveRunning`; not with
    /// `sent_pages`.
    pub cow: bool,
}

/// Figures of one dump, printed by `vzcpt dump --json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DumpStats {
    pub root_pid: i32,
    pub processes: usize,
    pub threads: usize,
    pub pages_scanned: u64,
    pub pages_stored: u64,
    pub zero_pages_skipped: u64,
    pub pages_bytes_stored: u64,
    /// Pages left to the parent (`parent-pages` record): with `sent_pages`, or in an
    /// incremental dump.
    pub pages_in_parent: u64,
    pub freeze_ms: f64,
    /// Time the tree was stopped for the dump. With `cow`, from the start of the seize to the
    /// thaw.
    pub frozen_ms: f64,
    pub total_ms: f64,
    /// Figures of `--track-mem` / `--parent` (see [`dump_incremental`]).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<incremental::IncrementalStats>,
    /// With `cow`: pages copied after the thaw, those of them copied because the tree was
    /// about to write them (a write fault served), and the time the copy took.
    pub cow_pages_copied: u64,
    pub cow_pages_ahead_of_writes: u64,
    pub cow_copy_ms: f64,
    /// Background dumps made (see [`COW_ATTEMPTS`]); the figures are those of the last.
    pub cow_attempts: u32,
    /// With `cow`: the short stop before the dump's, in which each process gets its
    /// userfaultfd (injected syscalls); its memory is write-protected after it, while it runs.
    pub cow_prearm_stopped_ms: f64,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Background dumps `dump` makes before giving up when each loses the race with the tree
/// ([`DumpError::CowRace`]).
pub const COW_ATTEMPTS: u32 = 3;

/// Dumps the target into `opts.dir`, then kills, resumes or leaves it stopped. With
/// `opts.cow`, up to [`COW_ATTEMPTS`] background dumps.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats, DumpError> {
    dump_incremental(opts, &incremental::IncrementalOptions::default())
}

/// [`dump`] with `--track-mem` and/or `--parent` (see [`incremental`]).
pub fn dump_incremental(
    opts: &DumpOptions,
    inc: &incremental::IncrementalOptions,
) -> Result<DumpStats, DumpError> {
    if opts.cow {
        if inc.track_mem || inc.parent.is_some() {
            return Err(DumpError::Options(
                "a background (cow) dump stores every page: it cannot be incremental \
                 (--track-mem, --parent)"
                    .into(),
            ));
        }
        // A process exiting (or unmapping memory) before its pages are copied spoils one
        // attempt; the tree ran on meanwhile, so another instant is taken.
        let mut attempt = 1;
        loop {
            let (_, frozen, copy) = dump_cow(opts)?;
            // From here the tree runs; a failure of the copy removes the image and lets it run.
            frozen.finish(FinalState::LeaveRunning)?;
            match copy.complete() {
                Err(e @ DumpError::CowRace { .. }) if attempt < COW_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "background copy lost a race; dumping again");
                    attempt += 1;
                }
                Err(DumpError::CowRace { pid, what, reason }) => {
                    return Err(DumpError::CowRace {
                        pid,
                        what,
                        reason: format!("{reason} (attempt {attempt} of {COW_ATTEMPTS})"),
                    })
                }
                Ok(mut stats) => {
                    stats.cow_attempts = attempt;
                    return Ok(stats);
                }
                Err(e) => return Err(e),
            }
        }
    }
    let t0 = Instant::now();
    let (mut stats, frozen) = dump_held_with(opts, inc)?;
    // Only a complete image lets the tree go (killed, resumed or left stopped).
    frozen.finish(opts.final_state)?;
    stats.total_ms = ms(t0);
    Ok(stats)
}

/// Dumps the target into `opts.dir` and returns with the tree still seized: the caller ends
/// it with [`seize::Frozen::finish`] (a live migration keeps the VE stopped until the
/// destination commits or aborts); dropping it resumes the tree. `opts.final_state` is not
/// applied; `total_ms` and `frozen_ms` count up to the complete image.
pub fn dump_held(opts: &DumpOptions) -> Result<(DumpStats, seize::Frozen), DumpError> {
    if opts.cow {
        return Err(DumpError::Options(
            "a background (cow) dump goes through dump_cow, not dump_held".into(),
        ));
    }
    dump_held_with(opts, &incremental::IncrementalOptions::default())
}

/// [`dump_held`] with `--track-mem` and/or `--parent` (see [`incremental`]): the tracking is
/// armed again (relative to this image) before it returns, the tree still stopped.
pub fn dump_held_incremental(
    opts: &DumpOptions,
    inc: &incremental::IncrementalOptions,
) -> Result<(DumpStats, seize::Frozen), DumpError> {
    if opts.cow {
        return Err(DumpError::Options(
            "a background (cow) dump goes through dump_cow, not dump_held".into(),
        ));
    }
    dump_held_with(opts, inc)
}

fn dump_held_with(
    opts: &DumpOptions,
    inc_opts: &incremental::IncrementalOptions,
) -> Result<(DumpStats, seize::Frozen), DumpError> {
    let (stats, frozen, _) = dump_stopped(opts, inc_opts, None)?;
    Ok((stats, frozen))
}

/// A background (copy-on-write) dump, first half: stops the tree a moment to give each
/// process its userfaultfd and write-protects its memory while it runs (see [`cow`]), then
/// stops it for the dump and returns with the tree still stopped, every record but the
/// pagemap written, and its private anonymous memory write-protected (the caller may take a
/// file-system snapshot at this instant). The caller then calls
/// `frozen.finish(FinalState::LeaveRunning)` and, right after, [`cow::CowCopy::complete`],
/// which copies the memory while the tree runs and commits the image. Dropping the
/// [`cow::CowCopy`] instead removes the image and clears the protection. `opts.cow` must be
/// set, with `final_state` `LeaveRunning` and no `sent_pages`.
pub fn dump_cow(opts: &DumpOptions) -> Result<(DumpStats, seize::Frozen, cow::CowCopy), DumpError> {
    if !opts.cow {
        return Err(DumpError::Options("dump_cow needs DumpOptions::cow".into()));
    }
    if opts.final_state != FinalState::LeaveRunning {
        return Err(DumpError::Options(
            "a background (cow) dump copies memory while the tree runs: it needs \
             --leave-running"
                .into(),
        ));
    }
    if opts.sent_pages.is_some() {
        return Err(DumpError::Options(
            "a background (cow) dump stores every page: it cannot refer to pages a \
             migration destination holds (sent_pages)"
                .into(),
        ));
    }
    // Write protection is set up while the tree runs, then completed while it is stopped.
    let prearmed = cow::Prearmed::arm(&opts.target)?;
    let prearm_ms = prearmed.stopped_ms;
    let (stats, frozen, copy) = dump_stopped(
        opts,
        &incremental::IncrementalOptions::default(),
        Some(prearmed),
    )?;
    let mut copy =
        copy.ok_or_else(|| DumpError::Tree("the background copy was not set up".into()))?;
    copy.stats.cow_prearm_stopped_ms = prearm_ms;
    Ok((stats, frozen, copy))
}

/// The dump while the tree is stopped; with `cow`, the memory left to the background copy
/// and the image (not committed) go into the returned [`cow::CowCopy`].
fn dump_stopped(
    opts: &DumpOptions,
    inc_opts: &incremental::IncrementalOptions,
    cow: Option<cow::Prearmed>,
) -> Result<(DumpStats, seize::Frozen, Option<cow::CowCopy>), DumpError> {
    let t0 = Instant::now();
    // The parent chain is read and its keeper's descriptors taken before the freeze.
    let mut inc = if inc_opts.track_mem || inc_opts.parent.is_some() {
        if opts.sent_pages.is_some() && inc_opts.parent.is_some() {
            return Err(DumpError::Tree(
                "a parent image and a migration's sent pages cannot be combined".into(),
            ));
        }
        Some(incremental::Incremental::prepare(inc_opts, &opts.dir)?)
    } else {
        None
    };
    // Begun before the seize: a dumper killed while the freezer holds the cgroup leaves one.
    let journal = match &opts.journal {
        Some(path) => Some(journal::Journal::begin(path, &opts.dir)?),
        None => None,
    };
    // 1. Freeze and seize. From here until `finish`, dropping `frozen` resumes the tree.
    let mut frozen = match &opts.target {
        Target::Tree(pid) => seize::Frozen::seize_tree(Pid::from_raw(*pid))?,
        Target::Cgroup(path) => seize::Frozen::seize_cgroup(&freeze::Freezer::for_cgroup(path)?)?,
    };
    if let Some(j) = journal {
        frozen.keep_journal(j)?;
    }
    // Remote syscalls first, for every process: the scratch page they use is gone before
    // memory is read, and once they are done the cgroup can freeze around the tree.
    let mut remote = HashMap::new();
    let mut cow_plan = cow.map(|pre| cow::CowPlan::with_prearmed(Some(pre)));
    for p in frozen.alive() {
        remote.insert(p.pid.as_raw(), task::dump_process(p)?);
        if let Some(inc) = inc.as_mut() {
            inc.arm(p.pid.as_raw());
        }
        if let Some(plan) = cow_plan.as_mut() {
            plan.arm(p.pid.as_raw())?;
        }
    }
    if let Target::Cgroup(path) = &opts.target {
        frozen.freeze(path)?;
    }
    // Established TCP connections go into repair mode before any socket queue is read.
    let inet = inet::InetDumper::prepare(&mut frozen, opts.tcp_established)?;
    if sys::fault::hit("dump.after-seize") {
        return Err(DumpError::Tree(sys::fault::message("dump.after-seize")));
    }
    let freeze_ms = ms(t0);
    let t_frozen = Instant::now();
    let mut stats = DumpStats {
        root_pid: frozen.root().as_raw(),
        processes: frozen.processes.len(),
        threads: frozen.processes.iter().map(|p| p.threads.len()).sum(),
        freeze_ms,
        ..Default::default()
    };

    // 2. Collect, writing into a temporary directory that only `commit` puts in place.
    if let Some(parent) = opts.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| DumpError::Io {
            op: "create directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let mut writer = ImageWriter::create(&opts.dir)?;
    let pid_map = PidMap::new(&frozen)?;
    let alive: Vec<i32> = frozen.alive().map(|p| p.pid.as_raw()).collect();
    let t_ns = Instant::now();
    let namespaces = ns::dump_namespaces(frozen.root().as_raw(), &alive)?;
    tracing::debug!(ms = ms(t_ns), "namespaces dumped");
    let mut pstree = PstreeImage {
        root_pid: pid_map.virt(frozen.root().as_raw()),
        pid_ns_init: pid_map.ns_init,
        processes: Vec::new(),
    };
    if let Some(inc) = &inc {
        inc.check_root(pstree.root_pid)?;
    }
    let mut core = CoreImage {
        processes: Vec::new(),
    };
    let mut mm = MmImage {
        processes: Vec::new(),
        shmem: Vec::new(),
    };
    let mut files = files::FilesDumper::default();
    files.inet = inet;
    let mut posix_timers = images_format::events::TimersImage::default();
    let mut store = writer.page_store(opts.compress)?;
    let (sink, writer_end) = pagesink::channel(opts.compress.is_none())?;
    // The tracer (this thread) reads pages; a second thread stores them (see `pagesink`).
    let (collected, stored) = std::thread::scope(|scope| {
        let storing = scope.spawn(|| writer_end.run(&mut store));
        let collected = (|| {
            let mut mem = memory::MemDumper::new(&sink);
            mem.sent_pages = opts.sent_pages.as_ref();
            mem.incremental = inc.as_ref();
            mem.cow = cow_plan.take();
            // The VE's own IPC namespace: its objects once, and SysV attachments by id.
            let ipc = if namespaces.own.contains(&images_format::ns::NsKind::Ipc) {
                let root = frozen.root().as_raw();
                mem.sysv_ipc_ns = Some(ipc::ipc_ns_id(root)?);
                Some(ipc::dump_ipc_ns(root, &sink)?)
            } else {
                None
            };
            // Every tmpfs mount's files, while the tree is frozen.
            let mut tmpfs = tmpfs::TmpfsDumper {
                pid: frozen.root().as_raw(),
                sink: &sink,
                next_id: 0,
            };
            tracing::debug!(ms = ms(t_ns), "IPC namespace dumped");
            let tmpfs_image = images_format::tmpfs::TmpfsImage {
                mounts: namespaces
                    .mounts
                    .iter()
                    .filter(|m| m.kind == images_format::ns::MountKind::Tmpfs)
                    .map(|m| tmpfs.dump(&m.mountpoint))
                    .collect::<Result<_, _>>()?,
            };
            tracing::debug!(ms = ms(t_ns), "tmpfs mounts dumped");
            for p in &frozen.processes {
                let pid = p.pid.as_raw();
                let st = seize::read_stat(pid)?;
                let (pgid, sid) = pid_map.group_and_session(pid, &st)?;
                let mut entry = ProcessEntry {
                    pid: pid_map.virt(pid),
                    ppid: if pid == frozen.root().as_raw() {
                        0
                    } else {
                        pid_map.virt(p.ppid)
                    },
                    pgid,
                    sid,
                    threads: Vec::new(),
                    state: ProcState::Alive,
                    comm: st.comm.clone(),
                };
                if let Some(code) = p.zombie {
                    entry.state = ProcState::Zombie { exit_code: code };
                    pstree.processes.push(entry);
                    continue;
                }
                entry.threads = p
                    .threads
                    .iter()
                    .map(|t| pid_map.virt_tid(pid, t.tid.as_raw()))
                    .collect::<Result<_, _>>()?;
                let (mut pcore, facts) = remote.remove(&pid).ok_or_else(|| {
                    DumpError::Tree(format!("task {pid}: its state was not read"))
                })?;
                pcore.pid = entry.pid;
                for (t, vt) in pcore.threads.iter_mut().zip(&entry.threads) {
                    t.tid = *vt;
                }
                if !facts.posix_timers.is_empty() {
                    let host_tids: Vec<i32> = p.threads.iter().map(|t| t.tid.as_raw()).collect();
                    posix_timers.processes.push(timers::for_image(
                        pid,
                        entry.pid,
                        facts.posix_timers,
                        &host_tids,
                        &entry.threads,
                    )?);
                }
                let mut pmm = mem.dump_process(pid, entry.pid, facts.brk)?;
                pmm.pid = entry.pid;
                files.dump_process(pid)?;
                if let Some(t) = files.tables.last_mut() {
                    t.pid = entry.pid;
                }
                core.processes.push(pcore);
                mm.processes.push(pmm);
                pstree.processes.push(entry);
            }
            // Unix socket peers must all be in the tree: known once every process is dumped.
            files.unix.finish()?;
            Ok::<_, DumpError>((
                mem.stats,
                std::mem::take(&mut mem.shmem),
                std::mem::take(&mut mem.parent_runs),
                ipc,
                tmpfs_image,
                mem.cow.take(),
            ))
        })();
        drop(sink);
        let stored = storing
            .join()
            .unwrap_or_else(|_| Err(DumpError::Tree("the page writer thread panicked".into())));
        (collected, stored)
    });
    // The writer's own error explains a failed send better than the send does.
    let stored = stored?;
    let (mem_stats, shmem, parent_runs, ipc, tmpfs_image, cow_plan) = collected?;
    if sys::fault::hit("dump.after-pages") {
        return Err(DumpError::Tree(sys::fault::message("dump.after-pages")));
    }
    mm.shmem = shmem;
    let mut entries = Some(stored.entries);
    // A background dump goes on storing pages after the thaw.
    let (index, store) = match cow_plan {
        Some(_) => (None, Some(store)),
        None => (Some(store.finish()?), None),
    };
    if let Some(index) = &index {
        stats.pages_bytes_stored = index.chunks.iter().map(|c| c.stored_len as u64).sum();
    }
    stats.pages_scanned =
        mem_stats.pages_scanned + cow_plan.as_ref().map_or(0, |c| c.pages_scanned);
    stats.pages_in_parent = mem_stats.pages_in_parent;
    stats.pages_stored = stored.pages_stored;
    // Pages equal to the parent's were zeroed for the sink to leave them out.
    stats.zero_pages_skipped = stored
        .zero_pages_skipped
        .saturating_sub(mem_stats.pages_same_as_parent);
    if let Some(inc) = inc.as_mut() {
        inc.stats.pages_untracked = mem_stats.pages_untracked;
        inc.stats.pages_same_as_parent = mem_stats.pages_same_as_parent;
        if inc.has_parent() {
            let tracked = alive.iter().filter(|&&p| inc.is_tracked(p)).count();
            inc.stats.processes_tracked = tracked;
            inc.stats.processes_untracked = alive.len() - tracked;
        }
        inc.report();
    }

    // 3. Write the records and put the image in place.
    writer.write(&Inventory {
        format_major: images_format::FORMAT_MAJOR,
        format_minor: images_format::FORMAT_MINOR,
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        xsave_features: sys::syscalls::xcr0(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        parent: inc
            .as_ref()
            .and_then(|i| i.parent_recorded())
            .map(str::to_string),
        root_pid: pstree.root_pid,
        compressed: opts.compress.is_some(),
    })?;
    writer.write(&pstree)?;
    writer.write(&core)?;
    writer.write(&mm)?;
    if let (Some(index), Some(entries)) = (index, entries.as_mut()) {
        writer.write(&PagemapImage {
            store: index,
            entries: std::mem::take(entries),
        })?;
    }
    writer.write(&FilesImage {
        descs: files.descs,
        tables: files.tables,
    })?;
    writer.write(&PipesImage {
        pipes: files.pipes.pipes,
    })?;
    writer.write(&namespaces)?;
    if let Some(ipc) = &ipc {
        writer.write(ipc)?;
    }
    if !tmpfs_image.mounts.is_empty() {
        writer.write(&tmpfs_image)?;
    }
    if !posix_timers.processes.is_empty() {
        writer.write(&posix_timers)?;
    }
    if !parent_runs.is_empty() {
        writer.write(&ParentPagesImage {
            parent: inc
                .as_ref()
                .and_then(|i| i.parent_recorded())
                .unwrap_or(images_format::chain::STAGED)
                .into(),
            runs: parent_runs,
        })?;
    }
    if let Some(inc) = inc.as_mut() {
        let live: Vec<(i32, i32)> = frozen
            .alive()
            .map(|p| (p.pid.as_raw(), pid_map.virt(p.pid.as_raw())))
            .collect();
        if let Some(track) = inc.start_keeper(&live)? {
            writer.write(&track)?;
        }
    }
    if sys::fault::hit("dump.before-commit") {
        return Err(DumpError::Tree(sys::fault::message("dump.before-commit")));
    }
    if let (Some(plan), Some(store)) = (cow_plan, store) {
        let copy = cow::CowCopy {
            writer,
            store,
            entries: entries.unwrap_or_default(),
            compress: opts.compress,
            plan,
            stats: stats.clone(),
            t0,
        };
        stats.frozen_ms = ms(t_frozen);
        stats.total_ms = ms(t0);
        return Ok((stats, frozen, Some(copy)));
    }
    writer.commit()?;
    if sys::fault::hit("dump.before-rearm") {
        return Err(DumpError::Tree(sys::fault::message("dump.before-rearm")));
    }
    if let Some(inc) = inc.as_mut() {
        // The tree is still frozen: protection relative to this very image.
        inc.after_commit();
        stats.incremental = Some(inc.stats.clone());
    }

    stats.frozen_ms = ms(t_frozen);
    stats.total_ms = ms(t0);
    info!(
        ?stats,
        read_ms = mem_stats.read_ns / 1_000_000,
        store_ms = mem_stats.store_ns / 1_000_000,
        "dump complete"
    );
    Ok((stats, frozen, None))
}

/// PIDs as the image records them: those of the root's own PID namespace when the root is its
/// init, otherwise those the dumper sees.
struct PidMap {
    ns_init: bool,
    /// How many NSpid levels the dumper's view has above the recorded one.
    level: usize,
}

fn ns_numbers(path: &str, key: &str) -> Result<Vec<i64>, DumpError> {
    let text = std::fs::read_to_string(path).map_err(|source| DumpError::Io {
        op: "read",
        path: path.into(),
        source,
    })?;
    Ok(proc::status_numbers(&proc::parse_status(&text), key))
}

impl PidMap {
    fn new(frozen: &seize::Frozen) -> Result<Self, DumpError> {
        let root = frozen.root().as_raw();
        let nspid = ns_numbers(&format!("/proc/{root}/status"), "NSpid")?;
        let ns_init = nspid.len() > 1 && nspid.last() == Some(&1);
        let map = PidMap {
            ns_init,
            level: if ns_init { nspid.len() - 1 } else { 0 },
        };
        if ns_init {
            for p in frozen.alive() {
                let levels = ns_numbers(&format!("/proc/{}/status", p.pid), "NSpid")?.len();
                if levels != nspid.len() {
                    return Err(DumpError::Unsupported {
                        pid: p.pid.as_raw(),
                        resource: "nested PID namespace".into(),
                        reason: "only the root may start a PID namespace".into(),
                    });
                }
            }
        }
        Ok(map)
    }

    fn translate(&self, path: &str, key: &str, fallback: i32) -> Result<i32, DumpError> {
        if !self.ns_init {
            return Ok(fallback);
        }
        let v = ns_numbers(path, key)?;
        Ok(v.get(self.level).copied().unwrap_or(0) as i32)
    }

    fn virt(&self, pid: i32) -> i32 {
        if !self.ns_init {
            return pid;
        }
        self.translate(&format!("/proc/{pid}/status"), "NSpid", pid)
            .unwrap_or(pid)
    }

    fn virt_tid(&self, pid: i32, tid: i32) -> Result<i32, DumpError> {
        self.translate(&format!("/proc/{pid}/task/{tid}/status"), "NSpid", tid)
    }

    fn group_and_session(&self, pid: i32, st: &proc::Stat) -> Result<(i32, i32), DumpError> {
        let path = format!("/proc/{pid}/status");
        Ok((
            self.translate(&path, "NSpgid", st.pgrp)?,
            self.translate(&path, "NSsid", st.session)?,
        ))
    }
}
