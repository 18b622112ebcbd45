//! `vzctl start`: the VE's first process is cloned into new PID, mount, UTS, IPC and network
//! namespaces and straight into the VE's cgroup v2 (`CLONE_INTO_CGROUP`); it joins the v1
//! cgroups, builds its mounts and pivots into its root, sets its host name, brings up its
//! loopback, and becomes the VE's init (`/.vz/vzinit`). An intermediate process makes the init
//! nobody's child here, so `vzctl` can exit while the VE runs. Every failure before the exec
//! comes back as a message on a close-on-exec pipe, and `vzctl` undoes what it set up.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use rst::cgroup::CreatedCgroups;
use sys::clone::{clone3_process, CloneOpts};

use crate::cgroups::VeCgroups;
use crate::fs::{self, INIT_PATH};
use crate::net;
use crate::ops::{status, Status};
use crate::{Layout, Result, VeConfig, VeError};

/// The namespaces every VE has of its own.
pub const VE_NAMESPACES: i32 = libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET;

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Undoes a half-done start or restore: the root overlay and new cgroups go.
pub(crate) struct Setup<'a> {
    pub layout: &'a Layout,
    pub ctid: u32,
    pub cgroups: VeCgroups,
    pub created: CreatedCgroups,
    pub done: bool,
}

impl<'a> Setup<'a> {
    /// Mounts the root and creates the cgroups with their limits.
    pub fn prepare(layout: &'a Layout, ctid: u32, cfg: &VeConfig) -> Result<Self> {
        let cgroups = VeCgroups::of(ctid, &layout.cgroup_path(ctid))?;
        let mut s = Setup {
            layout,
            ctid,
            cgroups,
            created: CreatedCgroups::default(),
            done: false,
        };
        fs::install_init(layout, ctid)?;
        fs::mount_root(layout, ctid, cfg)?;
        let mut created = CreatedCgroups::default();
        s.cgroups.create(&mut created)?;
        s.created = created;
        s.cgroups.apply_limits(cfg)?;
        Ok(s)
    }

    pub fn keep(mut self) {
        self.done = true;
        self.created.keep();
    }
}

impl Drop for Setup<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.cgroups.kill_all(Duration::from_secs(5));
        let _ = fs::umount_root(self.layout, self.ctid);
        // `created` removes the new cgroup directories when dropped right after this.
    }
}

/// Starts a stopped VE; returns its init's PID on the host.
pub fn start(layout: &Layout, ctid: u32) -> Result<i32> {
    let cfg = crate::ops::load_config(layout, ctid)?;
    match status(layout, ctid)? {
        Status::Stopped => {}
        Status::Dumped => {
            return Err(VeError::WrongStatus {
                ctid,
                status: Status::Dumped,
                what: format!(
                    "restore it (vzctl restore {ctid}), or remove its image {} to start afresh",
                    layout.dump(ctid).display()
                ),
            })
        }
        s => {
            return Err(VeError::WrongStatus {
                ctid,
                status: s,
                what: "it must be stopped to start".into(),
            })
        }
    }
    let setup = Setup::prepare(layout, ctid, &cfg)?;
    let root = layout.root(ctid);
    let v2: OwnedFd = nix::fcntl::open(
        setup.cgroups.v2()?,
        OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| VeError::Failed {
        ctid,
        what: format!("open the VE's cgroup: {e}"),
    })?;
    let (msg_r, msg_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| VeError::Failed {
        ctid,
        what: format!("pipe2: {e}"),
    })?;
    let (pid_r, pid_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| VeError::Failed {
        ctid,
        what: format!("pipe2: {e}"),
    })?;
    // The init says on `ready` that its namespaces are built, then waits on `go` until its
    // network is in place.
    let pipe = || {
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| VeError::Failed {
            ctid,
            what: format!("pipe2: {e}"),
        })
    };
    let (go_r, go_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let v1_dirs: Vec<_> = setup
        .cgroups
        .dirs
        .iter()
        .filter(|(c, _)| !c.is_empty())
        .map(|(_, d)| d.clone())
        .collect();
    let say = |fd: i32, m: &str| {
        let _ = sys::syscalls::write_raw(fd, m.as_bytes());
    };
    let init_opts = CloneOpts {
        flags: VE_NAMESPACES as u64,
        exit_signal: libc::SIGCHLD,
        cgroup_fd: Some(v2.as_raw_fd()),
        ..Default::default()
    };
    let become_init = || -> i32 {
        let fail = |m: String| {
            say(msg_w.as_raw_fd(), &m);
            1
        };
        for d in &v1_dirs {
            if let Err(e) = std::fs::write(d.join("cgroup.procs"), "0") {
                return fail(format!("join cgroup {}: {e}", d.display()));
            }
        }
        if let Err(m) = fs::enter_root(&root) {
            return fail(m);
        }
        let hostname = cfg.hostname.clone().unwrap_or_else(|| ctid.to_string());
        if let Err(e) = nix::unistd::sethostname(&hostname) {
            return fail(format!("sethostname: {e}"));
        }
        if let Err(e) = sys::ns::set_link_up("lo") {
            return fail(format!("loopback up: {e}"));
        }
        let _ = nix::unistd::setsid();
        match nix::fcntl::open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
            Ok(null) => {
                for fd in (0..3).filter(|&fd| fd != null.as_raw_fd()) {
                    if let Err(e) = sys::syscalls::dup_onto(&null, fd, false) {
                        return fail(format!("stdio on /dev/null: {e}"));
                    }
                }
            }
            Err(e) => return fail(format!("open /dev/null: {e}")),
        }
        // Ready for the network; EOF instead of the go byte: vzctl gave up (and kills the VE).
        let _ = sys::syscalls::write_raw(ready_w.as_raw_fd(), b"R");
        if !matches!(
            sys::syscalls::read_raw(go_r.as_raw_fd(), &mut [0u8; 1]),
            Ok(1)
        ) {
            return fail("vzctl went away before the network was set up".into());
        }
        // The message pipe stays open until the exec (close-on-exec); all else goes now.
        if let Err(e) = sys::syscalls::close_inherited_before_exec(Some(msg_w.as_raw_fd())) {
            return fail(format!("close inherited descriptors: {e}"));
        }
        let mut argv = vec![c("vzinit")];
        if let Some(cmd) = &cfg.command {
            argv.extend([c("/bin/sh"), c("-c"), c(cmd)]);
        }
        let env = [c(PATH_ENV), c("HOME=/root"), c("container=vzctl")];
        let e = nix::unistd::execve(&c(INIT_PATH), &argv, &env).unwrap_err();
        fail(format!("exec {INIT_PATH}: {e}"))
    };
    let mid = clone3_process(
        &CloneOpts {
            exit_signal: libc::SIGCHLD,
            ..Default::default()
        },
        || match clone3_process(&init_opts, become_init) {
            Ok(pid) => {
                let _ = sys::syscalls::write_raw(pid_w.as_raw_fd(), &pid.as_raw().to_le_bytes());
                0
            }
            Err(e) => {
                say(msg_w.as_raw_fd(), &format!("clone3 the init: {e}"));
                1
            }
        },
    )?;
    let _ = waitpid(mid, None);
    drop((msg_w, pid_w, go_r, ready_w));
    let mut b = [0u8; 4];
    let pid = match sys::syscalls::read_raw(pid_r.as_raw_fd(), &mut b) {
        Ok(4) => i32::from_le_bytes(b),
        _ => 0,
    };
    // The init says it is ready (its namespaces built) with one byte; EOF means it failed.
    let ready = pid > 0
        && matches!(
            sys::syscalls::read_raw(ready_r.as_raw_fd(), &mut [0u8; 1]),
            Ok(1)
        );
    if ready && net::configured(&cfg) {
        if let Err(e) = net::setup(ctid, &cfg, pid, None) {
            net::teardown(ctid, &cfg);
            return Err(e); // `setup` (the guard) kills the init and undoes the rest
        }
    }
    let _ = sys::syscalls::write_raw(go_w.as_raw_fd(), &[1]);
    drop(go_w);
    // The message pipe reads EOF once the init has exec'ed (close-on-exec) or died.
    let mut msg = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = sys::syscalls::read_raw(msg_r.as_raw_fd(), &mut buf) {
        msg.extend_from_slice(&buf[..n]);
    }
    if !msg.is_empty() || pid <= 0 {
        return Err(VeError::Failed {
            ctid,
            what: format!("start: {}", String::from_utf8_lossy(&msg)),
        });
    }
    setup.keep();
    Ok(pid)
}

fn c(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}
