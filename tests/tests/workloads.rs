//! Every workload of `tests/workloads/` in every mode, each scenario in its own PID namespace
//! (and, for the cgroup modes, its own cgroup), run by `vzcpt-test-driver`.
//!
//! Trials are `<workload>::<mode>`. A trial whose precondition is missing (not root, no
//! `unshare`, no cgroup freezer) is reported as ignored with the reason, never as passed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

const MODES: &[&str] = &["kill", "leave-running", "compress"];
/// Workloads also dumped through the cgroup freezer (v2 and v1).
const CGROUP_WORKLOADS: &[&str] = &["forktree", "threads8", "bash_loop", "vfork"];
/// Workloads also dumped with `--leave-stopped` (stopped, then continued by the harness).
const STOPPED_WORKLOADS: &[&str] = &["counter", "forktree", "threads8"];
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);

/// Whether a workload's source asks for a network namespace of its own (`/* vzcpt: netns */`
/// among its first lines).
fn wants_netns(src: &Path) -> bool {
    std::fs::read_to_string(src)
        .map(|t| t.lines().take(5).any(|l| l.contains("/* vzcpt: netns */")))
        .unwrap_or(false)
}

fn workloads() -> Vec<(String, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
    let bin = Path::new(env!("VZCPT_WORKLOADS_BIN"));
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&src)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for p in entries {
        let name = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let cmd = match p.extension().and_then(|e| e.to_str()) {
            Some("c") => vec![bin.join(&name).display().to_string()],
            Some("py") => vec!["python3".into(), p.display().to_string()],
            Some("sh") => vec!["bash".into(), p.display().to_string()],
            _ => continue,
        };
        let mut cmd = cmd;
        if wants_netns(&p) {
            // The driver reads this marker argument (see vzcpt-test-driver --netns).
            cmd.insert(0, "--netns".into());
        }
        out.push((name, cmd));
    }
    out
}

/// Why this machine cannot run privileged scenarios, if it cannot.
fn missing_precondition() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (ptrace, clone3 set_tid, namespaces)".into());
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return Some("needs unshare(1) from util-linux".into());
    }
    None
}

fn cgroup_root(mode: &str) -> Option<PathBuf> {
    let p = PathBuf::from(match mode {
        "cgroup-v2" => "/sys/fs/cgroup/unified",
        "cgroup-v1" => "/sys/fs/cgroup/freezer",
        _ => return None,
    });
    let probe = if mode == "cgroup-v2" {
        "cgroup.procs"
    } else {
        "freezer.state"
    };
    (p.join(probe).exists() || p.join("cgroup.procs").exists()).then_some(p)
}

/// A cgroup for one scenario, killed and removed on drop.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
                for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn run_scenario(name: &str, cmd: &[String], mode: &str) -> Result<(), Failed> {
    let vzcpt = tests::paths::vzcpt().map_err(|e| Failed::from(format!("{e:#}")))?;
    let work_root = tests::paths::profile_dir().join("test-work");
    std::fs::create_dir_all(&work_root).map_err(|e| Failed::from(e.to_string()))?;
    let work = work_root.join(format!("{name}-{mode}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| Failed::from(e.to_string()))?;
    let mut driver = Command::new("unshare");
    driver
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_vzcpt-test-driver"))
        .arg("--vzcpt")
        .arg(&vzcpt)
        .arg("--work")
        .arg(&work)
        .arg("--mode")
        .arg(mode)
        .arg("--rounds")
        .arg(if mode.starts_with("leave-") { "1" } else { "2" });
    let _cgroup = match cgroup_root(mode) {
        Some(root) => {
            let cg = root.join(format!("vzcpt-test-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&cg)
                .map_err(|e| Failed::from(format!("create {}: {e}", cg.display())))?;
            driver.arg("--cgroup").arg(&cg);
            Some(TestCgroup(cg))
        }
        None => None,
    };
    let (netns, cmd) = match cmd.split_first() {
        Some((first, rest)) if first == "--netns" => (true, rest),
        _ => (false, cmd),
    };
    if netns {
        driver.arg("--netns");
    }
    driver.arg("--").args(cmd);
    let out_path = work.join("driver.out");
    let out = std::fs::File::create(&out_path).map_err(|e| Failed::from(e.to_string()))?;
    let mut child = driver
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| Failed::from(e.to_string()))?)
        .stderr(out)
        .spawn()
        .map_err(|e| Failed::from(format!("spawn the driver: {e}")))?;
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| Failed::from(e.to_string()))? {
            break Some(st);
        }
        if start.elapsed() > SCENARIO_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(st) if st.success() => {
            let _ = std::fs::remove_dir_all(&work);
            Ok(())
        }
        Some(st) => Err(format!(
            "{name} in mode {mode}: driver exited with {st}; work dir {}\n{output}",
            work.display()
        )
        .into()),
        None => Err(format!(
            "{name} in mode {mode}: timed out after {SCENARIO_TIMEOUT:?}\n{output}"
        )
        .into()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let skip = missing_precondition();
    let mut trials = Vec::new();
    for (name, cmd) in workloads() {
        let mut modes: Vec<&str> = MODES.to_vec();
        if STOPPED_WORKLOADS.contains(&name.as_str()) {
            modes.push("leave-stopped");
        }
        if CGROUP_WORKLOADS.contains(&name.as_str()) {
            modes.extend(["cgroup-v2", "cgroup-v1"]);
        }
        for mode in modes {
            let (n, c, m) = (name.clone(), cmd.clone(), mode.to_string());
            let mut reason = skip.clone();
            if reason.is_none() && mode.starts_with("cgroup") && cgroup_root(mode).is_none() {
                reason = Some(format!("no {mode} freezer hierarchy on this machine"));
            }
            let ignored = reason.is_some();
            let trial = Trial::test(format!("{name}::{mode}"), move || {
                if let Some(r) = reason {
                    return Err(format!("skipped: {r}").into());
                }
                run_scenario(&n, &c, &m)
            })
            .with_ignored_flag(ignored);
            if ignored {
                eprintln!(
                    "{name}::{mode}: ignored: {}",
                    skip.clone().unwrap_or_else(|| format!("no {mode} freezer"))
                );
            }
            trials.push(trial);
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
