//! The benchmark harness: `cargo run --release -p tests --bin vzcpt-bench [-- --quick]
//! [--migrate-only | --cow]`.
//!
//! Prints, in one run so the figures are comparable: memcpy bandwidth; for workloads of 64 MiB
//! and 1 GiB of touched memory, dump and restore time and GB/s (uncompressed, images on tmpfs),
//! image size plain and with zstd; dump and restore time of a 100-process tree; `vzctl chkpnt`
//! and `vzctl restore` of an idle VE (init + 5 processes), of one with 256 MiB touched, and of a
//! redis VE with 10,000 keys and 50 clients connected from outside it (VE state on tmpfs, its
//! own cgroup; the benchmark runs in its own network namespace); offline and online migration
//! of VEs of 256 MiB and 1 GiB written at 0, 10 and 100 MB/s between two network namespaces
//! (`--migrate-only`: that part alone; `MIGRATE_SIZES`, `MIGRATE_RATES` and `MIGRATE_MODES`
//! (`offline online online-1-stream`) choose the cases); `vzctl backup` and `restore-backup`
//! throughput of a dumped VE with 256 MiB of files and a 64 MiB memory image, raw, zstd, AEAD
//! and zstd + AEAD (`--backup-only`: that part alone); background (`--cow`) dumps of 64 MiB and 1 GiB
//! processes, idle or rewriting their memory, against plain ones (`--cow`: that part alone);
//! `vzctl snapshot` of VEs of 0, 256 MiB and 1 GiB and the increments of a 1 GiB process
//! writing 10 MB/s (`--snapshot-only`: that part alone). Figures go to
//! docs/BENCHMARKS.md by hand, with this command. The workload is the `counter` test workload.
//!
//! It re-executes itself as PID 1 of a new PID namespace so restored PIDs are always free and
//! everything it starts dies with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tests::ctl::Ctl;
use tests::reaper::Reaper;

const IMG_ROOT: &str = "/dev/shm/vzcpt-bench";

fn memcpy_gbps() -> f64 {
    let size = 1usize << 30;
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src); // fault the pages in first
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    size as f64 / best / 1e9
}

/// Writing 1 GiB into a new tmpfs file in 4 MiB writes: the bound of any dump to tmpfs
/// (every page of the image is a page the kernel must find and fill).
fn tmpfs_write_gbps() -> anyhow::Result<f64> {
    use std::io::Write;
    let path = PathBuf::from(IMG_ROOT).join("bw-probe");
    let buf = vec![7u8; 4 << 20];
    let mut f = std::fs::File::create(&path)?;
    let t = Instant::now();
    for _ in 0..256 {
        f.write_all(&buf)?;
    }
    let gbps = (1u64 << 30) as f64 / t.elapsed().as_secs_f64() / 1e9;
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(gbps)
}

/// Writing every page of 1 GiB of fresh anonymous memory once: the bound of any restore (every
/// restored page is a page the kernel must allocate and fault in).
fn first_touch_gbps() -> f64 {
    let size = 1usize << 30;
    let t = Instant::now();
    let mut v: Vec<u8> = Vec::with_capacity(size);
    v.resize(size, 1);
    let gbps = size as f64 / t.elapsed().as_secs_f64() / 1e9;
    std::hint::black_box(&v);
    gbps
}

struct Bench {
    vzcpt: PathBuf,
    reaper: Reaper,
}

fn json_f64(v: &serde_json::Value, k: &str) -> f64 {
    v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN)
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl Bench {
    /// Runs vzcpt to completion, reaping orphans meanwhile; returns (stdout, wall ms).
    fn vzcpt(&mut self, args: &[&str]) -> anyhow::Result<(String, f64)> {
        let out = PathBuf::from(IMG_ROOT).join("vzcpt.out");
        let err = PathBuf::from(IMG_ROOT).join("vzcpt.err");
        let t = Instant::now();
        let child = Command::new(&self.vzcpt)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?;
        let code = self
            .reaper
            .wait(child.id() as i32, Duration::from_secs(300))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if code != 0 {
            bail!(
                "vzcpt {args:?}: {}",
                std::fs::read_to_string(&err).unwrap_or_default().trim()
            );
        }
        Ok((std::fs::read_to_string(&out)?, ms))
    }

    fn start(&mut self, cmd: &mut Command, ctl: &Ctl) -> anyhow::Result<i32> {
        let child = cmd
            .env("VZCPT_CTL", &ctl.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id() as i32;
        let reaper = &mut self.reaper;
        ctl.wait_ready(Duration::from_secs(120), || reaper.status(pid).is_none())?;
        Ok(pid)
    }

    fn memory(&mut self, mb: u64) -> anyhow::Result<()> {
        let work = PathBuf::from(IMG_ROOT).join(format!("mem{mb}"));
        let mut ctl = Ctl::create(work.join("ctl"))?;
        let wl = PathBuf::from(env!("VZCPT_WORKLOADS_BIN")).join("counter");
        let pid = self.start(Command::new(&wl).env("WL_MEM_MB", mb.to_string()), &ctl)?;
        let img = work.join("img");
        let img_s = img.to_str().context("path")?;
        let pid_s = pid.to_string();
        // Plain dump (kills), restore, check; then a compressed snapshot for its size.
        let (out, dump_wall) = self.vzcpt(&["dump", "-t", &pid_s, "-D", img_s, "--json"])?;
        let d: serde_json::Value = serde_json::from_str(out.trim())?;
        self.reaper.reap();
        let bytes = json_f64(&d, "pages_bytes_stored");
        let size_plain = dir_size(&img);
        let (out, restore_wall) = self.vzcpt(&["restore", "-D", img_s, "--detach", "--json"])?;
        let r: serde_json::Value = serde_json::from_str(out.trim())?;
        let reaper = &mut self.reaper;
        ctl.check(Duration::from_secs(60), || reaper.reap())
            .context("the restored workload failed its check")?;
        let zimg = work.join("zimg");
        let (_, zdump_wall) = self.vzcpt(&[
            "dump",
            "-t",
            &pid_s,
            "-D",
            zimg.to_str().context("path")?,
            "--leave-running",
            "--compress",
        ])?;
        let size_zstd = dir_size(&zimg);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.reaper.wait(pid, Duration::from_secs(10)).ok();
        let dump_ms = json_f64(&d, "total_ms");
        let restore_ms = json_f64(&r, "total_ms");
        println!(
            "| {mb} MiB | {dump_ms:.0} ms ({:.2} GB/s), frozen {:.0} ms, wall {dump_wall:.0} ms | {restore_ms:.0} ms ({:.2} GB/s), wall {restore_wall:.0} ms | {:.1} MiB | {:.1} MiB (zstd dump {zdump_wall:.0} ms) |",
            bytes / dump_ms / 1e6,
            json_f64(&d, "frozen_ms"),
            bytes / restore_ms / 1e6,
            size_plain as f64 / (1 << 20) as f64,
            size_zstd as f64 / (1 << 20) as f64,
        );
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    }

    /// Background (`--cow`) dumps against plain `--leave-running` ones: time stopped, time of
    /// the copy after the thaw, write faults served; `writer`: the workload rewrites its memory
    /// all the time (`tests/bench/cowwriter.c`), and its image is restored and checked (one
    /// instant); otherwise the idle `counter` workload.
    fn cow(&mut self, mb: u64, writer: Option<&Path>) -> anyhow::Result<()> {
        let work = PathBuf::from(IMG_ROOT).join(format!("cow{mb}"));
        let mut ctl = Ctl::create(work.join("ctl"))?;
        let pid = match writer {
            Some(w) => self.start(Command::new(w).arg(mb.to_string()), &ctl)?,
            None => {
                let wl = PathBuf::from(env!("VZCPT_WORKLOADS_BIN")).join("counter");
                self.start(Command::new(&wl).env("WL_MEM_MB", mb.to_string()), &ctl)?
            }
        };
        let pid_s = pid.to_string();
        let img = work.join("img");
        let img_s = img.to_str().context("path")?;
        let (out, _) = self.vzcpt(&[
            "dump",
            "-t",
            &pid_s,
            "-D",
            img_s,
            "--leave-running",
            "--json",
        ])?;
        let plain: serde_json::Value = serde_json::from_str(out.trim())?;
        std::fs::remove_dir_all(&img)?;
        let (out, wall) = self.vzcpt(&[
            "dump",
            "-t",
            &pid_s,
            "-D",
            img_s,
            "--leave-running",
            "--cow",
            "--json",
        ])?;
        let d: serde_json::Value = serde_json::from_str(out.trim())?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.reaper.wait(pid, Duration::from_secs(10)).ok();
        let mut checked = "";
        if writer.is_some() {
            self.vzcpt(&["restore", "-D", img_s, "--detach"])?;
            let reaper = &mut self.reaper;
            ctl.check(Duration::from_secs(60), || reaper.reap())
                .context("the workload restored from the background dump failed its check")?;
            checked = ", restored and checked";
            // Restored with its PID.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            self.reaper.wait(pid, Duration::from_secs(10)).ok();
        }
        println!(
            "| {mb} MiB, {} | {:.1} ms (+ {:.1} ms before) | {:.0} ms | {:.0} ms, {} pages, {} ahead of a write | {wall:.0} ms{checked} |",
            if writer.is_some() { "rewritten all the time" } else { "idle" },
            json_f64(&d, "frozen_ms"),
            json_f64(&d, "cow_prearm_stopped_ms"),
            json_f64(&plain, "freeze_ms") + json_f64(&plain, "frozen_ms"),
            json_f64(&d, "cow_copy_ms"),
            json_f64(&d, "cow_pages_copied"),
            json_f64(&d, "cow_pages_ahead_of_writes"),
        );
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    }

    /// `process_vm_readv` of a fresh 1 GiB workload's memory in 4 MiB reads, twice: the read
    /// step of a dump alone, with nothing stored. On this VM the first pass over a process's
    /// pages is much slower than the next ones, and a dump is always a first pass.
    fn readv_gbps(&mut self) -> anyhow::Result<(f64, f64)> {
        use nix::sys::uio::{process_vm_readv, RemoteIoVec};
        let work = PathBuf::from(IMG_ROOT).join("readv");
        let ctl = Ctl::create(work.join("ctl"))?;
        let wl = PathBuf::from(env!("VZCPT_WORKLOADS_BIN")).join("counter");
        let pid = self.start(Command::new(&wl).env("WL_MEM_MB", "1024"), &ctl)?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        // The buffer: the largest private writable area.
        let (start, end) = maps
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("rw-p"))
            .filter_map(|l| {
                let (a, b) = l.split_whitespace().next()?.split_once('-')?;
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .max_by_key(|(a, b)| b - a)
            .context("no private writable area")?;
        let mut buf = vec![0u8; 4 << 20];
        let mut pass = || -> anyhow::Result<f64> {
            let t = Instant::now();
            let mut addr = start;
            while addr < end {
                let len = ((end - addr) as usize).min(buf.len());
                let got = process_vm_readv(
                    nix::unistd::Pid::from_raw(pid),
                    &mut [std::io::IoSliceMut::new(&mut buf[..len])],
                    &[RemoteIoVec {
                        base: addr as usize,
                        len,
                    }],
                )?;
                if got != len {
                    bail!("process_vm_readv read {got} of {len} bytes at {addr:#x}");
                }
                addr += len as u64;
            }
            Ok((end - start) as f64 / t.elapsed().as_secs_f64() / 1e9)
        };
        let first = pass()?;
        let second = pass()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.reaper.wait(pid, Duration::from_secs(10)).ok();
        let _ = std::fs::remove_dir_all(&work);
        Ok((first, second))
    }

    fn tree(&mut self, n: usize) -> anyhow::Result<()> {
        let work = PathBuf::from(IMG_ROOT).join("tree");
        let ctl = Ctl::create(work.join("ctl"))?;
        // bash and n-1 sleeping children; `ready` once all exist.
        let script = format!(
            "for i in $(seq {}); do sleep 1000 & done; echo ready > \"$VZCPT_CTL/ready\"; wait",
            n - 1
        );
        let pid = self.start(Command::new("bash").arg("-c").arg(&script), &ctl)?;
        let img = work.join("img");
        let img_s = img.to_str().context("path")?;
        let (out, _) = self.vzcpt(&["dump", "-t", &pid.to_string(), "-D", img_s, "--json"])?;
        let d: serde_json::Value = serde_json::from_str(out.trim())?;
        self.reaper.reap();
        let (out, _) = self.vzcpt(&["restore", "-D", img_s, "--detach", "--json"])?;
        let r: serde_json::Value = serde_json::from_str(out.trim())?;
        let procs = d.get("processes").and_then(|x| x.as_u64()).unwrap_or(0);
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let alive = children.split_whitespace().count() + 1;
        println!(
            "| {procs}-process tree | dump {:.0} ms (frozen {:.0} ms) | restore {:.0} ms | {alive} processes alive after restore |",
            json_f64(&d, "total_ms"),
            json_f64(&d, "frozen_ms"),
            json_f64(&r, "total_ms"),
        );
        if alive != n {
            bail!("{alive} of {n} processes alive after the restore");
        }
        let _ = std::fs::remove_dir_all(&work);
        Ok(())
    }
}

/// A VE of this benchmark's own `$VZ_DIR` (on tmpfs) and cgroup.
struct BenchVe {
    vzctl: PathBuf,
    vz_dir: PathBuf,
    cgroup: String,
}

impl BenchVe {
    fn vzctl(&self, args: &[&str]) -> anyhow::Result<(String, f64)> {
        let t = Instant::now();
        let out = Command::new(&self.vzctl)
            .args(args)
            .env("VZ_DIR", &self.vz_dir)
            .env("VZ_CGROUP", &self.cgroup)
            .stderr(Stdio::piped())
            .output()?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!(
                "vzctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((String::from_utf8_lossy(&out.stdout).into_owned(), ms))
    }

    /// Checkpoints and restores VE `ctid` running `command` (which creates /tmp/ready when
    /// set up); prints the engine's figures and the wall time of each `vzctl` command.
    fn cycle(&self, ctid: u32, what: &str, command: &str) -> anyhow::Result<()> {
        let id = ctid.to_string();
        self.vzctl(&["create", &id, "--command", command])?;
        self.vzctl(&["start", &id])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .vzctl(&["exec", &id, "test", "-e", "/tmp/ready"])
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("VE {ctid} did not get ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (out, dump_wall) = self.vzctl(&["chkpnt", &id, "--json"])?;
        let d: serde_json::Value = serde_json::from_str(out.trim())?;
        let (out, rst_wall) = self.vzctl(&["restore", &id, "--json"])?;
        let r: serde_json::Value = serde_json::from_str(out.trim())?;
        println!(
            "| VE, {what} | {} processes | chkpnt {dump_wall:.0} ms (engine {:.0} ms, frozen {:.0} ms) | restore {rst_wall:.0} ms (engine {:.0} ms) |",
            d.get("processes").and_then(|x| x.as_u64()).unwrap_or(0),
            json_f64(&d, "total_ms"),
            json_f64(&d, "frozen_ms"),
            json_f64(&r, "total_ms"),
        );
        self.vzctl(&["stop", &id, "--timeout", "1"])?;
        self.vzctl(&["destroy", &id])?;
        Ok(())
    }
}

/// The redis client of the benchmark: 10,000 keys written, 50 connections held through the
/// checkpoint and restore, each answering afterwards.
const REDIS_CLIENTS: &str = r#"
import socket, sys, time, os
w = sys.argv[1]
for _ in range(400):
    try:
        conns = [socket.create_connection(("10.99.9.2", 6379), timeout=30)]; break
    except OSError:
        time.sleep(0.05)
conns += [socket.create_connection(("10.99.9.2", 6379), timeout=30) for _ in range(49)]
s = conns[0]
s.sendall(b"".join(b"SET key%d %s\r\n" % (i, b"v" * 100) for i in range(10000)))
f = s.makefile("rb")
for _ in range(10000):
    assert f.readline() == b"+OK\r\n"
open(w + "/ready", "w").close()
while not os.path.exists(w + "/go"):
    time.sleep(0.01)
ok = 0
for c in conns:
    c.sendall(b"DBSIZE\r\n")
    if c.recv(100) == b":10000\r\n":
        ok += 1
open(w + "/result", "w").write("%d" % ok)
"#;

impl BenchVe {
    /// `vzctl chkpnt` and `restore` of a redis VE with 10,000 keys and 50 clients connected
    /// from outside it, all of which must answer afterwards.
    fn redis(&self, ctid: u32) -> anyhow::Result<()> {
        let id = ctid.to_string();
        let work = PathBuf::from(IMG_ROOT).join("redis-client");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        self.vzctl(&[
            "create",
            &id,
            "--command",
            "exec redis-server --bind 0.0.0.0 --port 6379 --save '' --appendonly no --protected-mode no --daemonize no",
        ])?;
        self.vzctl(&["set", &id, "--ipadd", "10.99.9.2", "--save"])?;
        self.vzctl(&["start", &id])?;
        let mut client = Command::new("python3")
            .args(["-c", REDIS_CLIENTS])
            .arg(&work)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !work.join("ready").exists() {
            if Instant::now() > deadline || client.try_wait()?.is_some() {
                let _ = client.kill();
                bail!("the redis clients did not get ready");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (out, dump_wall) = self.vzctl(&["chkpnt", &id, "--json"])?;
        let d: serde_json::Value = serde_json::from_str(out.trim())?;
        let (out, rst_wall) = self.vzctl(&["restore", &id, "--json"])?;
        let r: serde_json::Value = serde_json::from_str(out.trim())?;
        std::fs::write(work.join("go"), "")?;
        client.wait()?;
        let ok = std::fs::read_to_string(work.join("result")).unwrap_or_default();
        println!(
            "| VE, redis, 10,000 keys, 50 clients | {} processes | chkpnt {dump_wall:.0} ms (engine {:.0} ms, frozen {:.0} ms) | restore {rst_wall:.0} ms (engine {:.0} ms); {ok} of 50 clients answered after it |",
            d.get("processes").and_then(|x| x.as_u64()).unwrap_or(0),
            json_f64(&d, "total_ms"),
            json_f64(&d, "frozen_ms"),
            json_f64(&r, "total_ms"),
        );
        self.vzctl(&["stop", &id, "--timeout", "1"])?;
        self.vzctl(&["destroy", &id])?;
        if ok.trim() != "50" {
            bail!("only {ok} of 50 redis clients answered after the restore");
        }
        Ok(())
    }
}

fn ve_bench(quick: bool) -> anyhow::Result<()> {
    let ve = BenchVe {
        vzctl: tests::paths::cli_bin("vzctl")?,
        vz_dir: PathBuf::from(IMG_ROOT).join("vz"),
        cgroup: format!("vzcpt-bench-{}", std::process::id()),
    };
    tests::paths::cli_bin("vzinit")?;
    println!("| VE | tree | checkpoint (stops it) | restore |");
    println!("|---|---|---|---|");
    let idle = "for i in 1 2 3 4; do sleep 100000 & done; touch /tmp/ready; wait";
    let r = ve.cycle(101, "idle", idle);
    let r = r.and_then(|_| {
        if quick {
            return Ok(());
        }
        let mem = "exec python3 -c \"import time; b = bytearray(b'x' * (256 << 20)); open('/tmp/ready', 'w'); time.sleep(10**6)\"";
        ve.cycle(102, "256 MiB touched", mem)?;
        if Command::new("redis-server").arg("--version").output().is_ok() {
            ve.redis(103)
        } else {
            println!("(redis-server is not installed: no redis VE figures)");
            Ok(())
        }
    });
    for ctid in ["101", "102", "103"] {
        let _ = ve.vzctl(&["stop", ctid, "--timeout", "1"]);
        let _ = ve.vzctl(&["destroy", ctid]);
    }
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(h.path().join(&ve.cgroup));
    }
    r
}

/// `vzctl backup` of a dumped VE (128 MiB of random files, 128 MiB of log-like text, a
/// 64 MiB memory image) into a file on tmpfs, and `restore-backup` of it under a new CTID, for
/// each of raw, zstd (level 3), ChaCha20-Poly1305 alone, and zstd + ChaCha20-Poly1305. MB/s is
/// archive bytes (files, image and records, before compression) / wall time of the command.
fn backup_bench(quick: bool) -> anyhow::Result<()> {
    let ve = BenchVe {
        vzctl: tests::paths::cli_bin("vzctl")?,
        vz_dir: PathBuf::from(IMG_ROOT).join("vz-backup"),
        cgroup: format!("vzcpt-bench-bk-{}", std::process::id()),
    };
    tests::paths::cli_bin("vzinit")?;
    let dir = PathBuf::from(IMG_ROOT).join("backups");
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("key");
    let _ = std::fs::remove_file(&key);
    ve.vzctl(&["backup-keygen", &key.to_string_lossy()])?;
    let mb = if quick { 32 } else { 128 };
    // Random data: zstd gains nothing; text: it gains a lot. Then 64 MiB of memory held.
    let fill = format!(
        r#"import os, time
os.makedirs('/root/data', exist_ok=True)
for i in range({mb} // 8):
    open('/root/data/random%d' % i, 'wb').write(os.urandom(8 << 20))
with open('/root/data/log', 'w') as f:
    i = 0
    while f.tell() < ({mb} << 20):
        f.write('2026-11-23T18:00:%02d host app[%d]: request %d served in %d ms\n' % (i % 60, i % 977, i, i % 313))
        i += 1
b = bytearray(os.urandom(1 << 20) * 64)
open('/tmp/ready', 'w')
time.sleep(10**6)
"#
    );
    ve.vzctl(&["create", "110", "--command", "exec python3 /root/fill.py"])?;
    let root = ve.vz_dir.join("private/110/upper/root");
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("fill.py"), fill)?;
    let r = (|| -> anyhow::Result<()> {
        ve.vzctl(&["start", "110"])?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while ve
            .vzctl(&["exec", "110", "test", "-e", "/tmp/ready"])
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("VE 110 did not get ready");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        ve.vzctl(&["chkpnt", "110"])?;
        println!("| backup of a dumped VE, {} MiB of files + 64 MiB image | written | backup | restore-backup |", 2 * mb);
        println!("|---|---|---|---|");
        let key = key.to_string_lossy().into_owned();
        for (name, compress, keyed) in [
            ("raw", "0", false),
            ("zstd 3", "3", false),
            ("ChaCha20-Poly1305", "0", true),
            ("zstd 3 + ChaCha20-Poly1305", "3", true),
        ] {
            let file = dir.join(format!("110-{compress}-{keyed}.vzb"));
            let file_s = file.to_string_lossy().into_owned();
            let mut args = vec![
                "backup",
                "110",
                "--to",
                &file_s,
                "--compress",
                compress,
                "--json",
            ];
            if keyed {
                args.extend(["--encrypt-key", &key]);
            }
            let (out, wall) = ve.vzctl(&args)?;
            let s: serde_json::Value = serde_json::from_str(out.trim())?;
            let archive = s.get("archive_bytes").and_then(|x| x.as_u64()).unwrap_or(0) as f64;
            let written = s.get("written_bytes").and_then(|x| x.as_u64()).unwrap_or(0) as f64;
            let mut args = vec!["restore-backup", "111", "--from", &file_s];
            if keyed {
                args.extend(["--encrypt-key", &key]);
            }
            let (_, rwall) = ve.vzctl(&args)?;
            println!(
                "| {name} | {:.0} MiB ({:.0}%) | {wall:.0} ms, {:.0} MB/s | {rwall:.0} ms, {:.0} MB/s |",
                written / (1 << 20) as f64,
                100.0 * written / archive.max(1.0),
                archive / 1e6 / (wall / 1000.0),
                archive / 1e6 / (rwall / 1000.0),
            );
            ve.vzctl(&["destroy", "111"])?;
            std::fs::remove_file(&file)?;
        }
        Ok(())
    })();
    for ctid in ["110", "111"] {
        let _ = ve.vzctl(&["stop", ctid, "--timeout", "1"]);
        let _ = ve.vzctl(&["destroy", ctid]);
    }
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(h.path().join(&ve.cgroup));
    }
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// The migration benchmark's script (run on the two-host topology of the migration tests):
/// for each VE size and write rate, one offline and one online migration from A to B; a row
/// of figures each, into `$MIGRATE_TABLE`.
const MIGRATE_BENCH: &str = r#"
gcc -O2 -o "$WORK/memwriter" "$SRC/tests/bench/memwriter.c" || fail "gcc memwriter"
ctid=200
for mb in $SIZES; do
  for rate in $RATES; do
    for mode in $MODES; do
      ctid=$((ctid + 1))
      vz create $ctid --command "exec $WORK/memwriter $mb $rate" >/dev/null || fail "create $ctid"
      vz start $ctid || fail "start $ctid"
      until_true 60 vz exec $ctid test -e /tmp/ready || fail "VE $ctid not ready"
      case $mode in
        online) flag="--online" ;;
        online-1-stream) flag="--online --page-streams 0" ;;
        *) flag="" ;;
      esac
      out=$("$BIN/vzmigrate" $flag --json 10.98.0.2 $ctid 2>&1) || fail "migrate $ctid: $out $(tail -5 $WORK/daemon.log)"
      echo "$out" | MB=$mb RATE=$rate MODE=$mode python3 -c '
import json, os, sys
r = json.load(sys.stdin)
mb, rate, mode = int(os.environ["MB"]), os.environ["RATE"], os.environ["MODE"]
rounds = r["rounds"]
first = rounds[0] if rounds else None
stream = "%.2f GB/s" % (first["bytes"] / first["ms"] / 1e6) if first and first["ms"] > 0 else "-"
print("| %d MiB | %s MB/s | %s | %.0f ms | %.0f ms | %d | %.2f | %s |" % (
    mb, rate, mode, r["downtime_ms"], r["total_ms"], len(rounds),
    r["wire_bytes"] / (mb << 20), stream))
' >> "$MIGRATE_TABLE" || fail "report: $out"
      b "$BIN/vzctl" stop $ctid --timeout 1 >/dev/null 2>&1
      b "$BIN/vzctl" destroy $ctid >/dev/null 2>&1
    done
  done
done
echo OK
"#;

/// Offline and online migration of VEs of 256 MiB and 1 GiB written at 0, 10 and 100 MB/s,
/// between two network namespaces of this machine.
/// The background copy (`vzcpt dump --cow`) of a process of 64 MiB and 1 GiB, idle or
/// rewriting its memory all the time: how long it is stopped, against a plain
/// `--leave-running` dump.
fn cow_bench(quick: bool) -> anyhow::Result<()> {
    let writer = PathBuf::from(IMG_ROOT).join("cowwriter");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("cc")
        .args(["-O2", "-I"])
        .arg(src.join("workloads"))
        .arg("-o")
        .arg(&writer)
        .arg(src.join("bench/cowwriter.c"))
        .status()
        .context("cc")?;
    if !st.success() {
        bail!("cc failed for tests/bench/cowwriter.c");
    }
    let mut b = Bench {
        vzcpt: tests::paths::vzcpt()?,
        reaper: Reaper::default(),
    };
    println!("| process | stopped, --cow (frozen_ms) | stopped, plain --leave-running | copy after the thaw | --cow wall |");
    println!("|---|---|---|---|---|");
    let sizes: &[u64] = if quick { &[64] } else { &[64, 1024] };
    for &mb in sizes {
        b.cow(mb, None)?;
        b.cow(mb, Some(&writer))?;
    }
    Ok(())
}

/// Issue 7's figures (run as a VE trial script, on a btrfs it makes): `vzctl snapshot` of an
/// idle VE and of VEs holding 256 MiB and 1 GiB (time stopped, btrfs snapshot time, the
/// memory copy after the thaw), three snapshots each; then a process of 1 GiB writing
/// 10 MB/s (`tests/bench/memwriter.c`) dumped with `--leave-running --track-mem` and then 5
/// increments (`--parent` the previous) 2 s apart: pages and bytes stored, time, stopped
/// time. Rows go to `$TABLE`.
const SNAPSHOT_BENCH: &str = r#"
gcc -O2 -o "$WORK/memwriter" "$SRC/tests/bench/memwriter.c" || fail "gcc memwriter"
truncate -s 4G "$WORK/btrfs.img" || fail "truncate"
mkfs.btrfs -q "$WORK/btrfs.img" >/dev/null 2>&1 || fail "mkfs.btrfs (btrfs-progs)"
mkdir -p "$VZ_DIR/private"
mount -o loop "$WORK/btrfs.img" "$VZ_DIR/private" || fail "mount the btrfs image"
trap 'cleanup; [ -n "${P:-}" ] && kill -9 $P; umount -l "$VZ_DIR/private" 2>/dev/null' EXIT
echo "| VE | snapshot | stopped (frozen_ms) | of which btrfs snapshot | prearm stop | memory copy after the thaw | total |" >> "$TABLE"
echo "|---|---|---|---|---|---|---|" >> "$TABLE"
ctid=400
for spec in "idle:0" "256 MiB:256" "1 GiB:1024"; do
  name=${spec%%:*}; mb=${spec##*:}
  ctid=$((ctid + 1))
  if [ "$mb" = 0 ]; then cmd="exec sleep 1000000"; else cmd="exec $WORK/memwriter $mb 0"; fi
  vz create $ctid --command "$cmd" >/dev/null || fail "create $ctid"
  vz start $ctid || fail "start $ctid"
  if [ "$mb" = 0 ]; then sleep 1; else until_true 120 vz exec $ctid test -e /tmp/ready || fail "VE $ctid not ready"; fi
  for i in 1 2 3; do
    out=$(vz snapshot $ctid --name s$i --json) || fail "snapshot: $out"
    echo "$out" | NAME="$name" I=$i python3 -c '
import json, os, sys
d = json.load(sys.stdin); m = d["dump"] or {}
print("| %s | %s | %.1f ms | %.1f ms | %.1f ms | %.0f ms (%d pages) | %.0f ms |" % (os.environ["NAME"], os.environ["I"],
    d["frozen_ms"], d["fs_snapshot_ms"], m.get("cow_prearm_stopped_ms", 0), m.get("cow_copy_ms", 0),
    m.get("cow_pages_copied", 0), d["total_ms"]))' >> "$TABLE" || fail "report: $out"
  done
  vz stop $ctid --timeout 1 >/dev/null 2>&1
  vz destroy $ctid >/dev/null 2>&1
done
echo >> "$TABLE"
echo "| dump of a 1 GiB process writing 10 MB/s | pages stored | bytes stored | pages in parents | time | stopped |" >> "$TABLE"
echo "|---|---|---|---|---|---|" >> "$TABLE"
# A plain process (a mount namespace of its own would not be dumpable); it says it is ready
# in the host's /tmp.
rm -f /tmp/ready
"$WORK/memwriter" 1024 10 &
P=$!
until_true 120 test -e /tmp/ready || fail "memwriter not ready"
rm -f /tmp/ready
IMG="$WORK/incr"; mkdir -p "$IMG"
prev=""
for i in 0 1 2 3 4 5; do
  [ $i = 0 ] || sleep 2
  parent=""; [ -n "$prev" ] && parent="--parent $prev"
  out=$("$BIN/vzcpt" dump -t $P -D "$IMG/$i" --leave-running --track-mem $parent --json 2>"$WORK/dump.err") || fail "dump $i: $out $(cat "$WORK/dump.err")"
  echo "$out" | I=$i python3 -c '
import json, os, sys
d = json.load(sys.stdin); i = int(os.environ["I"])
print("| %s | %d | %.1f MiB | %d | %.0f ms | %.0f ms |" % ("full (--track-mem)" if i == 0 else "increment %d" % i,
    d["pages_stored"], d["pages_bytes_stored"] / 1048576, d["pages_in_parent"], d["total_ms"], d["frozen_ms"]))' >> "$TABLE" || fail "report: $out"
  prev="$IMG/$i"
done
kill -9 $P; P=""
echo OK
"#;

/// Issue 7's benchmark (see [`SNAPSHOT_BENCH`]).
fn snapshot_bench() -> anyhow::Result<()> {
    let bin = tests::ve_harness::bins()?;
    let table = PathBuf::from(IMG_ROOT).join("snapshot-table.md");
    let _ = std::fs::remove_file(&table);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the source tree")?
        .to_path_buf();
    let cgroup = format!("vzcpt-bench-snap-{}", std::process::id());
    let r = tests::script::Script {
        name: "snapshot-bench",
        prefix: "bench",
        body: format!("{}\n{SNAPSHOT_BENCH}", tests::ve_harness::PRELUDE),
        unshare: &["--net"],
        env: vec![
            ("BIN", bin.to_string_lossy().into_owned()),
            ("VZ_DIR", "{WORK}/vz".to_string()),
            ("VZ_CGROUP", cgroup.clone()),
            ("SRC", src.to_string_lossy().into_owned()),
            ("TABLE", table.to_string_lossy().into_owned()),
        ],
        timeout_s: 900,
    }
    .run();
    tests::ve_harness::remove_cgroups(&cgroup);
    print!("{}", std::fs::read_to_string(&table).unwrap_or_default());
    r.map_err(|e| anyhow::anyhow!(e))
}

fn migrate_bench(quick: bool) -> anyhow::Result<()> {
    let bin = tests::ve_harness::bins()?;
    let table = PathBuf::from(IMG_ROOT).join("migrate-table.md");
    let _ = std::fs::remove_file(&table);
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the source tree")?
        .to_path_buf();
    let cgroup = format!("vzcpt-bench-mig-{}", std::process::id());
    let r = tests::script::Script {
        name: "migrate-bench",
        prefix: "bench",
        body: format!(
            "{}\n{}\n{MIGRATE_BENCH}",
            tests::ve_harness::PRELUDE,
            tests::ve_harness::TWO_HOSTS
        ),
        unshare: &["--net"],
        env: vec![
            ("BIN", bin.to_string_lossy().into_owned()),
            ("VZ_DIR", "{WORK}/vz".to_string()),
            ("VZ_CGROUP", cgroup.clone()),
            ("SRC", src.to_string_lossy().into_owned()),
            ("MIGRATE_TABLE", table.to_string_lossy().into_owned()),
            (
                "SIZES",
                std::env::var("MIGRATE_SIZES")
                    .unwrap_or_else(|_| if quick { "64" } else { "256 1024" }.into()),
            ),
            (
                "RATES",
                std::env::var("MIGRATE_RATES")
                    .unwrap_or_else(|_| if quick { "0 10" } else { "0 10 100" }.into()),
            ),
            // `online-1-stream`: pages on the control stream, to compare with the page streams.
            (
                "MODES",
                std::env::var("MIGRATE_MODES")
                    .unwrap_or_else(|_| "offline online online-1-stream".into()),
            ),
        ],
        timeout_s: 1800,
    }
    .run();
    tests::ve_harness::remove_cgroups(&cgroup);
    println!("| VE memory | written | mode | downtime | total | rounds | bytes sent / memory | first round stream |");
    println!("|---|---|---|---|---|---|---|---|");
    print!("{}", std::fs::read_to_string(&table).unwrap_or_default());
    r.map_err(|e| anyhow::anyhow!(e))
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::process::id() != 1 {
        // Run again as PID 1 of a fresh PID namespace.
        let st = Command::new("unshare")
            .args(["--pid", "--net", "--fork", "--mount-proc", "--kill-child"])
            .arg(std::env::current_exe()?)
            .args(std::env::args().skip(1))
            .status()
            .context("unshare (needs root)")?;
        std::process::exit(st.code().unwrap_or(1));
    }
    // Its own network namespace: loopback, and an address for the VEs' peers.
    for args in [
        &["link", "set", "lo", "up"][..],
        &["addr", "add", "10.99.0.1/32", "dev", "lo"][..],
    ] {
        let st = Command::new("ip")
            .args(args)
            .status()
            .context("ip (iproute2)")?;
        if !st.success() {
            bail!("ip {} failed", args.join(" "));
        }
    }
    let _ = std::fs::remove_dir_all(IMG_ROOT);
    std::fs::create_dir_all(IMG_ROOT)?;
    if std::env::args().any(|a| a == "--backup-only") {
        let r = backup_bench(quick);
        let _ = std::fs::remove_dir_all(IMG_ROOT);
        return r;
    }
    if std::env::args().any(|a| a == "--cow") {
        let r = cow_bench(quick);
        let _ = std::fs::remove_dir_all(IMG_ROOT);
        return r;
    }
    if std::env::args().any(|a| a == "--snapshot-only") {
        let r = snapshot_bench();
        let _ = std::fs::remove_dir_all(IMG_ROOT);
        return r;
    }
    if std::env::args().any(|a| a == "--migrate-only") {
        let r = migrate_bench(quick);
        let _ = std::fs::remove_dir_all(IMG_ROOT);
        return r;
    }
    let mut b = Bench {
        vzcpt: tests::paths::vzcpt()?,
        reaper: Reaper::default(),
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "vzcpt-bench on kernel {}, {} CPUs",
        kernel.trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("memcpy: {:.1} GB/s (1 GiB, best of 3)", memcpy_gbps());
    println!(
        "fresh tmpfs file write: {:.2} GB/s (1 GiB; bounds a dump to tmpfs)",
        tmpfs_write_gbps()?
    );
    println!(
        "first touch of fresh anonymous memory: {:.2} GB/s (1 GiB; bounds a restore)",
        first_touch_gbps()
    );
    let (first, second) = b.readv_gbps()?;
    println!(
        "process_vm_readv of a 1 GiB process, 4 MiB reads: {first:.2} GB/s first pass, {second:.2} GB/s second (bounds a dump's reading)\n"
    );
    println!("| touched memory | dump (uncompressed, tmpfs) | restore | image | image, zstd |");
    println!("|---|---|---|---|---|");
    let sizes: &[u64] = if quick { &[64] } else { &[64, 1024] };
    for &mb in sizes {
        b.memory(mb)?;
    }
    println!();
    b.tree(if quick { 20 } else { 100 })?;
    println!();
    ve_bench(quick)?;
    println!();
    backup_bench(quick)?;
    println!();
    migrate_bench(quick)?;
    println!();
    cow_bench(quick)?;
    let _ = std::fs::remove_dir_all(IMG_ROOT);
    Ok(())
}
