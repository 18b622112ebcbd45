//! Runs one test scenario: a workload, dumped and restored by `vzcpt` in one mode, checked by
//! the workload itself before and after. Meant to run as PID 1 of its own PID namespace
//! (`unshare --pid --fork --mount-proc`): it reaps every orphan, and when it exits the kernel
//! kills everything left in the namespace.
//!
//! Modes: `kill` (dump, which kills; restore), `compress` (the same with `--compress`),
//! `leave-stopped` (dump with `--leave-stopped`: every task must be stopped; SIGCONT them and
//! check the original),
//! `leave-running` (dump with `--leave-running`, check the original, kill it, restore a copy
//! in a fresh PID namespace and check the copy), `cgroup-v2` / `cgroup-v1` (like `kill`, but the
//! workload runs in the given cgroup and is dumped with `--cgroup`).
//! `--rounds N` repeats dump+restore on the restored tree. `--netns` starts the workload in
//! a network namespace of its own with `lo` up (workloads marked `/* vzcpt: netns */`), so
//! that the copy restored beside the original (`leave-running`) gets its own ports.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tests::ctl::Ctl;
use tests::reaper::Reaper;

struct Args {
    vzcpt: PathBuf,
    work: PathBuf,
    mode: String,
    rounds: u32,
    cgroup: Option<PathBuf>,
    netns: bool,
    workload: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        vzcpt: PathBuf::new(),
        work: PathBuf::new(),
        mode: "kill".into(),
        rounds: 1,
        cgroup: None,
        netns: false,
        workload: Vec::new(),
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--vzcpt" => a.vzcpt = it.next().context("--vzcpt PATH")?.into(),
            "--work" => a.work = it.next().context("--work DIR")?.into(),
            "--mode" => a.mode = it.next().context("--mode MODE")?,
            "--rounds" => a.rounds = it.next().context("--rounds N")?.parse()?,
            "--cgroup" => a.cgroup = Some(it.next().context("--cgroup PATH")?.into()),
            "--netns" => a.netns = true,
            "--" => {
                a.workload = it.collect();
                break;
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.workload.is_empty() {
        bail!("usage: vzcpt-test-driver --vzcpt PATH --work DIR [--mode M] [--rounds N] [--cgroup CG] -- WORKLOAD...");
    }
    Ok(a)
}

struct Driver {
    a: Args,
    reaper: Reaper,
    ctl: Ctl,
    step: u32,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
const CMD_TIMEOUT: Duration = Duration::from_secs(120);

impl Driver {
    /// Runs a command to completion with its output in a file, reaping orphans meanwhile.
    fn run(&mut self, what: &str, cmd: &mut Command) -> anyhow::Result<String> {
        self.step += 1;
        let out_path = self.a.work.join(format!("step{}-{what}.out", self.step));
        let out = File::create(&out_path)?;
        let t = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {what}"))?;
        let code = self.reaper.wait(child.id() as i32, CMD_TIMEOUT)?;
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        println!(
            "{what}: exit {code} in {:.1} ms {}",
            t.elapsed().as_secs_f64() * 1e3,
            text.trim()
        );
        if code != 0 {
            bail!("{what} failed (exit {code}): {}", text.trim());
        }
        Ok(text)
    }

    fn check(&mut self, when: &str) -> anyhow::Result<()> {
        let reaper = &mut self.reaper;
        self.ctl
            .check(CHECK_TIMEOUT, || reaper.reap())
            .with_context(|| format!("workload check {when}"))?;
        println!("check {when}: PASS");
        Ok(())
    }

    fn vzcpt(&self) -> Command {
        Command::new(&self.a.vzcpt)
    }

    fn dump(&mut self, root: i32, dir: &Path, extra: &[&str]) -> anyhow::Result<()> {
        let mut cmd = self.vzcpt();
        cmd.arg("dump");
        match (&self.a.cgroup, self.a.mode.starts_with("cgroup")) {
            (Some(cg), true) => cmd.arg("--cgroup").arg(cg),
            _ => cmd.arg("-t").arg(root.to_string()),
        };
        cmd.arg("-D").arg(dir).arg("--json").args(extra);
        let out = self.run("dump", &mut cmd)?;
        self.show(dir, &out)?;
        let v = Command::new(&self.a.vzcpt)
            .arg("verify")
            .arg("-D")
            .arg(dir)
            .output()?;
        if !v.status.success() {
            bail!(
                "vzcpt verify after dump: {}",
                String::from_utf8_lossy(&v.stderr)
            );
        }
        Ok(())
    }

    /// `vzcpt show` decodes every record: as JSON, its tree has as many processes as the dump
    /// reported, a core record per live one, and a root among them; as text, it exits 0.
    fn show(&self, dir: &Path, dump_json: &str) -> anyhow::Result<()> {
        let dumped: serde_json::Value =
            serde_json::from_str(dump_json.trim()).context("dump --json output")?;
        let out = Command::new(&self.a.vzcpt)
            .args(["show", "--json", "-D"])
            .arg(dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "vzcpt show --json: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let img: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("vzcpt show --json output")?;
        let procs = img["pstree"]["processes"]
            .as_array()
            .context("show --json: no pstree.processes")?;
        if Some(procs.len() as u64) != dumped["processes"].as_u64() {
            bail!(
                "show --json lists {} processes, the dump reported {}",
                procs.len(),
                dumped["processes"]
            );
        }
        let alive = procs.iter().filter(|p| p["state"] == "Alive").count();
        let cores = img["core"]["processes"].as_array().map_or(0, |c| c.len());
        if cores != alive {
            bail!("show --json: {cores} core records for {alive} live processes");
        }
        let root = &img["pstree"]["root_pid"];
        if !procs.iter().any(|p| &p["pid"] == root) {
            bail!("show --json: root {root} is not among the processes");
        }
        let text = Command::new(&self.a.vzcpt)
            .args(["show", "-D"])
            .arg(dir)
            .output()?;
        if !text.status.success() || text.stdout.is_empty() {
            bail!("vzcpt show: {}", String::from_utf8_lossy(&text.stderr));
        }
        Ok(())
    }

    fn restore_detached(&mut self, dir: &Path) -> anyhow::Result<i32> {
        let pidfile = dir.with_extension("pid");
        let mut cmd = self.vzcpt();
        cmd.arg("restore")
            .arg("-D")
            .arg(dir)
            .arg("--detach")
            .arg("--pidfile")
            .arg(&pidfile);
        self.run("restore", &mut cmd)?;
        Ok(std::fs::read_to_string(&pidfile)?.trim().parse()?)
    }

    /// Kills every process of this PID namespace but the driver, and reaps them.
    fn kill_all(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let others: Vec<i32> = std::fs::read_dir("/proc")?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| p != 1)
                .collect();
            if others.is_empty() {
                return Ok(());
            }
            for p in &others {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            self.reaper.reap();
            if Instant::now() > deadline {
                bail!("processes {others:?} survive SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn start_workload(d: &mut Driver) -> anyhow::Result<i32> {
    let log = File::create(d.a.work.join("workload.log"))?;
    let mut cmd = if let (Some(cg), true) = (&d.a.cgroup, d.a.mode.starts_with("cgroup")) {
        // Enter the cgroup before exec, so that nothing of the workload runs outside it.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(cg)
            .args(&d.a.workload);
        c
    } else if d.a.netns {
        // unshare and sh exec: the workload keeps the PID the harness started.
        let mut c = Command::new("unshare");
        c.args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$@\"",
            "sh",
        ])
        .args(&d.a.workload);
        c
    } else {
        let mut c = Command::new(&d.a.workload[0]);
        c.args(&d.a.workload[1..]);
        c
    };
    let child = cmd
        .env("VZCPT_CTL", &d.ctl.dir)
        .current_dir(&d.a.work)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start workload {:?}", d.a.workload))?;
    let pid = child.id() as i32;
    let reaper = &mut d.reaper;
    d.ctl
        .wait_ready(Duration::from_secs(30), || reaper.status(pid).is_none())?;
    Ok(d.ctl.root_pid(pid))
}

fn scenario(d: &mut Driver) -> anyhow::Result<()> {
    let root = start_workload(d)?;
    println!("workload ready, dumping PID {root}");
    d.check("before any dump")?;
    match d.a.mode.as_str() {
        "kill" | "compress" | "cgroup-v2" | "cgroup-v1" => {
            let mut root = root;
            for round in 1..=d.a.rounds {
                let img = d.a.work.join(format!("img{round}"));
                let extra: &[&str] = if d.a.mode == "compress" {
                    &["--compress"]
                } else {
                    &[]
                };
                d.dump(root, &img, extra)?;
                if nix::sys::signal::kill(nix::unistd::Pid::from_raw(root), None).is_ok() {
                    let st =
                        std::fs::read_to_string(format!("/proc/{root}/stat")).unwrap_or_default();
                    if !st.contains(") Z") {
                        bail!("round {round}: PID {root} still runs after a dump that kills");
                    }
                }
                d.reaper.reap();
                let restored = d.restore_detached(&img)?;
                // A PID namespace's init is restored into a new namespace: its outer PID changes.
                let ns_root = d.ctl.dir.join("root").exists();
                if restored != root && !ns_root {
                    bail!("round {round}: restored root has PID {restored}, dumped {root}");
                }
                root = restored;
                d.check(&format!("after restore {round}"))?;
            }
        }
        "leave-stopped" => {
            let img = d.a.work.join("img1");
            d.dump(root, &img, &["--leave-stopped"])?;
            let tasks = namespace_tasks()?;
            let running: Vec<String> = tasks
                .iter()
                .filter(|(_, _, state)| *state != 'T')
                .map(|(p, t, state)| format!("{p}/{t} ({state})"))
                .collect();
            if !running.is_empty() {
                bail!("after a --leave-stopped dump, tasks are not stopped: {running:?}");
            }
            for (p, _, _) in &tasks {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*p),
                    nix::sys::signal::Signal::SIGCONT,
                );
            }
            d.check("of the original after a --leave-stopped dump and SIGCONT")?;
        }
        "leave-running" => {
            let img = d.a.work.join("img1");
            d.dump(root, &img, &["--leave-running"])?;
            d.check("of the original after a --leave-running dump")?;
            d.kill_all()?;
            // A copy in a fresh PID namespace, where the dumped PIDs are free.
            let mut cmd = Command::new("unshare");
            cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
                .arg(&d.a.vzcpt)
                .arg("restore")
                .arg("-D")
                .arg(&img)
                .stdin(Stdio::null())
                .stdout(File::create(d.a.work.join("copy-restore.out"))?)
                .stderr(File::create(d.a.work.join("copy-restore.err"))?);
            let copy = cmd.spawn().context("spawn unshare vzcpt restore")?;
            let copy_pid = copy.id() as i32;
            let r = d.check("of the copy restored in a fresh PID namespace");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(copy_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            if r.is_err() {
                let err =
                    std::fs::read_to_string(d.a.work.join("copy-restore.err")).unwrap_or_default();
                println!("copy restore stderr: {}", err.trim());
            }
            r?;
        }
        other => bail!("unknown mode {other}"),
    }
    Ok(())
}

/// (pid, tid, state) of every task of this PID namespace but the driver's.
fn namespace_tasks() -> anyhow::Result<Vec<(i32, i32, char)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == 1 {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let stat =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(") ")
                .and_then(|i| stat[i + 2..].chars().next())
                .unwrap_or('?');
            // Zombies stay zombies whatever the dump leaves.
            if state != 'Z' {
                out.push((pid, tid, state));
            }
        }
    }
    Ok(out)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vzcpt-test-driver: {e:#}");
            std::process::exit(2);
        }
    };
    let ctl = match Ctl::create(a.work.join("ctl")) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vzcpt-test-driver: {e:#}");
            std::process::exit(2);
        }
    };
    let mut d = Driver {
        a,
        reaper: Reaper::default(),
        ctl,
        step: 0,
    };
    let r = scenario(&mut d);
    let _ = d.kill_all();
    match r {
        Ok(()) => println!("SCENARIO PASS"),
        Err(e) => {
            let log = std::fs::read_to_string(d.a.work.join("workload.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("SCENARIO FAIL: {e:#}");
            eprintln!("workload log (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
            std::process::exit(1);
        }
    }
}
