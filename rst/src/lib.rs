//! Restoring a process tree from an image.
//!
//! The flow is [`restore`]; each resource kind has its own module. The image is read and
//! checked in full before any process is created ([`validate`]). Processes are created by
//! [`tree`], each then seized and turned into its dumped self by remote syscalls ([`memory`],
//! [`files`], [`task`]), and all are released together at the end. On any failure
//! [`tree::Created`] kills everything created: nothing half-restored stays alive.
#![forbid(unsafe_code)]

pub mod arena;
pub mod cgroup;
pub mod events;
pub mod files;
pub mod inet;
pub mod ipc;
pub mod memory;
pub mod ns;
pub mod task;
pub mod timers;
pub mod tmpfs;
pub mod tree;
pub mod unix;
pub mod validate;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use images_format::core::CoreImage;
use images_format::files::FilesImage;
use images_format::ipc::IpcImage;
use images_format::mm::{MmImage, PagemapImage};
use images_format::ns::{NamespacesImage, NsKind};
use images_format::pipes::PipesImage;
use images_format::pstree::PstreeImage;
use images_format::tmpfs::TmpfsImage;
use images_format::{FormatError, ImageDir, ImageKind};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use serde::Serialize;
use sys::remote::RemoteTask;
use sys::{ptrace, Pid, SysError};
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the image cannot be restored: {0}")]
    Invalid(String),
    #[error("cannot read the image")]
    Image(#[from] FormatError),
    #[error("process tree: {0}")]
    Tree(String),
    #[error("memory: {0}")]
    Memory(String),
    #[error("files: {0}")]
    Files(String),
    #[error("process {pid}: cannot restore {what}: {reason}")]
    Task {
        pid: i32,
        what: String,
        reason: String,
    },
    #[error("system call failed")]
    Sys(#[from] SysError),
}

#[derive(Clone)]
pub struct RestoreOptions {
    pub dir: PathBuf,
    /// Do not wait for the root: it is re-parented away from the restorer.
    pub detach: bool,
    /// The root file system for a tree that had its own mount namespace (a VE's root).
    pub root: Option<PathBuf>,
    /// Cgroup paths starting with `.0` are restored under `.1` instead (a VE restored under
    /// another cgroup root or CTID).
    pub cgroup_rewrite: Option<(String, String)>,
    /// Connects the restored network namespace (of the root, by host PID) to the host: the
    /// VE layer creates its veth pair and gives it the dumped addresses and routes. Needed when
    /// the image has network links; called before any socket is restored.
    pub net_hook: Option<NetHook>,
}

/// See [`RestoreOptions::net_hook`].
pub type NetHook =
    std::sync::Arc<dyn Fn(i32, &images_format::ns::NetState) -> Result<(), String> + Send + Sync>;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    /// Root PID as the caller sees it.
    pub root_pid: i32,
    pub processes: usize,
    pub threads: usize,
    pub pages_restored: u64,
    pub create_ms: f64,
    pub total_ms: f64,
}

/// The whole image, read and decoded.
pub struct Images {
    pub dir: ImageDir,
    pub pstree: PstreeImage,
    pub core: CoreImage,
    pub mm: MmImage,
    /// `entries` resolved through the chain of parents; `store` is the top image's alone.
    pub pagemap: PagemapImage,
    /// The image and its parents (just the image when it is not incremental): its
    /// [`store`](images_format::chain::Chain::store) holds every page `pagemap` names.
    pub chain: images_format::chain::Chain,
    pub files: FilesImage,
    pub pipes: PipesImage,
    pub ns: NamespacesImage,
    /// Only when the tree owned its IPC namespace.
    pub ipc: Option<IpcImage>,
    /// Contents of the tree's tmpfs mounts (empty without them).
    pub tmpfs: TmpfsImage,
    /// POSIX timers (empty when no process had one).
    pub timers: images_format::events::TimersImage,
}

impl Images {
    /// Reads the image at `dir` and, for an incremental image, its chain of parents:
    /// `pagemap.entries` are then the resolved pages of the whole chain, whose chunk numbers
    /// are those of [`Images::chain`]'s store (see `images_format::chain`).
    pub fn load(dir: &std::path::Path) -> Result<Self, RestoreError> {
        let chain = images_format::chain::Chain::open(dir)?;
        let dir = ImageDir::open(dir)?;
        let mut pagemap: PagemapImage = dir.read()?;
        pagemap.entries = chain.entries.clone();
        Ok(Images {
            pstree: dir.read()?,
            core: dir.read()?,
            mm: dir.read()?,
            pagemap,
            chain,
            files: dir.read()?,
            pipes: dir.read()?,
            ns: dir.read()?,
            ipc: if dir.has(ImageKind::Ipc) {
                Some(dir.read()?)
            } else {
                None
            },
            tmpfs: if dir.has(ImageKind::Tmpfs) {
                dir.read()?
            } else {
                TmpfsImage::default()
            },
            timers: if dir.has(ImageKind::Timers) {
                dir.read()?
            } else {
                Default::default()
            },
            dir,
        })
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// A restored tree whose processes are released and running.
pub struct Restored {
    pub stats: RestoreStats,
    root: Pid,
    root_is_child: bool,
}

impl Restored {
    /// Waits for the restored root (the restorer is its parent unless detached) and returns
    /// the exit code a shell would show: the code, or 128 + signal.
    pub fn wait(self) -> Result<i32, RestoreError> {
        if !self.root_is_child {
            return Ok(0);
        }
        loop {
            match waitpid(self.root, Some(WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(RestoreError::Tree(format!("waiting for the root: {e}"))),
            }
        }
    }
}

pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    // 1. Read and check everything before creating anything.
    let img = Images::load(&opts.dir)?;
    validate::validate(&img)?;
    ns::check(&img.ns, opts.root.as_deref())?;
    if let Some(net) = &img.ns.net {
        if !net.links.is_empty() && opts.net_hook.is_none() {
            return Err(RestoreError::Invalid(format!(
                "the tree had network links ({}) that only the VE layer can connect: restore it with vzctl",
                net.links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    tmpfs::validate(&img.tmpfs.mounts, &img.pagemap.entries)?;
    for m in &img.ns.mounts {
        if m.kind == images_format::ns::MountKind::Tmpfs
            && !img
                .tmpfs
                .mounts
                .iter()
                .any(|t| t.mountpoint == m.mountpoint)
        {
            return Err(RestoreError::Invalid(format!(
                "tmpfs {} has no contents in the image",
                m.mountpoint
            )));
        }
    }
    match (&img.ipc, img.ns.own.contains(&NsKind::Ipc)) {
        (Some(ipc), true) => ipc::validate(ipc, &img.pagemap.entries)?,
        (None, false) => {}
        (Some(_), false) => {
            return Err(RestoreError::Invalid(
                "the image has IPC objects but no IPC namespace of its own".into(),
            ))
        }
        (None, true) => {
            return Err(RestoreError::Invalid(
                "the tree owned an IPC namespace but the image has no ipc record".into(),
            ))
        }
    }
    let store = img.chain.store()?;
    // Every page chunk's checksum too: a damaged image must be refused before any process exists.
    store.verify_all()?;

    // 2. Resources the restorer opens once and every new process inherits: descriptions at
    //    numbers above all the tree's own, and shared memory objects.
    let max_fd = img
        .files
        .tables
        .iter()
        .flat_map(|t| t.fds.iter().map(|e| e.fd))
        .max()
        .unwrap_or(2);
    let limit = sys::syscalls::raise_nofile_limit()?;
    let fd_base = (max_fd + 1).max(3);
    if (fd_base as u64) + (img.files.descs.len() + img.mm.shmem.len()) as u64 + 16 > limit {
        return Err(RestoreError::Invalid(format!(
            "descriptor {max_fd} is above what RLIMIT_NOFILE ({limit}) allows here"
        )));
    }
    let mut chunks = memory::ChunkCache::new(&store)?;
    let shmem = memory::prepare_shmem(&img.mm.shmem, &img.pagemap.entries, &mut chunks, fd_base)?;
    // A tree with namespaces of its own has its files opened by its root, inside them: paths
    // resolve in its mount tree, sockets belong to its network, queues to its IPC namespace.
    let in_root = !img.ns.own.is_empty();
    let prepared = files::prepare(&img.files, &img.pipes, fd_base, in_root)?;

    // 3. The tree, with exact PIDs; each process waits to be seized.
    let layouts: HashMap<i32, Vec<(u64, u64)>> = img
        .mm
        .processes
        .iter()
        .map(|m| (m.pid, m.vmas.iter().map(|v| (v.start, v.end)).collect()))
        .collect();
    let mut plan = tree::plan(&img.pstree, &layouts);
    plan.ns_flags = ns::clone_flags(&img.ns);
    // Run by the root in its new namespaces before it forks: mounts, names, loopback, then
    // the files that can only be opened there.
    let ns_setup = || -> Result<(), String> {
        let chunks =
            std::cell::RefCell::new(memory::ChunkCache::new(&store).map_err(|e| e.to_string())?);
        ns::build_in_root(&img.ns, opts.root.as_deref(), &|m, dir| {
            let contents = img
                .tmpfs
                .mounts
                .iter()
                .find(|t| t.mountpoint == m.mountpoint)
                .ok_or_else(|| format!("tmpfs {} has no contents in the image", m.mountpoint))?;
            tmpfs::restore_tmpfs(
                dir,
                contents,
                &img.pagemap.entries,
                &mut chunks.borrow_mut(),
            )
            .map_err(|e| e.to_string())
        })?;
        if let Some(ipc) = &img.ipc {
            // In the new, empty IPC namespace; the root's children attach what they map.
            ipc::restore_ipc_ns(ipc, &img.pagemap.entries, &mut chunks.borrow_mut())
                .map_err(|e| format!("IPC objects: {e}"))?;
        }
        Ok(())
    };
    let files_setup = || -> Result<(), String> {
        if in_root {
            let keepers = files::open_deferred(&img.files, &img.pipes, &prepared)
                .map_err(|e| e.to_string())?;
            // FIFO keepers stay open in the root builder until its descriptors are installed.
            std::mem::forget(keepers);
        }
        Ok(())
    };
    let net_hook = |root: Pid| -> Result<(), String> {
        match (&opts.net_hook, &img.ns.net) {
            (Some(hook), Some(net)) => hook(root.as_raw(), net),
            _ => Ok(()),
        }
    };
    let root_setup = tree::RootSetup {
        namespaces: &ns_setup,
        files: &files_setup,
        net_hook: img
            .ns
            .net
            .as_ref()
            .filter(|n| !n.links.is_empty())
            .map(|_| &net_hook as &dyn Fn(Pid) -> Result<(), String>),
    };
    let hierarchies = cgroup::Hierarchies::of_this_host()?;
    // Declared before the tree: on failure the tree is killed first, then its new cgroups go.
    let mut new_cgroups = cgroup::CreatedCgroups::default();
    // The root is born in its cgroup v2 (and so are all its descendants); the v1 ones and
    // any other of a process are joined below, while it is still a single-threaded builder.
    let root_cgroup = match core_of(&img, img.pstree.root_pid) {
        Ok(core) => hierarchies.open_v2(
            img.pstree.root_pid,
            &core.cgroups,
            opts.cgroup_rewrite.as_ref(),
            &mut new_cgroups,
        )?,
        Err(_) => None,
    };
    plan.root_cgroup_fd = root_cgroup.as_ref().map(|fd| fd.as_raw_fd());
    let mut created = tree::create(&plan, opts.detach, &root_setup)?;
    let create_ms = ms(t0);

    // 4. Seize every process, then make each one its dumped self.
    for p in &created.procs {
        ptrace::seize_and_interrupt(p.host)?;
        ptrace::wait_for_interrupt_stop(p.host)?;
        ptrace::set_sigmask(p.host, !0)?;
        let core = core_of(&img, p.pid)?;
        hierarchies.place(
            p.pid,
            p.host.as_raw(),
            &core.cgroups,
            opts.cgroup_rewrite.as_ref(),
            &mut new_cgroups,
        )?;
    }
    let mut threads_of: HashMap<i32, Vec<Pid>> = HashMap::new();
    let mut stats = RestoreStats {
        processes: img.pstree.processes.len(),
        create_ms,
        ..Default::default()
    };
    for p in &created.procs {
        let tids = restore_one(&img, &mut chunks, &shmem, &prepared, fd_base, p)?;
        stats.threads += tids.len();
        threads_of.insert(p.pid, tids);
    }
    // Segments removed while attached are removed again, now that every process has
    // attached its own.
    if let Some(ipc) = &img.ipc {
        ipc::finish_ipc_ns_of(created.root_host.as_raw(), ipc)?;
    }
    stats.pages_restored = img
        .pagemap
        .entries
        .iter()
        .filter(|e| matches!(e.owner, images_format::mm::PageOwner::Process(_)))
        .map(|e| e.nr_pages as u64)
        .sum();

    // A restore that fails at its very last step, every process built: all must go.
    if sys::fault::hit("restore.before-release") {
        return Err(RestoreError::Invalid(sys::fault::message(
            "restore.before-release",
        )));
    }
    // 5. Release every thread of every process together, with its own signal mask.
    for p in &created.procs {
        let core = core_of(&img, p.pid)?;
        for (t, tid) in core.threads.iter().zip(&threads_of[&p.pid]) {
            ptrace::set_sigmask(*tid, t.blocked)?;
        }
    }
    // Children before parents and the main thread last: a process that looks at its children
    // (or its own threads) the moment it runs finds them running too, not in a tracing stop.
    for p in created.procs.iter().rev() {
        for tid in threads_of[&p.pid].iter().rev() {
            ptrace::detach(*tid, None)?;
        }
    }
    created.release();
    new_cgroups.keep();
    drop(prepared);
    drop(shmem);
    stats.root_pid = created.root_host.as_raw();
    stats.total_ms = ms(t0);
    info!(?stats, "restore complete");
    Ok(Restored {
        stats,
        root: created.root_host,
        root_is_child: created.root_is_child,
    })
}

fn core_of(img: &Images, pid: i32) -> Result<&images_format::core::ProcessCore, RestoreError> {
    img.core
        .processes
        .iter()
        .find(|c| c.pid == pid)
        .ok_or_else(|| RestoreError::Invalid(format!("no core record for process {pid}")))
}

/// Turns one seized builder into the dumped process; returns its threads' host TIDs (main first).
fn restore_one(
    img: &Images,
    chunks: &mut memory::ChunkCache<'_>,
    shmem: &memory::SharedObjects,
    prepared: &files::Prepared,
    fd_base: i32,
    p: &tree::CreatedProc,
) -> Result<Vec<Pid>, RestoreError> {
    let core = core_of(img, p.pid)?;
    let mm = img
        .mm
        .processes
        .iter()
        .find(|m| m.pid == p.pid)
        .ok_or_else(|| RestoreError::Invalid(format!("no mm record for process {}", p.pid)))?;
    let table = img
        .files
        .tables
        .iter()
        .find(|t| t.pid == p.pid)
        .ok_or_else(|| RestoreError::Invalid(format!("no fd table for process {}", p.pid)))?;
    let entry = img
        .pstree
        .processes
        .iter()
        .find(|e| e.pid == p.pid)
        .ok_or_else(|| RestoreError::Invalid(format!("process {} is not in the tree", p.pid)))?;

    let base = ptrace::get_regs(p.host)?;
    let mut rt = RemoteTask::with_code(p.host, p.scratch, base)?;
    rt.set_scratch(p.scratch, tree::SCRATCH_LEN);
    // The restorer's rseq registration, inherited through fork, goes before its memory does;
    // a process joins a group whose leader is not itself now that every leader exists.
    let mut first = Vec::new();
    let (rseq_addr, rseq_len, rseq_sig) = ptrace::get_rseq(p.host)?;
    if rseq_addr != 0 {
        first.push(sys::remote::Call::new(
            "rseq(unregister)",
            libc::SYS_rseq,
            &[rseq_addr, rseq_len as u64, 1, rseq_sig as u64],
        ));
    }
    if entry.pgid != entry.pid
        && entry.pgid != 0
        && entry.sid != entry.pid
        && img.pstree.processes.iter().any(|q| q.pid == entry.pgid)
    {
        first.push(sys::remote::Call::new(
            "setpgid",
            libc::SYS_setpgid,
            &[0, entry.pgid as u64],
        ));
    }
    rt.batch(&first).map_err(|e| RestoreError::Task {
        pid: p.pid,
        what: format!("process group {}", entry.pgid),
        reason: e.to_string(),
    })?;
    memory::restore_mm(
        &mut rt,
        p.host.as_raw(),
        p.scratch,
        mm,
        &img.pagemap.entries,
        chunks,
        shmem,
    )?;
    files::install(&mut rt, table, prepared, fd_base)?;
    events::register_epoll_targets(&mut rt, &img.files, table)?;
    task::restore_process_state(&mut rt, core, p.pid)?;
    let mut tids = vec![p.host];
    tids.extend(task::create_threads(&mut rt, &core.threads)?);
    if let Some(t) = img.timers.processes.iter().find(|t| t.pid == p.pid) {
        let threads: Vec<(i32, Pid)> = core
            .threads
            .iter()
            .map(|t| t.tid)
            .zip(tids.iter().copied())
            .collect();
        timers::restore_posix_timers(&mut rt, t, p.pid, &threads)?;
    }
    for (i, (t, tid)) in core.threads.iter().zip(&tids).enumerate() {
        if i == 0 {
            task::restore_thread_state(&mut rt, t)?;
            task::requeue_thread_signals(&mut rt, t, p.pid)?;
        } else {
            let mut sib = rt.sibling(*tid)?;
            task::restore_thread_state(&mut sib, t)?;
            task::requeue_thread_signals(&mut sib, t, p.pid)?;
            task::restore_creds(&mut sib, &core.creds, None, core.no_new_privs)?;
            sib.finish_with(&ptrace::get_regs(*tid)?)?;
        }
    }
    task::requeue_signals(&mut rt, core, p.pid)?;
    task::restore_creds(&mut rt, &core.creds, Some(core), core.no_new_privs)?;
    // The syscall page goes last; the task runs no instruction from it after this munmap.
    rt.syscall_ok(
        "munmap",
        libc::SYS_munmap,
        [p.scratch, tree::SCRATCH_LEN, 0, 0, 0, 0],
    )?;
    let regs = task::user_regs(&core.threads[0].regs, &ptrace::get_regs(p.host)?);
    tracing::debug!(pid = p.pid, syscalls = rt.injected, "process rebuilt");
    rt.finish_with(&regs)?;
    for (t, tid) in core.threads.iter().zip(&tids) {
        task::set_final_regs(*tid, t)?;
    }
    Ok(tids)
}
