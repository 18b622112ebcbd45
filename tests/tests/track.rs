//! Written-page tracking for live migration (`cpt::track`) on real processes: a small C program
//! (compiled from the source below when the tests start) in a cgroup v2 of its own, driven
//! through a pipe, maps areas and writes pages on command. The tracker is armed on its
//! cgroup; each round's pages are checked against what the program wrote and against
//! `/proc/PID/mem`; the final dump with `sent_pages` must leave to the parent exactly the
//! pages sent and not written since, and `vzcpt restore` refuses that image.
//!
//! Every trial's cgroup is killed and removed when the trial ends, however it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cpt::track::{RoundStats, Tracker};
use images_format::mm::{PageOwner, PagemapImage, ParentPagesImage};
use images_format::ImageDir;
use libtest_mimic::{Arguments, Failed, Trial};

type R<T> = Result<T, String>;
/// Pages by (PID, address).
type Pages = BTreeSet<(i32, u64)>;

const PAGE: u64 = 4096;
const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";

/// The program under tracking. Commands on stdin, one answer line each on stdout:
/// - `w ADDR GEN P...`: fill pages P of the area at ADDR with pattern GEN;
/// - `m PAGES GEN`: map a new area (between two PROT_NONE guard pages, so it never merges
///   with a neighbour), fill it, answer its address;
/// - `s PAGES GEN`: the same, filling only its first and last pages;
/// - `u ADDR PAGES`: unmap an area;
/// - `r ADDR PAGES GEN`: map a new area over an old one (`MAP_FIXED`, same bounds), fill it;
/// - `e`: exec itself again (a new address space: it answers with its new buffer);
/// - `f PAGES GEN`: fork a child that maps and fills an area of its own and waits for ever;
///   answer its PID and the area's address.
///
/// At start it maps a 256-page buffer filled with pattern 1 and prints its address.
const HELPER_C: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define PG 4096L

static void fill(char *p, long page, long gen) {
    for (long j = 0; j < PG; j++) p[j] = (char)((page * 131 + gen * 17 + j * 7) & 0xff);
}
static void fill_all(char *a, long pages, long gen) {
    for (long i = 0; i < pages; i++) fill(a + i * PG, i, gen);
}
static char *area(long pages) {
    char *p = mmap(NULL, (pages + 2) * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    if (mprotect(p + PG, pages * PG, PROT_READ | PROT_WRITE)) { perror("mprotect"); exit(1); }
    return p + PG;
}
static int read_line(char *l, int n) {
    int i = 0;
    while (i < n - 1) {
        char c;
        if (read(0, &c, 1) != 1) return -1;
        if (c == '\n') break;
        l[i++] = c;
    }
    l[i] = 0;
    return i;
}
int main(void) {
    char *buf = area(256);
    fill_all(buf, 256, 1);
    dprintf(1, "buf %lx\n", (unsigned long)buf);
    char l[4096];
    while (read_line(l, sizeof l) >= 0) {
        unsigned long addr; long pages, gen;
        if (l[0] == 'w') {
            char *s = l + 2, *e;
            addr = strtoul(s, &e, 16); s = e;
            gen = strtol(s, &e, 10); s = e;
            for (;;) {
                long p = strtol(s, &e, 10);
                if (e == s) break;
                fill((char *)addr + p * PG, p, gen);
                s = e;
            }
            dprintf(1, "ok\n");
        } else if (l[0] == 'm' && sscanf(l + 2, "%ld %ld", &pages, &gen) == 2) {
            char *a = area(pages);
            fill_all(a, pages, gen);
            dprintf(1, "map %lx\n", (unsigned long)a);
        } else if (l[0] == 's' && sscanf(l + 2, "%ld %ld", &pages, &gen) == 2) {
            char *a = area(pages);
            fill(a, 0, gen);
            fill(a + (pages - 1) * PG, pages - 1, gen);
            dprintf(1, "map %lx\n", (unsigned long)a);
        } else if (l[0] == 'u' && sscanf(l + 2, "%lx %ld", &addr, &pages) == 2) {
            if (munmap((void *)addr, pages * PG)) { perror("munmap"); exit(1); }
            dprintf(1, "ok\n");
        } else if (l[0] == 'r' && sscanf(l + 2, "%lx %ld %ld", &addr, &pages, &gen) == 3) {
            char *a = mmap((void *)addr, pages * PG, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (a == MAP_FAILED) { perror("mmap fixed"); exit(1); }
            fill_all(a, pages, gen);
            dprintf(1, "ok\n");
        } else if (l[0] == 'e') {
            execl("/proc/self/exe", "track_helper", (char *)NULL);
            perror("exec");
            exit(1);
        } else if (l[0] == 'f' && sscanf(l + 2, "%ld %ld", &pages, &gen) == 2) {
            int p[2];
            if (pipe(p)) { perror("pipe"); exit(1); }
            pid_t c = fork();
            if (c < 0) { perror("fork"); exit(1); }
            if (c == 0) {
                char *a = area(pages);
                fill_all(a, pages, gen);
                unsigned long v = (unsigned long)a;
                if (write(p[1], &v, sizeof v) != sizeof v) _exit(1);
                for (;;) pause();
            }
            unsigned long v = 0;
            if (read(p[0], &v, sizeof v) != sizeof v) { perror("read"); exit(1); }
            close(p[0]); close(p[1]);
            dprintf(1, "child %d %lx\n", (int)c, v);
        } else {
            dprintf(1, "bad command %s\n", l);
        }
    }
    return 0;
}
"#;

static HELPER: OnceLock<PathBuf> = OnceLock::new();

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Byte `j` of page `page` of an area filled with pattern `gen` (as the C program fills it).
fn pattern(page: u64, gen: u64) -> Vec<u8> {
    (0..PAGE)
        .map(|j| ((page * 131 + gen * 17 + j * 7) & 0xff) as u8)
        .collect()
}

/// The C program, in a cgroup v2 of its own. Dropping it kills the cgroup and removes it.
struct Helper {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    cgroup: PathBuf,
    buf: u64,
    host_pid: i32,
}

impl Helper {
    fn start(name: &str) -> R<Helper> {
        Self::start_with(name, false)
    }

    /// With `pidns`, the program is the init of a PID namespace of its own (as a VE's init
    /// is), alone in its cgroup: `unshare` stays outside it.
    fn start_with(name: &str, pidns: bool) -> R<Helper> {
        let cgroup =
            Path::new(CGROUP_ROOT).join(format!("vzt-track-{name}-{}", std::process::id()));
        std::fs::create_dir(&cgroup).map_err(err("create the cgroup"))?;
        let helper = HELPER.get().ok_or("the helper program was not built")?;
        let mut cmd = if pidns {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child", "sh", "-c"])
                .arg(r#"echo 0 > "$0/cgroup.procs" && exec "$1""#)
                .arg(&cgroup)
                .arg(helper);
            c
        } else {
            Command::new(helper)
        };
        let mut child = match cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir(&cgroup);
                return Err(format!("start the helper: {e}"));
            }
        };
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir(&cgroup);
            return Err("no pipes to the helper".into());
        };
        let host_pid = child.id() as i32;
        let mut h = Helper {
            child,
            stdin,
            out: BufReader::new(stdout),
            cgroup,
            buf: 0,
            host_pid,
        };
        if !pidns {
            std::fs::write(h.cgroup.join("cgroup.procs"), h.host_pid.to_string())
                .map_err(err("move the helper into its cgroup"))?;
        }
        let line = h.line()?;
        h.buf = hex_field(&line, "buf", 1)?;
        if pidns {
            let procs = std::fs::read_to_string(h.cgroup.join("cgroup.procs"))
                .map_err(err("read cgroup.procs"))?;
            h.host_pid = procs
                .trim()
                .parse()
                .map_err(|_| format!("cgroup.procs of the namespace: {procs:?}"))?;
        }
        wait_in_syscall(h.host_pid, libc::SYS_read)?;
        Ok(h)
    }

    /// The program's PID on the host.
    fn pid(&self) -> i32 {
        self.host_pid
    }

    fn line(&mut self) -> R<String> {
        let mut l = String::new();
        self.out
            .read_line(&mut l)
            .map_err(err("read from the helper"))?;
        if l.is_empty() {
            return Err("the helper ended".into());
        }
        Ok(l.trim().to_string())
    }

    /// Sends a command and returns the answer once the program waits for the next one.
    fn cmd(&mut self, c: &str) -> R<String> {
        writeln!(self.stdin, "{c}").map_err(err("write to the helper"))?;
        let l = self.line()?;
        if l.starts_with("bad") {
            return Err(format!("helper: {l}"));
        }
        wait_in_syscall(self.host_pid, libc::SYS_read)?;
        Ok(l)
    }

    /// `w`: fills pages of the area at `addr` with pattern `gen`.
    fn write(&mut self, addr: u64, gen: u64, pages: &[u64]) -> R<()> {
        let list: Vec<String> = pages.iter().map(|p| p.to_string()).collect();
        self.cmd(&format!("w {addr:x} {gen} {}", list.join(" ")))
            .map(drop)
    }

    fn map(&mut self, pages: u64, gen: u64) -> R<u64> {
        let l = self.cmd(&format!("m {pages} {gen}"))?;
        hex_field(&l, "map", 1)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.cgroup).is_err() && Instant::now() < deadline {
            let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until `pid` sleeps in syscall `nr` (`/proc/PID/syscall`): an answer is written
/// before the program is back in `read`, and the checks need it idle.
fn wait_in_syscall(pid: i32, nr: i64) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = format!("{nr} ");
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let sleeping = state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('S'));
        if now.starts_with(&want) && sleeping {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "task {pid} is not waiting in syscall {nr}: {now:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn hex_field(line: &str, tag: &str, i: usize) -> R<u64> {
    let mut f = line.split_whitespace();
    if f.next() != Some(tag) {
        return Err(format!("helper said {line:?}, expected {tag}"));
    }
    f.nth(i - 1)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| format!("cannot parse {line:?}"))
}

/// What one round emitted, page by page: (owner PID, address) -> bytes.
#[derive(Default)]
struct Emitted {
    pages: BTreeMap<(i32, u64), Vec<u8>>,
    problems: Vec<String>,
}

impl Emitted {
    fn add(&mut self, owner: PageOwner, addr: u64, bytes: &[u8]) {
        let PageOwner::Process(pid) = owner else {
            self.problems
                .push(format!("owner {owner:?} is not a process"));
            return;
        };
        if bytes.is_empty()
            || !bytes.len().is_multiple_of(PAGE as usize)
            || bytes.len() > 1024 * 4096
        {
            self.problems.push(format!(
                "{} bytes at {addr:#x}: not 1 to 1024 pages",
                bytes.len()
            ));
        }
        for (i, page) in bytes.chunks(PAGE as usize).enumerate() {
            let a = addr + i as u64 * PAGE;
            if self.pages.insert((pid, a), page.to_vec()).is_some() {
                self.problems
                    .push(format!("page {a:#x} of {pid} emitted twice"));
            }
        }
    }

    /// Page numbers of `[start, start + pages * PAGE)` of `pid` that were emitted.
    fn in_area(&self, pid: i32, start: u64, pages: u64) -> BTreeSet<u64> {
        self.pages
            .range((pid, start)..(pid, start + pages * PAGE))
            .map(|((_, a), _)| (a - start) / PAGE)
            .collect()
    }

    /// Every page emitted holds what `/proc/PID/mem` shows now (the program is idle).
    fn check_against_mem(&self) -> R<()> {
        self.check_against_mem_of(&[])
    }

    /// The same, the owners found in `host` ((PID in the VE, PID on the host)) translated.
    fn check_against_mem_of(&self, host: &[(i32, i32)]) -> R<()> {
        if let Some(p) = self.problems.first() {
            return Err(p.clone());
        }
        let mut files: BTreeMap<i32, File> = BTreeMap::new();
        for ((pid, addr), bytes) in &self.pages {
            if !files.contains_key(pid) {
                let hp = host
                    .iter()
                    .find(|(v, _)| v == pid)
                    .map_or(*pid, |&(_, h)| h);
                let f = File::open(format!("/proc/{hp}/mem")).map_err(err("open mem"))?;
                files.insert(*pid, f);
            }
            let mut now = vec![0u8; PAGE as usize];
            files[pid]
                .read_exact_at(&mut now, *addr)
                .map_err(err("read /proc/PID/mem"))?;
            if &now != bytes {
                return Err(format!(
                    "page {addr:#x} of {pid}: emitted bytes differ from /proc/{pid}/mem"
                ));
            }
        }
        Ok(())
    }

    /// Pages `expect` of the area at `start` were emitted, with pattern `gen`.
    fn check_pattern(&self, pid: i32, start: u64, expect: &[u64], gen: u64) -> R<()> {
        for &p in expect {
            match self.pages.get(&(pid, start + p * PAGE)) {
                None => return Err(format!("page {p} of the area at {start:#x} not emitted")),
                Some(b) if *b != pattern(p, gen) => {
                    return Err(format!(
                        "page {p} of the area at {start:#x}: not the contents written ({gen})"
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Arms the program's cgroup and waits until the program, resumed, is back in `read` (leaving
/// the seize, it returns to user space a moment, where the kernel may update its rseq area:
/// a write like any other, but not one a check of an idle program expects).
fn arm(h: &Helper) -> R<Tracker> {
    let t = Tracker::arm(&h.cgroup).map_err(|e| format!("arm: {}", chain(&e)))?;
    wait_in_syscall(h.pid(), libc::SYS_read)?;
    Ok(t)
}

fn round(t: &mut Tracker) -> R<(RoundStats, Emitted)> {
    let mut got = Emitted::default();
    let stats = t
        .round(&mut |o, a, b| {
            got.add(o, a, b);
            Ok(())
        })
        .map_err(|e| format!("round: {}", chain(&e)))?;
    if stats.pages != got.pages.len() as u64 || stats.bytes != stats.pages * PAGE {
        return Err(format!(
            "round stats {stats:?} do not match the {} pages emitted",
            got.pages.len()
        ));
    }
    Ok((stats, got))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn expect_set(what: &str, got: &BTreeSet<u64>, want: &[u64]) -> R<()> {
    let want: BTreeSet<u64> = want.iter().copied().collect();
    if *got != want {
        return Err(format!("{what}: got pages {got:?}, expected {want:?}"));
    }
    Ok(())
}

/// Dumps the helper's cgroup with what the tracker sent, leaving it running; returns the
/// image's parent runs by (pid, page address), and its stored pages the same way.
fn final_dump(h: &Helper, t: &Tracker, dir: &Path) -> R<(Pages, Pages, cpt::DumpStats)> {
    let opts = cpt::DumpOptions {
        target: cpt::Target::Cgroup(h.cgroup.clone()),
        dir: dir.to_path_buf(),
        final_state: cpt::FinalState::LeaveRunning,
        compress: None,
        tcp_established: false,
        sent_pages: Some(t.sent()),
        journal: None,
        cow: false,
    };
    let stats = cpt::dump(&opts).map_err(|e| format!("final dump: {}", chain(&e)))?;
    let d = ImageDir::open(dir).map_err(err("open the image"))?;
    let parent: ParentPagesImage = d.read().map_err(err("read parent-pages"))?;
    if parent.parent != "staged" {
        return Err(format!("parent-pages names {:?}", parent.parent));
    }
    let mut held = BTreeSet::new();
    for r in &parent.runs {
        let PageOwner::Process(pid) = r.owner else {
            return Err(format!("parent run of {:?}", r.owner));
        };
        for i in 0..r.nr_pages as u64 {
            if !held.insert((pid, r.addr + i * PAGE)) {
                return Err(format!("page {:#x} in two parent runs", r.addr + i * PAGE));
            }
        }
    }
    let pm: PagemapImage = d.read().map_err(err("read pagemap"))?;
    let mut stored = BTreeSet::new();
    for e in &pm.entries {
        if let PageOwner::Process(pid) = e.owner {
            for i in 0..e.nr_pages as u64 {
                stored.insert((pid, e.addr + i * PAGE));
            }
        }
    }
    if let Some(p) = held.intersection(&stored).next() {
        return Err(format!("page {p:?} both stored and left to the parent"));
    }
    if stats.pages_in_parent != held.len() as u64 {
        return Err(format!(
            "stats say {} pages in the parent, the record has {}",
            stats.pages_in_parent,
            held.len()
        ));
    }
    Ok((held, stored, stats))
}

fn area_pages(set: &Pages, pid: i32, start: u64, pages: u64) -> BTreeSet<u64> {
    set.range((pid, start)..(pid, start + pages * PAGE))
        .map(|(_, a)| (a - start) / PAGE)
        .collect()
}

/// The main scenario of the brief: rounds, pending pages, the final dump and its refusal.
fn rounds_and_final_dump() -> R<()> {
    let mut h = Helper::start("rounds")?;
    let pid = h.pid();
    let buf = h.buf;
    // 8 MiB mapped, two pages used: every other page gets a write-protect marker.
    let sparse = h.cmd("s 2048 7").and_then(|l| hex_field(&l, "map", 1))?;
    let mut t = arm(&h)?;

    let (s1, got) = round(&mut t)?;
    got.check_against_mem()?;
    let all: Vec<u64> = (0..256).collect();
    got.check_pattern(pid, buf, &all, 1)?;
    expect_set(
        "first round, sparse area",
        &got.in_area(pid, sparse, 2048),
        &[0, 2047],
    )?;
    got.check_pattern(pid, sparse, &[0, 2047], 7)?;
    if s1.processes != 1 || s1.areas_new == 0 {
        return Err(format!("first round: {s1:?}"));
    }
    // The program is idle: every present page of its anonymous areas was sent, so nothing
    // is pending.
    let idle = t.pending_pages().map_err(|e| chain(&e))?;
    if idle != 0 {
        return Err(format!("{idle} pages pending right after the first round"));
    }

    h.write(buf, 2, &[3, 77, 200])?;
    let new = h.map(16, 5)?;
    let pending = t.pending_pages().map_err(|e| chain(&e))?;
    let (s2, got) = round(&mut t)?;
    got.check_against_mem()?;
    expect_set(
        "second round, buffer",
        &got.in_area(pid, buf, 256),
        &[3, 77, 200],
    )?;
    got.check_pattern(pid, buf, &[3, 77, 200], 2)?;
    let new_all: Vec<u64> = (0..16).collect();
    expect_set(
        "second round, new area",
        &got.in_area(pid, new, 16),
        &new_all,
    )?;
    got.check_pattern(pid, new, &new_all, 5)?;
    if pending != s2.pages {
        return Err(format!(
            "pending_pages said {pending}, the round sent {}",
            s2.pages
        ));
    }
    if s2.areas_new == 0 {
        return Err(format!("second round registered no new area: {s2:?}"));
    }

    let (s3, got) = round(&mut t)?;
    expect_set("idle round, buffer", &got.in_area(pid, buf, 256), &[])?;
    expect_set("idle round, new area", &got.in_area(pid, new, 16), &[])?;
    if s3.areas_new != 0 {
        return Err(format!("idle round registered areas: {s3:?}"));
    }

    // Written after the last round: stored by the final dump, the rest left to the parent.
    h.write(buf, 3, &[5, 6, 255])?;
    h.write(new, 6, &[0])?;
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let img = tmp.path().join("img");
    let (held, stored, stats) = final_dump(&h, &t, &img)?;
    expect_set(
        "parent runs, sparse area",
        &area_pages(&held, pid, sparse, 2048),
        &[0, 2047],
    )?;
    // The markers hold nothing: not read (they would come back as zero pages).
    if stats.zero_pages_skipped > 256 {
        return Err(format!(
            "the final dump read {} zero pages: write-protect markers taken for pages",
            stats.zero_pages_skipped
        ));
    }
    let buf_held: Vec<u64> = (0..256).filter(|p| ![5, 6, 255].contains(p)).collect();
    expect_set(
        "parent runs, buffer",
        &area_pages(&held, pid, buf, 256),
        &buf_held,
    )?;
    expect_set(
        "stored, buffer",
        &area_pages(&stored, pid, buf, 256),
        &[5, 6, 255],
    )?;
    expect_set(
        "parent runs, new area",
        &area_pages(&held, pid, new, 16),
        &new_all[1..],
    )?;
    expect_set("stored, new area", &area_pages(&stored, pid, new, 16), &[0])?;

    // Such an image needs its parent: vzcpt restore refuses it, naming the record.
    let vzcpt = tests::paths::vzcpt().map_err(err("vzcpt"))?;
    let out = Command::new(vzcpt)
        .args(["restore", "--detach", "-D"])
        .arg(&img)
        .output()
        .map_err(err("run vzcpt restore"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("parent-pages") {
        return Err(format!(
            "vzcpt restore of an incremental image: {}, {stderr}",
            out.status
        ));
    }
    // The program was left running and still answers.
    h.write(buf, 4, &[1])?;
    drop(t);
    Ok(())
}

/// A process forked after arming is armed at the next round and its pages sent and tracked.
fn fork_after_arming() -> R<()> {
    let mut h = Helper::start("fork")?;
    let mut t = arm(&h)?;
    round(&mut t)?;
    let l = h.cmd("f 8 9")?;
    let mut f = l.split_whitespace();
    let (Some("child"), Some(cpid), Some(addr)) = (f.next(), f.next(), f.next()) else {
        return Err(format!("helper said {l:?}"));
    };
    let cpid: i32 = cpid.parse().map_err(err("child pid"))?;
    let addr = u64::from_str_radix(addr, 16).map_err(err("child area"))?;
    wait_in_syscall(cpid, libc::SYS_pause)?;
    let pending = t.pending_pages().map_err(|e| chain(&e))?;
    if pending < 8 + 256 {
        return Err(format!("{pending} pages pending with a new child"));
    }
    let (s2, got) = round(&mut t)?;
    got.check_against_mem()?;
    if s2.processes != 2 || !t.tracked_pids().contains(&cpid) {
        return Err(format!("the child is not tracked: {s2:?}"));
    }
    let eight: Vec<u64> = (0..8).collect();
    got.check_pattern(cpid, addr, &eight, 9)?;
    // Its copy of the parent's buffer too.
    let all: Vec<u64> = (0..256).collect();
    got.check_pattern(cpid, h.buf, &all, 1)?;
    let (_, got) = round(&mut t)?;
    expect_set("idle round, child area", &got.in_area(cpid, addr, 8), &[])?;
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let (held, _, _) = final_dump(&h, &t, &tmp.path().join("img"))?;
    expect_set(
        "parent runs, child area",
        &area_pages(&held, cpid, addr, 8),
        &eight,
    )?;
    expect_set(
        "parent runs, child buffer",
        &area_pages(&held, cpid, h.buf, 256),
        &all,
    )?;
    Ok(())
}

/// An area unmapped is forgotten; an area mapped anew over a tracked one (same bounds) is
/// sent whole again, and the final dump trusts only what was sent after that.
fn unmapped_and_remapped_areas() -> R<()> {
    let mut h = Helper::start("unmap")?;
    let pid = h.pid();
    let a = h.map(32, 1)?;
    let b = h.map(16, 2)?;
    let mut t = arm(&h)?;
    let (_, got) = round(&mut t)?;
    got.check_pattern(pid, a, &(0..32).collect::<Vec<_>>(), 1)?;
    got.check_pattern(pid, b, &(0..16).collect::<Vec<_>>(), 2)?;
    h.cmd(&format!("u {a:x} 32"))?;
    h.cmd(&format!("r {b:x} 16 3"))?;
    let pending = t.pending_pages().map_err(|e| chain(&e))?;
    let (s2, got) = round(&mut t)?;
    got.check_against_mem()?;
    expect_set("after munmap", &got.in_area(pid, a, 32), &[])?;
    let sixteen: Vec<u64> = (0..16).collect();
    expect_set("area mapped anew", &got.in_area(pid, b, 16), &sixteen)?;
    got.check_pattern(pid, b, &sixteen, 3)?;
    if pending != s2.pages {
        return Err(format!(
            "pending_pages said {pending}, the round sent {}",
            s2.pages
        ));
    }
    let sent = t.sent();
    let areas: Vec<(u64, u64)> = sent
        .processes
        .iter()
        .filter(|p| p.host_pid == pid)
        .flat_map(|p| p.areas.iter().map(|x| (x.start, x.end)))
        .collect();
    if areas.iter().any(|&(s, e)| s < a + 32 * PAGE && a < e) {
        return Err(format!("the unmapped area is still listed: {areas:x?}"));
    }
    if !areas.contains(&(b, b + 16 * PAGE)) {
        return Err(format!("the remapped area is not listed: {areas:x?}"));
    }
    // Mapped anew once more after the last round: nothing of it may come from the parent.
    h.cmd(&format!("r {b:x} 16 4"))?;
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let (held, stored, _) = final_dump(&h, &t, &tmp.path().join("img"))?;
    expect_set(
        "parent runs, unmapped area",
        &area_pages(&held, pid, a, 32),
        &[],
    )?;
    expect_set(
        "parent runs, remapped area",
        &area_pages(&held, pid, b, 16),
        &[],
    )?;
    expect_set(
        "stored, remapped area",
        &area_pages(&stored, pid, b, 16),
        &sixteen,
    )?;
    Ok(())
}

/// A process that execs gets a new address space, which its userfaultfd does not track: it
/// is armed again, and its new memory sent whole.
fn exec_after_arming() -> R<()> {
    let mut h = Helper::start("exec")?;
    let pid = h.pid();
    let mut t = arm(&h)?;
    round(&mut t)?;
    let l = h.cmd("e")?;
    let buf = hex_field(&l, "buf", 1)?;
    let all: Vec<u64> = (0..256).collect();
    // Sent by the round that finds the old address space gone, or by the next one, which
    // arms the process again.
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let (_, got) = round(&mut t)?;
        got.check_against_mem()?;
        let pages = got.in_area(pid, buf, 256);
        if !pages.is_empty() {
            got.check_pattern(pid, buf, &all, 1)?;
        }
        seen.extend(pages);
    }
    expect_set("new buffer after exec", &seen, &all)?;
    if t.tracked_pids() != vec![pid] {
        return Err(format!("tracked after exec: {:?}", t.tracked_pids()));
    }
    let (_, got) = round(&mut t)?;
    expect_set("idle round after exec", &got.in_area(pid, buf, 256), &[])?;
    h.write(buf, 2, &[9])?;
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let (held, stored, _) = final_dump(&h, &t, &tmp.path().join("img"))?;
    let held_want: Vec<u64> = (0..256).filter(|&p| p != 9).collect();
    expect_set(
        "parent runs after exec",
        &area_pages(&held, pid, buf, 256),
        &held_want,
    )?;
    expect_set(
        "stored after exec",
        &area_pages(&stored, pid, buf, 256),
        &[9],
    )?;
    Ok(())
}

/// The init of a PID namespace (a VE's init): pages are emitted and left to the parent under
/// its PID in the namespace, as the image records it.
fn pid_namespace_init() -> R<()> {
    let mut h = Helper::start_with("pidns", true)?;
    let host = h.pid();
    let buf = h.buf;
    let mut t = arm(&h)?;
    let (_, got) = round(&mut t)?;
    if let Some((p, _)) = got.pages.keys().find(|(p, _)| *p != 1) {
        return Err(format!(
            "a page emitted for PID {p}, not 1 (host PID {host})"
        ));
    }
    got.check_against_mem_of(&[(1, host)])?;
    let all: Vec<u64> = (0..256).collect();
    got.check_pattern(1, buf, &all, 1)?;
    if t.tracked_pids() != vec![host] {
        return Err(format!("tracked: {:?}, expected {host}", t.tracked_pids()));
    }
    h.write(buf, 2, &[10])?;
    let tmp = tempfile::tempdir().map_err(err("tempdir"))?;
    let (held, stored, _) = final_dump(&h, &t, &tmp.path().join("img"))?;
    let held_want: Vec<u64> = (0..256).filter(|&p| p != 10).collect();
    expect_set(
        "parent runs of PID 1",
        &area_pages(&held, 1, buf, 256),
        &held_want,
    )?;
    expect_set(
        "stored pages of PID 1",
        &area_pages(&stored, 1, buf, 256),
        &[10],
    )?;
    Ok(())
}

/// Nothing to arm: an error naming the cgroup, and nothing left behind.
fn arm_refuses_an_empty_cgroup() -> R<()> {
    let cg = Path::new(CGROUP_ROOT).join(format!("vzt-track-empty-{}", std::process::id()));
    std::fs::create_dir(&cg).map_err(err("create the cgroup"))?;
    let r = Tracker::arm(&cg);
    let frozen = std::fs::read_to_string(cg.join("cgroup.events")).unwrap_or_default();
    let _ = std::fs::remove_dir(&cg);
    match r {
        Ok(_) => Err("armed an empty cgroup".into()),
        Err(e) if !e.to_string().contains(&cg.display().to_string()) => {
            Err(format!("error does not name the cgroup: {e}"))
        }
        Err(_) if frozen.lines().any(|l| l == "frozen 1") => {
            Err("the cgroup was left frozen".into())
        }
        Err(_) => Ok(()),
    }
}

fn build_helper(dir: &Path) -> R<PathBuf> {
    let src = dir.join("track_helper.c");
    std::fs::write(&src, HELPER_C).map_err(err("write the helper source"))?;
    let bin = dir.join("track_helper");
    let out = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(err("run cc"))?;
    if !out.status.success() {
        return Err(format!(
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(bin)
}

fn main() {
    let args = Arguments::from_args();
    let skip = if !nix::unistd::geteuid().is_root() {
        Some("needs root (ptrace, cgroups)")
    } else if !Path::new(CGROUP_ROOT).join("cgroup.procs").exists() {
        Some("needs cgroup v2 at /sys/fs/cgroup/unified")
    } else {
        None
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let built = if skip.is_none() {
        build_helper(tmp.path()).map(|b| {
            let _ = HELPER.set(b);
        })
    } else {
        Ok(())
    };
    type Test = fn() -> R<()>;
    let tests: Vec<(&str, Test)> = vec![
        ("rounds_and_final_dump", rounds_and_final_dump),
        ("fork_after_arming", fork_after_arming),
        ("exec_after_arming", exec_after_arming),
        ("pid_namespace_init", pid_namespace_init),
        ("unmapped_and_remapped_areas", unmapped_and_remapped_areas),
        ("arm_refuses_an_empty_cgroup", arm_refuses_an_empty_cgroup),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let built = built.clone();
            Trial::test(name, move || {
                if let Some(why) = skip {
                    return Err(Failed::from(format!("skipped: {why}")));
                }
                built.map_err(Failed::from)?;
                f().map_err(Failed::from)
            })
            .with_ignored_flag(skip.is_some())
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(tmp);
    conclusion.exit();
}
