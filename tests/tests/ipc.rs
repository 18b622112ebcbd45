//! IPC namespaces: dump the contents of a real, fresh IPC namespace with `cpt::ipc`, restore
//! them into another fresh one with `rst::ipc`, and check every object, id, key, owner, mode,
//! value and message; SysV attachments as the memory dump records them and as the restore
//! re-makes them by remote syscalls; and the errors.
//!
//! The helpers that live in their own IPC namespaces are this very binary run again with
//! `VZCPT_IPC_HELPER` set (the test process itself never leaves its namespace). Every helper
//! is killed when its test ends, however it ends, and its namespace goes with it; the one
//! helper in the host's namespace only holds a segment already removed (`IPC_RMID`), which
//! the kernel destroys when the helper dies.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use images_format::ipc::{IpcImage, SHM_DEST, SHM_LOCKED};
use images_format::mm::{PageOwner, PagemapImage, Vma, VmaKind};
use images_format::{ImageDir, ImageWriter, Inventory};
use libtest_mimic::{Arguments, Failed, Trial};
use sys::ipc as sysipc;

type R<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

// ---------------------------------------------------------------------------------------------
// The objects the creator makes, and how each must look (in the creator after the dump, and in
// the restored namespace).

const PAGE: u64 = 4096;
const SHM_A: i32 = 5 + 3 * 32768; // index 5, sequence 3
const SHM_B: i32 = 7;
const SHM_C: i32 = 9;
const SEM_1: i32 = 3;
const SEM_2: i32 = 4 + 32768;
const MSG_1: i32 = 2 + 32768;
const MSG_2: i32 = 0;

struct Seg {
    id: i32,
    key: i32,
    size: u64,
    mode: u32,
    owner: (u32, u32),
    creator: (u32, u32),
    /// Pages that hold the pattern; the rest is zero.
    pages: Vec<u64>,
    locked: bool,
    removed: bool,
}

fn segs() -> Vec<Seg> {
    vec![
        Seg {
            id: SHM_A,
            key: 0x7a11_0001,
            size: 3 * PAGE + 100,
            mode: 0o640,
            owner: (1234, 5678),
            creator: (0, 0),
            pages: vec![0, 2, 3],
            locked: false,
            removed: false,
        },
        Seg {
            // Spans the 4 MiB chunk boundary of the page store.
            id: SHM_B,
            key: 0,
            size: 6 * 1024 * 1024 + PAGE,
            mode: 0o600,
            owner: (4321, 8765),
            creator: (4321, 8765),
            pages: std::iter::once(0)
                .chain(1000..1100)
                .chain(std::iter::once(1536))
                .collect(),
            locked: true,
            removed: false,
        },
        Seg {
            id: SHM_C,
            key: 0x7a11_0003,
            size: 2 * PAGE,
            mode: 0o666,
            owner: (0, 0),
            creator: (0, 0),
            pages: vec![0, 1],
            locked: false,
            removed: true,
        },
    ]
}

/// The byte at offset `off` of segment `id` where a page holds data.
fn pattern(id: i32, off: u64) -> u8 {
    ((off / 7) as u8) ^ (id as u8).wrapping_mul(31) ^ 0x5a
}

fn expected_contents(s: &Seg) -> Vec<u8> {
    let mut v = vec![0u8; s.size as usize];
    for &p in &s.pages {
        for off in p * PAGE..((p + 1) * PAGE).min(s.size) {
            v[off as usize] = pattern(s.id, off);
        }
    }
    v
}

struct Sem {
    id: i32,
    key: i32,
    mode: u32,
    owner: (u32, u32),
    creator: (u32, u32),
    values: Vec<u16>,
}

fn sems() -> Vec<Sem> {
    vec![
        Sem {
            id: SEM_1,
            key: 0x7a11_0010,
            mode: 0o660,
            owner: (1234, 5678),
            creator: (0, 0),
            values: vec![0, 1, 7, 32767, 2],
        },
        Sem {
            id: SEM_2,
            key: 0,
            mode: 0o600,
            owner: (4321, 8765),
            creator: (4321, 8765),
            values: vec![9],
        },
    ]
}

struct Queue {
    id: i32,
    key: i32,
    mode: u32,
    qbytes: u64,
    messages: Vec<(i64, Vec<u8>)>,
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(13) ^ seed).collect()
}

fn queues() -> Vec<Queue> {
    vec![
        Queue {
            id: MSG_1,
            key: 0x7a11_0020,
            mode: 0o620,
            // Above the namespace's msgmnb (20000): the restore must raise it for a moment.
            qbytes: 30000,
            messages: vec![
                (1, b"first".to_vec()),
                (5, bytes(4000, 1)),
                (2, Vec::new()),
                (5, b"x".to_vec()),
                (3, bytes(8000, 2)),
            ],
        },
        Queue {
            id: MSG_2,
            key: 0,
            mode: 0o600,
            qbytes: 20000,
            messages: Vec::new(),
        },
    ]
}

struct PosixQ {
    name: &'static str,
    mode: u32,
    owner: (u32, u32),
    maxmsg: i64,
    msgsize: i64,
    /// In sending order.
    sent: Vec<(u32, Vec<u8>)>,
    /// In receiving order.
    received: Vec<(u32, Vec<u8>)>,
}

fn posix_queues() -> Vec<PosixQ> {
    vec![
        PosixQ {
            name: "vzq1",
            mode: 0o620,
            owner: (1234, 5678),
            maxmsg: 7,
            msgsize: 256,
            sent: vec![
                (1, b"a".to_vec()),
                (5, b"b".to_vec()),
                (1, b"c".to_vec()),
                (0, Vec::new()),
                (5, bytes(256, 3)),
            ],
            received: vec![
                (5, b"b".to_vec()),
                (5, bytes(256, 3)),
                (1, b"a".to_vec()),
                (1, b"c".to_vec()),
                (0, Vec::new()),
            ],
        },
        PosixQ {
            name: "vzq-empty",
            mode: 0o600,
            owner: (0, 0),
            maxmsg: 10,
            msgsize: 8192,
            sent: Vec::new(),
            received: Vec::new(),
        },
    ]
}

/// Sysctls the creator sets in its namespace: (path, value).
const SYSCTLS: &[(&str, &str)] = &[
    ("kernel/shmmni", "1000"),
    ("kernel/msgmax", "9000"),
    ("kernel/msgmnb", "20000"),
    ("kernel/sem", "250 32000 64 200"),
    ("fs/mqueue/msg_max", "20"),
    ("fs/mqueue/msgsize_max", "9000"),
    ("kernel/shm_rmid_forced", "1"),
];

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name)
}

fn write_sysctl(name: &str, v: &str) -> R<()> {
    std::fs::write(sysctl_path(name), v).map_err(err(name))
}

fn read_sysctl(name: &str) -> R<String> {
    std::fs::read_to_string(sysctl_path(name))
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .map_err(err(name))
}

fn as_user<T>(uid: u32, gid: u32, f: impl FnOnce() -> sys::Result<T>) -> R<T> {
    use nix::unistd::{setresgid, setresuid, Gid, Uid};
    let keep_u = Uid::from_raw(0);
    let keep_g = Gid::from_raw(0);
    setresgid(keep_g, Gid::from_raw(gid), keep_g).map_err(err("setresgid"))?;
    setresuid(keep_u, Uid::from_raw(uid), keep_u).map_err(err("setresuid"))?;
    let r = f();
    setresuid(keep_u, keep_u, keep_u).map_err(err("setresuid back"))?;
    setresgid(keep_g, keep_g, keep_g).map_err(err("setresgid back"))?;
    r.map_err(|e| e.to_string())
}

/// Creates every object (the creator helper, in its fresh namespace). Returns the attachment
/// of the removed segment, which must stay attached for the segment to live.
fn create_all() -> R<sysipc::ShmAttachment> {
    // shm_rmid_forced last: with it set, each detach of an unattached segment destroys it.
    for (name, v) in SYSCTLS {
        if *name != "kernel/msgmnb" && *name != "kernel/shm_rmid_forced" {
            write_sysctl(name, v)?;
        }
    }
    let mut removed = None;
    for s in segs() {
        write_sysctl("kernel/shm_next_id", &s.id.to_string())?;
        let id = as_user(s.creator.0, s.creator.1, || {
            sysipc::shmget(s.key, s.size, sysipc::IPC_CREAT | 0o600)
        })?;
        if id != s.id {
            return Err(format!("segment created with id {id}, not {}", s.id));
        }
        let att = sysipc::ShmAttachment::attach(id, s.size, true).map_err(err("shmat"))?;
        let data = expected_contents(&s);
        for &p in &s.pages {
            let end = ((p + 1) * PAGE).min(s.size);
            att.write_at(p * PAGE, &data[(p * PAGE) as usize..end as usize])
                .map_err(err("fill"))?;
        }
        sysipc::shm_set_perm(id, s.owner.0, s.owner.1, s.mode).map_err(err("IPC_SET"))?;
        if s.locked {
            sysipc::shm_lock(id).map_err(err("SHM_LOCK"))?;
        }
        if s.removed {
            sysipc::shm_remove(id).map_err(err("IPC_RMID"))?;
            removed = Some(att);
        }
    }
    for s in sems() {
        write_sysctl("kernel/sem_next_id", &s.id.to_string())?;
        let id = as_user(s.creator.0, s.creator.1, || {
            sysipc::semget(s.key, s.values.len() as i32, sysipc::IPC_CREAT | 0o600)
        })?;
        if id != s.id {
            return Err(format!("semaphore set created with id {id}, not {}", s.id));
        }
        sysipc::sem_setall(id, &s.values).map_err(err("SETALL"))?;
        sysipc::sem_set_perm(id, s.owner.0, s.owner.1, s.mode).map_err(err("IPC_SET"))?;
    }
    // qbytes above msgmnb needs CAP_SYS_RESOURCE, which the machine does not give: raise
    // msgmnb, set it, lower msgmnb again.
    write_sysctl("kernel/msgmnb", "40000")?;
    for q in queues() {
        write_sysctl("kernel/msg_next_id", &q.id.to_string())?;
        let id = sysipc::msgget(q.key, sysipc::IPC_CREAT | q.mode as i32).map_err(err("msgget"))?;
        if id != q.id {
            return Err(format!("queue created with id {id}, not {}", q.id));
        }
        sysipc::msg_set(id, 0, 0, q.mode, q.qbytes).map_err(err("msgctl(IPC_SET)"))?;
        for (t, d) in &q.messages {
            sysipc::msgsnd(id, *t, d, sysipc::IPC_NOWAIT).map_err(err("msgsnd"))?;
        }
    }
    write_sysctl("kernel/msgmnb", "20000")?;
    write_sysctl("kernel/shm_rmid_forced", "1")?;
    for q in posix_queues() {
        let attr = sysipc::MqAttr::new(q.maxmsg, q.msgsize);
        let fd = sysipc::mq_open(
            q.name,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NONBLOCK,
            0o600,
            Some(&attr),
        )
        .map_err(err("mq_open"))?;
        for (prio, d) in &q.sent {
            sysipc::mq_send(fd.as_fd(), d, *prio).map_err(err("mq_send"))?;
        }
        nix::unistd::fchown(
            &fd,
            Some(nix::unistd::Uid::from_raw(q.owner.0)),
            Some(nix::unistd::Gid::from_raw(q.owner.1)),
        )
        .map_err(err("fchown"))?;
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(q.mode))
            .map_err(err("fchmod"))?;
    }
    removed.ok_or_else(|| "no removed segment".to_string())
}

fn check_perm(
    what: &str,
    p: &sysipc::IpcPerm,
    key: i32,
    owner: (u32, u32),
    creator: (u32, u32),
    mode: u32,
) -> R<()> {
    let got = (p.key, p.uid, p.gid, p.cuid, p.cgid, p.mode);
    let want = (key, owner.0, owner.1, creator.0, creator.1, mode);
    if got != want {
        return Err(format!(
            "{what}: (key, uid, gid, cuid, cgid, mode) is {got:x?}, expected {want:x?}"
        ));
    }
    Ok(())
}

/// Checks every object of the calling thread's namespace. `removed_done`: the removed segment
/// is marked `SHM_DEST` (in the creator, and after `finish_ipc_ns`). `consume_posix`: read the
/// POSIX queues for good (otherwise their messages are put back).
fn verify_all(removed_done: bool, consume_posix: bool) -> R<()> {
    for (name, v) in SYSCTLS {
        let got = read_sysctl(name)?;
        if got != *v {
            return Err(format!("sysctl {name} is {got:?}, expected {v:?}"));
        }
    }
    // Reading a segment attaches it; with shm_rmid_forced the detach would destroy it.
    write_sysctl("kernel/shm_rmid_forced", "0")?;
    let r = verify_objects(removed_done, consume_posix);
    write_sysctl("kernel/shm_rmid_forced", "1")?;
    r
}

fn verify_objects(removed_done: bool, consume_posix: bool) -> R<()> {
    let (_, nshm) = sysipc::shm_info().map_err(err("SHM_INFO"))?;
    let (_, nsem) = sysipc::sem_info().map_err(err("SEM_INFO"))?;
    let (_, nmsg) = sysipc::msg_info().map_err(err("MSG_INFO"))?;
    if (nshm, nsem, nmsg) != (3, 2, 2) {
        return Err(format!(
            "{nshm} segments, {nsem} sets, {nmsg} queues: expected 3, 2, 2"
        ));
    }
    for s in segs() {
        let what = format!("segment {}", s.id);
        let st = sysipc::shm_stat(s.id).map_err(err(&what))?;
        let dest = s.removed && removed_done;
        let mode = s.mode | if s.locked { SHM_LOCKED } else { 0 } | if dest { SHM_DEST } else { 0 };
        // IPC_RMID made the key private at once: the dump saw key 0 already.
        let key = if s.removed { 0 } else { s.key };
        check_perm(&what, &st.perm, key, s.owner, s.creator, mode)?;
        if st.size != s.size {
            return Err(format!("{what}: size {} expected {}", st.size, s.size));
        }
        let att = sysipc::ShmAttachment::attach(s.id, s.size, false).map_err(err(&what))?;
        let mut got = vec![0u8; s.size as usize];
        att.read_at(0, &mut got).map_err(err(&what))?;
        if let Some(i) = got
            .iter()
            .zip(expected_contents(&s))
            .position(|(a, b)| *a != b)
        {
            return Err(format!("{what}: contents differ at offset {i:#x}"));
        }
    }
    for s in sems() {
        let what = format!("semaphore set {}", s.id);
        let st = sysipc::sem_stat(s.id).map_err(err(&what))?;
        check_perm(&what, &st.perm, s.key, s.owner, s.creator, s.mode)?;
        let vals = sysipc::sem_getall(s.id).map_err(err(&what))?;
        if vals != s.values {
            return Err(format!("{what}: values {vals:?}, expected {:?}", s.values));
        }
    }
    for q in queues() {
        let what = format!("queue {}", q.id);
        let st = sysipc::msg_stat(q.id).map_err(err(&what))?;
        check_perm(&what, &st.perm, q.key, (0, 0), (0, 0), q.mode)?;
        if st.qbytes != q.qbytes || st.qnum != q.messages.len() as u64 {
            return Err(format!(
                "{what}: qbytes {} qnum {}, expected {} {}",
                st.qbytes,
                st.qnum,
                q.qbytes,
                q.messages.len()
            ));
        }
        for (i, (t, d)) in q.messages.iter().enumerate() {
            let (gt, gd) = sysipc::msg_copy(q.id, i as u64, 65536).map_err(err(&what))?;
            if gt != *t || gd != *d {
                return Err(format!(
                    "{what}: message {i} is type {gt} ({} bytes), expected type {t} ({} bytes)",
                    gd.len(),
                    d.len()
                ));
            }
        }
    }
    for q in posix_queues() {
        let what = format!("POSIX queue /{}", q.name);
        let fd = sysipc::mq_open(q.name, libc::O_RDWR | libc::O_NONBLOCK, 0, None)
            .map_err(err(&what))?;
        let st = nix::sys::stat::fstat(&fd).map_err(err(&what))?;
        let a = sysipc::mq_getattr(fd.as_fd()).map_err(err(&what))?;
        let got = (
            st.st_uid,
            st.st_gid,
            st.st_mode & 0o7777,
            a.maxmsg,
            a.msgsize,
            a.curmsgs,
        );
        let want = (
            q.owner.0,
            q.owner.1,
            q.mode,
            q.maxmsg,
            q.msgsize,
            q.received.len() as i64,
        );
        if got != want {
            return Err(format!(
                "{what}: (uid, gid, mode, maxmsg, msgsize, curmsgs) {got:?}, expected {want:?}"
            ));
        }
        let mut buf = vec![0u8; q.msgsize as usize];
        let mut msgs = Vec::new();
        while let Ok((n, prio)) = sysipc::mq_receive(fd.as_fd(), &mut buf) {
            msgs.push((prio, buf[..n].to_vec()));
        }
        if !consume_posix {
            for (prio, d) in &msgs {
                sysipc::mq_send(fd.as_fd(), d, *prio).map_err(err(&what))?;
            }
        }
        if msgs != q.received {
            return Err(format!(
                "{what}: messages {msgs:?}, expected {:?}",
                q.received
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helper modes (this binary run again with VZCPT_IPC_HELPER).

fn unshare_ipc() -> R<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC).map_err(err("unshare(CLONE_NEWIPC)"))
}

/// Answers each line of stdin: "check" verifies the namespace; EOF ends.
fn serve(ready: &str, check: impl Fn() -> R<()>) -> i32 {
    println!("ready {ready}");
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "check" {
            match check() {
                Ok(()) => println!("PASS"),
                Err(e) => println!("FAIL {e}"),
            }
            let _ = std::io::stdout().flush();
        }
    }
    0
}

fn helper(mode: &str) -> i32 {
    let r: R<i32> = (|| match mode {
        "create" => {
            unshare_ipc()?;
            let att = create_all()?;
            let removed = segs()
                .into_iter()
                .find(|s| s.removed)
                .map(|s| s.id)
                .unwrap_or(0);
            Ok(serve("", || {
                // The removed segment is still attached here, with its contents.
                let mut b = vec![0u8; 16];
                att.read_at(0, &mut b).map_err(err("read the attachment"))?;
                if b[0] != pattern(removed, 0) {
                    return Err("the attached removed segment lost its contents".into());
                }
                verify_all(true, false)
            }))
        }
        "restore" => {
            let dir = std::env::var("VZCPT_IPC_IMAGE").map_err(err("VZCPT_IPC_IMAGE"))?;
            unshare_ipc()?;
            let dir = ImageDir::open(Path::new(&dir)).map_err(err("open image"))?;
            let img: IpcImage = dir.read().map_err(err("read ipc"))?;
            let pm: PagemapImage = dir.read().map_err(err("read pagemap"))?;
            let store = dir.page_store(&pm.store).map_err(err("page store"))?;
            let mut chunks = rst::memory::ChunkCache::new(&store).map_err(err("chunks"))?;
            rst::ipc::restore_ipc_ns(&img, &pm.entries, &mut chunks)
                .map_err(|e| format!("restore_ipc_ns: {e}"))?;
            verify_all(false, false)?;
            // What a restored process does: attach the removed segment; then finish.
            let c = segs().into_iter().find(|s| s.removed).ok_or("no removed")?;
            let att = sysipc::ShmAttachment::attach(c.id, c.size, true).map_err(err("shmat"))?;
            rst::ipc::finish_ipc_ns(&img).map_err(|e| format!("finish_ipc_ns: {e}"))?;
            verify_all(true, true)?;
            drop(att);
            // Its last detach destroyed it.
            if sysipc::shm_stat(c.id).is_ok() {
                return Err("the removed segment outlived its last detach".into());
            }
            println!("PASS");
            Ok(0)
        }
        "restore-nonempty" => {
            unshare_ipc()?;
            sysipc::semget(0x1234, 1, sysipc::IPC_CREAT | 0o600).map_err(err("semget"))?;
            let img = IpcImage::default();
            match rst::ipc::validate(&img, &[]) {
                Ok(()) => {}
                Err(e) => return Err(format!("an empty record is invalid: {e}")),
            }
            // No page store is needed for an empty record; the emptiness check comes first.
            let e = restore_without_pages(&img)
                .err()
                .ok_or("restore into a non-empty namespace succeeded")?;
            if !e.contains("not empty") {
                return Err(format!("unexpected error: {e}"));
            }
            println!("PASS");
            Ok(0)
        }
        "semundo" => {
            unshare_ipc()?;
            let id = sysipc::semget(0, 1, sysipc::IPC_CREAT | 0o600).map_err(err("semget"))?;
            sysipc::semop_nowait(id, &[(0, 1, 0x1000)]).map_err(err("semop(SEM_UNDO)"))?;
            Ok(serve("", || Ok(())))
        }
        "host-shm" => {
            // In the host's namespace: a private segment, attached, already removed.
            let id =
                sysipc::shmget(0, 2 * PAGE, sysipc::IPC_CREAT | 0o600).map_err(err("shmget"))?;
            let att = sysipc::ShmAttachment::attach(id, 2 * PAGE, true);
            let _ = sysipc::shm_remove(id);
            let att = att.map_err(err("shmat"))?;
            Ok(serve(&format!("{id} {:x}", att.addr()), || Ok(())))
        }
        "attach-target" => {
            unshare_ipc()?;
            write_sysctl("kernel/shm_next_id", "11")?;
            let size = 3 * PAGE + 10;
            let id = sysipc::shmget(0x7a11_0100, size, sysipc::IPC_CREAT | 0o600)
                .map_err(err("shmget"))?;
            {
                let att = sysipc::ShmAttachment::attach(id, size, true).map_err(err("shmat"))?;
                let data: Vec<u8> = (0..size).map(|o| pattern(id, o)).collect();
                att.write_at(0, &data).map_err(err("fill"))?;
            }
            Ok(serve(&id.to_string(), || Ok(())))
        }
        other => Err(format!("unknown helper mode {other}")),
    })();
    match r {
        Ok(code) => code,
        Err(e) => {
            println!("FAIL {e}");
            1
        }
    }
}

fn restore_without_pages(img: &IpcImage) -> R<()> {
    // An empty page store made on the spot, so that a ChunkCache exists.
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let dir = tmp.path().join("img");
    let mut w = ImageWriter::create(&dir).map_err(err("image"))?;
    let store = w.page_store(None).map_err(err("store"))?;
    let index = store.finish().map_err(err("store"))?;
    w.write(&inventory()).map_err(err("inventory"))?;
    w.commit().map_err(err("commit"))?;
    let d = ImageDir::open(&dir).map_err(err("open"))?;
    let reader = d.page_store(&index).map_err(err("reader"))?;
    let mut chunks = rst::memory::ChunkCache::new(&reader).map_err(err("chunks"))?;
    rst::ipc::restore_ipc_ns(img, &[], &mut chunks).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// The harness side.

/// A helper process, killed and reaped on drop.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// What the helper printed after "ready".
    ready: String,
}

impl Helper {
    fn start(mode: &str, env: &[(&str, &str)]) -> R<Helper> {
        let mut cmd = Command::new(std::env::current_exe().map_err(err("current_exe"))?);
        cmd.env("VZCPT_IPC_HELPER", mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(err("spawn helper"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut h = Helper {
            child,
            stdin,
            stdout,
            ready: String::new(),
        };
        let line = h.line()?;
        match line.strip_prefix("ready") {
            Some(rest) => h.ready = rest.trim().to_string(),
            None => return Err(format!("helper {mode}: {line}")),
        }
        Ok(h)
    }

    /// For helpers that print one result and exit.
    fn run(mode: &str, env: &[(&str, &str)]) -> R<()> {
        let mut cmd = Command::new(std::env::current_exe().map_err(err("current_exe"))?);
        cmd.env("VZCPT_IPC_HELPER", mode).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().map_err(err("run helper"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.trim() == "PASS" {
            Ok(())
        } else {
            Err(format!(
                "helper {mode} ({}): {}{}",
                out.status,
                text.trim(),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> R<String> {
        let mut l = String::new();
        self.stdout.read_line(&mut l).map_err(err("read helper"))?;
        if l.is_empty() {
            return Err("the helper ended".into());
        }
        Ok(l.trim_end().to_string())
    }

    fn check(&mut self) -> R<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "check").map_err(err("write helper"))?;
        let l = self.line()?;
        if l == "PASS" {
            Ok(())
        } else {
            Err(l)
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn inventory() -> Inventory {
    Inventory {
        format_major: images_format::FORMAT_MAJOR,
        format_minor: images_format::FORMAT_MINOR,
        engine_version: "test".into(),
        kernel: String::new(),
        arch: std::env::consts::ARCH.into(),
        xsave_features: 0,
        created_unix_ms: 0,
        parent: None,
        root_pid: 0,
        compressed: false,
    }
}

/// Dumps the IPC namespace of `pid` into a new image `dir` (ipc + pagemap + pages).
fn dump_to(pid: i32, dir: &Path, compress: Option<i32>) -> R<IpcImage> {
    let mut writer = ImageWriter::create(dir).map_err(err("image"))?;
    let mut store = writer.page_store(compress).map_err(err("store"))?;
    let (sink, end) = cpt::pagesink::channel(compress.is_none()).map_err(err("sink"))?;
    let (img, stored) = std::thread::scope(|s| {
        let h = s.spawn(|| end.run(&mut store));
        let img = cpt::ipc::dump_ipc_ns(pid, &sink);
        drop(sink);
        (img, h.join())
    });
    let img = img.map_err(|e| format!("dump_ipc_ns: {e}"))?;
    let stored = stored
        .map_err(|_| "page writer panicked".to_string())?
        .map_err(err("page writer"))?;
    let index = store.finish().map_err(err("store"))?;
    writer.write(&inventory()).map_err(err("inventory"))?;
    writer.write(&img).map_err(err("ipc"))?;
    writer
        .write(&PagemapImage {
            store: index,
            entries: stored.entries,
        })
        .map_err(err("pagemap"))?;
    writer.commit().map_err(err("commit"))?;
    Ok(img)
}

fn round_trip(compress: Option<i32>) -> R<()> {
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let dir = tmp.path().join("img");
    let img = {
        let mut creator = Helper::start("create", &[])?;
        creator
            .check()
            .map_err(|e| format!("before the dump: {e}"))?;
        let img = dump_to(creator.pid(), &dir, compress)?;
        // The dump took nothing away: messages, segments and sysctls are as they were.
        creator
            .check()
            .map_err(|e| format!("after the dump: {e}"))?;
        img
    };
    // What the record says, independently of the restore.
    let ids: Vec<i32> = img.shm.iter().map(|s| s.id).collect();
    if ids != [SHM_B, SHM_C, SHM_A] {
        return Err(format!("segments {ids:?}"));
    }
    if !img
        .shm
        .iter()
        .any(|s| s.id == SHM_C && s.removed() && s.nattch == 1)
    {
        return Err("the removed segment is not recorded as removed and attached".into());
    }
    if img.sysctls.shm_rmid_forced != 1 || img.sysctls.msgmnb != 20000 {
        return Err(format!("sysctls {:?}", img.sysctls));
    }
    let dirs = ImageDir::open(&dir).map_err(err("open"))?;
    let pm: PagemapImage = dirs.read().map_err(err("pagemap"))?;
    let pages = |id: i32| -> u64 {
        pm.entries
            .iter()
            .filter(|e| e.owner == PageOwner::SysvShm(id))
            .map(|e| e.nr_pages as u64)
            .sum()
    };
    for s in segs() {
        if pages(s.id) != s.pages.len() as u64 {
            return Err(format!(
                "segment {}: {} pages stored, {} expected (holes and zero pages are left out)",
                s.id,
                pages(s.id),
                s.pages.len()
            ));
        }
    }
    let dir_s = dir.to_string_lossy().into_owned();
    Helper::run("restore", &[("VZCPT_IPC_IMAGE", &dir_s)])
}

fn damaged_record_is_refused() -> R<()> {
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let dir = tmp.path().join("img");
    {
        let creator = Helper::start("create", &[])?;
        dump_to(creator.pid(), &dir, None)?;
    }
    let file = dir.join("ipc");
    let mut bytes = std::fs::read(&file).map_err(err("read"))?;
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&file, &bytes).map_err(err("write"))?;
    let d = ImageDir::open(&dir).map_err(err("open"))?;
    match d.read::<IpcImage>() {
        Ok(_) => Err("a damaged ipc record was accepted".into()),
        Err(e) if e.to_string().contains("checksum") && e.to_string().contains("ipc") => Ok(()),
        Err(e) => Err(format!("unexpected error: {e}")),
    }
}

fn host_namespace_is_refused() -> R<()> {
    let (sink, _end) = cpt::pagesink::channel(true).map_err(err("sink"))?;
    match cpt::ipc::dump_ipc_ns(std::process::id() as i32, &sink) {
        Ok(_) => Err("the host's IPC namespace was dumped".into()),
        Err(e) if e.to_string().contains("host") => Ok(()),
        Err(e) => Err(format!("unexpected error: {e}")),
    }
}

fn sem_undo_list_is_seen() -> R<()> {
    // A reference task with no undo list: freshly exec'd and single-threaded.
    let mut reference = Command::new("sleep")
        .arg("60")
        .spawn()
        .map_err(err("spawn sleep"))?;
    let refpid = reference.id() as i32;
    let r = (|| {
        let with = Helper::start("semundo", &[])?;
        let without = Helper::start("create", &[])?;
        let a = cpt::ipc::has_sem_undo_list(with.pid(), refpid).map_err(|e| e.to_string())?;
        let b = cpt::ipc::has_sem_undo_list(without.pid(), refpid).map_err(|e| e.to_string())?;
        if (a, b) != (true, false) {
            return Err(format!("undo lists seen: after SEM_UNDO {a}, without {b}"));
        }
        Ok(())
    })();
    let _ = reference.kill();
    let _ = reference.wait();
    r
}

/// A tree in the host's IPC namespace mapping SysV memory: the whole dump fails, naming the
/// task and the segment, and the tree runs on.
fn host_attachment_fails_the_dump() -> R<()> {
    let mut h = Helper::start("host-shm", &[])?;
    let shmid = h.ready.split_whitespace().next().unwrap_or("").to_string();
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let opts = cpt::DumpOptions {
        target: cpt::Target::Tree(h.pid()),
        dir: tmp.path().join("img"),
        final_state: cpt::FinalState::LeaveRunning,
        compress: None,
        tcp_established: false,
        sent_pages: None,
        journal: None,
        cow: false,
    };
    match cpt::dump(&opts) {
        Ok(_) => return Err("the dump succeeded".into()),
        Err(e) => {
            let msg = e.to_string();
            let want = [
                format!("task {}", h.pid()),
                format!("segment {shmid}"),
                "host's IPC namespace".to_string(),
            ];
            if let Some(w) = want.iter().find(|w| !msg.contains(w.as_str())) {
                return Err(format!("error {msg:?} does not say {w:?}"));
            }
        }
    }
    if tmp.path().join("img").exists() {
        return Err("a partial image was left".into());
    }
    h.check()
        .map_err(|e| format!("the tree does not run on: {e}"))
}

/// Reads `len` bytes at `addr` of process `pid`.
fn peek(pid: i32, addr: u64, len: usize) -> R<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = nix::sys::uio::process_vm_readv(
        nix::unistd::Pid::from_raw(pid),
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &[nix::sys::uio::RemoteIoVec {
            base: addr as usize,
            len,
        }],
    )
    .map_err(err("process_vm_readv"))?;
    if n != len {
        return Err(format!("read {n} of {len} bytes"));
    }
    Ok(buf)
}

/// The restore's remote attach calls, run in a seized process of a fresh namespace, make the
/// layout asked (a whole attachment split in two protections, and a partial one at an offset),
/// with the segment's contents; and the memory dumper reads that layout back as it was.
fn attach_round_trip() -> R<()> {
    let h = Helper::start("attach-target", &[])?;
    let pid = h.pid();
    let shmid: i32 = h.ready.parse().map_err(err("shmid"))?;
    let size = 3 * PAGE + 10;
    let base1: u64 = 0x5a00_0000_0000;
    let base2: u64 = 0x5b00_0000_0000;
    let vma = |start: u64, end: u64, prot: i32, offset: u64| Vma {
        start,
        end,
        prot: prot as u32,
        flags: libc::MAP_SHARED as u32,
        offset,
        advice: Vec::new(),
        locked: false,
        kind: VmaKind::SysvShm { shmid, size },
    };
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let wanted = vec![
        vma(base1, base1 + PAGE, rw, 0),
        vma(base1 + PAGE, base1 + 4 * PAGE, libc::PROT_READ, PAGE),
        vma(base2 + PAGE, base2 + 3 * PAGE, libc::PROT_READ, PAGE),
    ];
    let calls = rst::memory::sysv_attach_calls(&wanted, &[]).map_err(err("calls"))?;
    let tid = nix::unistd::Pid::from_raw(pid);
    sys::ptrace::seize_and_interrupt(tid).map_err(err("seize"))?;
    let run = || -> R<()> {
        sys::ptrace::wait_for_interrupt_stop(tid).map_err(err("interrupt stop"))?;
        let mut rt = sys::remote::RemoteTask::at_rip(tid).map_err(err("remote"))?;
        let r = rt
            .map_scratch(16 * PAGE)
            .map_err(err("scratch"))
            .and_then(|_| rt.batch(&calls).map(drop).map_err(err("attach batch")));
        rt.finish().map_err(err("finish"))?;
        r
    };
    let r = run();
    let _ = sys::ptrace::detach(tid, None);
    r?;

    // The layout, as /proc/PID/maps shows it.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(err("maps"))?;
    let sysv: Vec<String> = maps
        .lines()
        .filter(|l| l.contains("/SYSV"))
        .map(|l| l.split_whitespace().take(5).collect::<Vec<_>>().join(" "))
        .collect();
    let line = |s: u64, e: u64, p: &str, off: u64| {
        let dev = sysv
            .first()
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap_or("?")
            .to_string();
        format!("{s:x}-{e:x} {p} {off:08x} {dev} {shmid}")
    };
    let want = vec![
        line(base1, base1 + PAGE, "rw-s", 0),
        line(base1 + PAGE, base1 + 4 * PAGE, "r--s", PAGE),
        line(base2 + PAGE, base2 + 3 * PAGE, "r--s", PAGE),
    ];
    if sysv != want {
        return Err(format!("SysV areas {sysv:#?}, expected {want:#?}"));
    }
    // The contents, through each area.
    for v in &wanted {
        let got = peek(pid, v.start, (v.end - v.start) as usize)?;
        for (i, b) in got.iter().enumerate() {
            let off = v.offset + i as u64;
            let want = if off < size { pattern(shmid, off) } else { 0 };
            if *b != want {
                return Err(format!(
                    "area {:#x}: byte {i} is {b}, expected {want}",
                    v.start
                ));
            }
        }
    }

    // The memory dumper records the same areas as SysvShm, with no pages of their own...
    let (sink, end) = cpt::pagesink::channel(true).map_err(err("sink"))?;
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let mut writer = ImageWriter::create(&tmp.path().join("img")).map_err(err("image"))?;
    let mut store = writer.page_store(None).map_err(err("store"))?;
    let ns = cpt::ipc::ipc_ns_id(pid).map_err(err("ns"))?;
    let (dumped, not_dumped, stored) = std::thread::scope(|s| {
        let w = s.spawn(|| end.run(&mut store));
        let mut mem = cpt::memory::MemDumper::new(&sink);
        let not_dumped = mem.dump_process(pid, pid, 0).map(drop);
        mem.sysv_ipc_ns = Some(ns);
        let dumped = mem.dump_process(pid, pid, 0);
        drop(mem);
        drop(sink);
        (dumped, not_dumped, w.join())
    });
    let dumped = dumped.map_err(err("dump_process"))?;
    let stored = stored
        .map_err(|_| "page writer panicked".to_string())?
        .map_err(err("page writer"))?;
    let got: Vec<&Vma> = dumped
        .vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::SysvShm { .. }))
        .collect();
    let same = got.len() == wanted.len()
        && got.iter().zip(&wanted).all(|(g, w)| {
            (
                g.start,
                g.end,
                g.prot,
                g.offset,
                &g.kind,
                g.flags & libc::MAP_SHARED as u32,
            ) == (
                w.start,
                w.end,
                w.prot,
                w.offset,
                &w.kind,
                libc::MAP_SHARED as u32,
            )
        });
    if !same {
        return Err(format!("dumped SysV areas {got:#?}, expected {wanted:#?}"));
    }
    if let Some(e) = stored.entries.iter().find(|e| {
        wanted
            .iter()
            .any(|v| e.addr < v.end && e.addr + e.nr_pages as u64 * PAGE > v.start)
    }) {
        return Err(format!(
            "pages of a SysV area were stored per process: {e:?}"
        ));
    }
    // ...and without the namespace being dumped, refuses them, naming the segment.
    match not_dumped {
        Ok(()) => Err("SysV areas were dumped without their IPC namespace".into()),
        Err(e)
            if e.to_string().contains(&format!("segment {shmid}"))
                && e.to_string().contains("not dumped") =>
        {
            Ok(())
        }
        Err(e) => Err(format!("unexpected error: {e}")),
    }
}

fn main() {
    if let Ok(mode) = std::env::var("VZCPT_IPC_HELPER") {
        std::process::exit(helper(&mode));
    }
    let args = Arguments::from_args();
    let root = nix::unistd::geteuid().is_root();
    type Test = fn() -> R<()>;
    let tests: Vec<(&str, Test)> = vec![
        ("ipc_ns_round_trip", || round_trip(None)),
        ("ipc_ns_round_trip_compressed", || round_trip(Some(3))),
        ("damaged_ipc_record_is_refused", damaged_record_is_refused),
        ("restore_refuses_a_non_empty_namespace", || {
            Helper::run("restore-nonempty", &[])
        }),
        ("dump_refuses_the_host_namespace", host_namespace_is_refused),
        ("sem_undo_list_is_seen", sem_undo_list_is_seen),
        (
            "host_sysv_attachment_fails_the_dump",
            host_attachment_fails_the_dump,
        ),
        ("sysv_attachments_dump_and_reattach", attach_round_trip),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            Trial::test(name, move || {
                if !root {
                    return Err(Failed::from("skipped: needs root (namespaces, ptrace)"));
                }
                f().map_err(Failed::from)
            })
            .with_ignored_flag(!root)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
