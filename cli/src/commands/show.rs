use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use images_format::core::CoreImage;
use images_format::files::FilesImage;
use images_format::ipc::IpcImage;
use images_format::mm::{MmImage, PagemapImage};
use images_format::ns::NamespacesImage;
use images_format::pipes::PipesImage;
use images_format::pstree::PstreeImage;
use images_format::tmpfs::TmpfsImage;
use images_format::{ImageDir, ImageKind};

/// Decode and print every record of an image (like CRIU's crit).
#[derive(Args, Debug)]
pub struct ShowArgs {
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub dir: PathBuf,
    /// One JSON object with every record.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Everything {
    inventory: images_format::Inventory,
    pstree: PstreeImage,
    core: CoreImage,
    mm: MmImage,
    pagemap: PagemapImage,
    files: FilesImage,
    pipes: PipesImage,
    ns: NamespacesImage,
    /// Only in images of a VE with its own IPC namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    ipc: Option<IpcImage>,
    /// Only in images of a tree with tmpfs mounts of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    tmpfs: Option<TmpfsImage>,
    /// Only when some process has POSIX timers.
    #[serde(skip_serializing_if = "Option::is_none")]
    timers: Option<images_format::events::TimersImage>,
    /// Only in incremental images: the pages their parent holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_pages: Option<images_format::mm::ParentPagesImage>,
    /// Only in images dumped with `--track-mem`.
    #[serde(skip_serializing_if = "Option::is_none")]
    track_state: Option<images_format::track::TrackStateImage>,
}

pub fn run(a: &ShowArgs) -> anyhow::Result<i32> {
    let dir =
        ImageDir::open(&a.dir).with_context(|| format!("cannot open image {}", a.dir.display()))?;
    let all = Everything {
        inventory: dir.inventory().clone(),
        pstree: dir.read()?,
        core: dir.read()?,
        mm: dir.read()?,
        pagemap: dir.read()?,
        files: dir.read()?,
        pipes: dir.read()?,
        ns: dir.read()?,
        ipc: if dir.has(ImageKind::Ipc) {
            Some(dir.read()?)
        } else {
            None
        },
        tmpfs: if dir.has(ImageKind::Tmpfs) {
            Some(dir.read()?)
        } else {
            None
        },
        timers: if dir.has(ImageKind::Timers) {
            Some(dir.read()?)
        } else {
            None
        },
        parent_pages: if dir.has(ImageKind::ParentPages) {
            Some(dir.read()?)
        } else {
            None
        },
        track_state: if dir.has(ImageKind::TrackState) {
            Some(dir.read()?)
        } else {
            None
        },
    };
    if a.json {
        super::print_json(&all)?;
        return Ok(0);
    }
    let inv = &all.inventory;
    println!(
        "image {} (format {}.{}, engine {}, kernel {}, {}, xsave {:#x}{})",
        a.dir.display(),
        inv.format_major,
        inv.format_minor,
        inv.engine_version,
        inv.kernel,
        inv.arch,
        inv.xsave_features,
        if inv.compressed { ", zstd pages" } else { "" }
    );
    if let Some(parent) = &inv.parent {
        println!("incremental: parent image {parent} (relative to this image's directory)");
    }
    println!(
        "\n== pstree (root {}, own PID namespace: {})",
        all.pstree.root_pid, all.pstree.pid_ns_init
    );
    for p in &all.pstree.processes {
        println!(
            "  pid {:>6} ppid {:>6} pgid {:>6} sid {:>6} {:?} threads {:?}",
            p.pid, p.ppid, p.pgid, p.sid, p.state, p.threads
        );
    }
    println!("\n== core");
    for c in &all.core.processes {
        println!("{c:#?}");
    }
    println!("\n== mm");
    for m in &all.mm.processes {
        println!("  process {} exe {} fields {:?}", m.pid, m.exe, m.fields);
        for v in &m.vmas {
            println!(
                "    {:#014x}-{:#014x} prot {} flags {:#x} off {:#x} {:?}",
                v.start, v.end, v.prot, v.flags, v.offset, v.kind
            );
        }
    }
    for o in &all.mm.shmem {
        println!("  shared object {} size {}", o.id, o.size);
    }
    println!("\n== pagemap ({} chunks)", all.pagemap.store.chunks.len());
    for c in &all.pagemap.store.chunks {
        println!("  chunk {c:?}");
    }
    for e in &all.pagemap.entries {
        println!(
            "  {:?} {:#x} x{} at chunk {} +{}",
            e.owner, e.addr, e.nr_pages, e.loc.chunk, e.loc.offset
        );
    }
    if let Some(pp) = &all.parent_pages {
        let pages: u64 = pp.runs.iter().map(|r| r.nr_pages as u64).sum();
        println!(
            "\n== parent-pages (parent {}: {} runs, {pages} pages)",
            pp.parent,
            pp.runs.len()
        );
        for r in &pp.runs {
            println!("  {:?} {:#x} x{}", r.owner, r.addr, r.nr_pages);
        }
    }
    if let Some(t) = &all.track_state {
        println!(
            "\n== track-state (keeper pid {} start time {})",
            t.keeper_pid, t.keeper_start_time
        );
        for p in &t.processes {
            println!(
                "  process {} (host pid {} start time {}) keeper fd {} areas {}",
                p.image_pid,
                p.host_pid,
                p.start_time,
                p.keeper_fd,
                p.areas.len()
            );
        }
    }
    println!("\n== files");
    for d in &all.files.descs {
        match &d.kind {
            images_format::files::FileKind::Regular {
                path,
                mode,
                unlinked_contents,
            } => println!(
                "  desc {} flags {:#o} pos {} regular {path} mode {mode:#o}{}",
                d.id,
                d.flags,
                d.pos,
                unlinked_contents
                    .as_ref()
                    .map(|c| format!(" (unlinked, {} bytes saved)", c.len()))
                    .unwrap_or_default()
            ),
            images_format::files::FileKind::UnixSocket(u) => {
                use images_format::unix::Binding;
                let binding = match &u.binding {
                    Binding::Unnamed => "unnamed".to_string(),
                    Binding::Bound { name, file } => format!(
                        "bound to {name}{}",
                        file.map(|f| format!(
                            " (file mode {:#o} uid {} gid {})",
                            f.mode, f.uid, f.gid
                        ))
                        .unwrap_or_default()
                    ),
                    Binding::Accepted { name } => format!("accepted from {name}"),
                };
                println!(
                    "  desc {} flags {:#o} unix {:?} socket {} {binding} {:?} shutdown {} {:?} queue {} message(s), {} bytes",
                    d.id,
                    d.flags,
                    u.sock_type,
                    u.ino,
                    u.state,
                    u.shutdown,
                    u.options,
                    u.queue.len(),
                    u.queue.iter().map(|m| m.data.len()).sum::<usize>()
                )
            }
            images_format::files::FileKind::Inet(sock) => {
                println!(
                    "  desc {} flags {:#o} {}",
                    d.id,
                    d.flags,
                    describe_inet(sock)
                );
                println!("      options {:?}", sock.opts);
            }
            k => println!("  desc {} flags {:#o} pos {} {k:?}", d.id, d.flags, d.pos),
        }
    }
    for t in &all.files.tables {
        println!("  process {}: {:?}", t.pid, t.fds);
    }
    if let Some(timers) = &all.timers {
        println!("\n== POSIX timers");
        for p in &timers.processes {
            for t in &p.timers {
                println!(
                    "  process {} timer {} clock {} signal {} value {:#x} {:?} next in {} ns every {} ns overrun {}",
                    p.pid,
                    t.id,
                    t.clockid,
                    t.signo,
                    t.sigev_value,
                    t.notify,
                    t.value_ns,
                    t.interval_ns,
                    t.overrun
                );
            }
        }
    }
    println!("\n== pipes");
    for p in &all.pipes.pipes {
        println!(
            "  pipe {} capacity {} data {} bytes",
            p.pipe_id,
            p.capacity,
            p.data.len()
        );
    }
    let ns = &all.ns;
    println!("\n== namespaces (own: {:?})", ns.own);
    if let Some(u) = &ns.uts {
        println!("  hostname {:?} domainname {:?}", u.hostname, u.domainname);
    }
    if let Some(n) = &ns.net {
        println!("  loopback up: {}", n.loopback_up);
    }
    for m in &ns.mounts {
        println!(
            "  mount {} parent {} {} {} ({}) flags {:#x} options {:?} {:?}",
            m.id, m.parent_id, m.mountpoint, m.fstype, m.source, m.flags, m.fs_options, m.kind
        );
    }
    if let Some(ipc) = &all.ipc {
        println!("\n== ipc");
        println!("  sysctls {:?}", ipc.sysctls);
        for s in &ipc.shm {
            println!(
                "  shm {} key {:#x} size {} {:?} nattch {}{}",
                s.id,
                s.perm.key,
                s.size,
                s.perm,
                s.nattch,
                if s.removed() { " (removed)" } else { "" }
            );
        }
        for s in &ipc.sem {
            println!("  sem {} {:?} values {:?}", s.id, s.perm, s.values);
        }
        for q in &ipc.msg {
            println!(
                "  msg {} {:?} qbytes {} messages (type, bytes) {:?}",
                q.id,
                q.perm,
                q.qbytes,
                q.messages
                    .iter()
                    .map(|m| (m.mtype, m.data.len()))
                    .collect::<Vec<_>>()
            );
        }
        for q in &ipc.mqueues {
            println!(
                "  mqueue /{} uid {} gid {} mode {:#o} maxmsg {} msgsize {} messages (prio, bytes) {:?}",
                q.name,
                q.uid,
                q.gid,
                q.mode,
                q.maxmsg,
                q.msgsize,
                q.messages
                    .iter()
                    .map(|m| (m.prio, m.data.len()))
                    .collect::<Vec<_>>()
            );
        }
    }
    if let Some(t) = &all.tmpfs {
        for m in &t.mounts {
            println!("\n== tmpfs {} ({} entries)", m.mountpoint, m.entries.len());
            for e in &m.entries {
                println!(
                    "  {:?} {:?} mode {:#o} owner {}:{}",
                    e.path, e.kind, e.meta.mode, e.meta.uid, e.meta.gid
                );
            }
        }
    }
    Ok(0)
}

/// One line for an inet socket: protocol, addresses, state and queue sizes.
fn describe_inet(s: &images_format::inet::InetSocket) -> String {
    use images_format::inet::InetState;
    let fam = match s.family {
        images_format::inet::InetFamily::V4 => "IPv4",
        images_format::inet::InetFamily::V6 => "IPv6",
    };
    match &s.state {
        InetState::TcpClosed => format!("TCP/{fam} {} unconnected", s.local),
        InetState::TcpListen { backlog } => {
            format!("TCP/{fam} {} listening, backlog {backlog}", s.local)
        }
        InetState::TcpEstablished(c) => format!(
            "TCP/{fam} {} -> {} established{}: send seq {} ({} bytes queued, {} unsent), receive seq {} ({} bytes queued), mss {}, wscale {:?}, sack {}, timestamps {}",
            s.local,
            c.peer,
            if c.peer_in_tree { " (peer in the tree)" } else { " (peer outside)" },
            c.send_seq,
            c.send_queue.len(),
            c.unsent,
            c.recv_seq,
            c.recv_queue.len(),
            c.mss,
            c.wscale,
            c.sack,
            c.timestamps
        ),
        InetState::Udp { peer, queue } => format!(
            "UDP/{fam} {}{} with {} datagram(s) queued {:?}",
            s.local,
            peer.map(|p| format!(" -> {p}")).unwrap_or_default(),
            queue.len(),
            queue
        ),
    }
}
