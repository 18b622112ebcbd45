//! `vzinit`: the init of a VE whose command is not an init itself. As PID 1 of the VE it reaps
//! every orphan, runs the VE's command (its arguments, if any) and exits with that command's
//! status when it ends; on SIGTERM or SIGINT (`vzctl stop`) it passes SIGTERM to every process
//! of the VE, waits up to 5 s for them, and exits (the kernel then kills what is left).
//!
//! It sleeps only in `wait4` and `nanosleep`, which a checkpoint interrupts and a restore
//! restarts exactly, and it keeps no descriptors but its standard streams.
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const STOP_SIGNALS: u64 = (1 << (libc::SIGTERM - 1)) | (1 << (libc::SIGINT - 1));

/// Other processes of the VE: every PID in its /proc but this init's.
fn others_alive() -> bool {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|pid| pid != 1)
            })
        })
        .unwrap_or(false)
}

fn shutdown() -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    // Every process of the VE gets its chance to end, children of the init or not (a command
    // entered with vzctl exec is not); what is left when the init exits is killed by the kernel.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        while let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
            waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG))
        {}
        if !others_alive() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::process::exit(0);
}

fn main() {
    if let Err(e) = sys::signals::catch(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD]) {
        eprintln!("vzinit: {e}");
        std::process::exit(1);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let main_child = match args.split_first() {
        Some((cmd, rest)) => match Command::new(cmd).args(rest).spawn() {
            Ok(c) => Some(Pid::from_raw(c.id() as i32)),
            Err(e) => {
                eprintln!("vzinit: cannot run {cmd}: {e}");
                std::process::exit(127);
            }
        },
        None => None,
    };
    loop {
        if sys::signals::take_caught() & STOP_SIGNALS != 0 {
            shutdown();
        }
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if Some(pid) == main_child => {
                std::process::exit(code)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if Some(pid) == main_child => {
                std::process::exit(128 + sig as i32)
            }
            // No child at all: sleep until a signal (sleep(3) returns early on one, unlike
            // std's sleep); an orphan's SIGCHLD wakes it, and the short period bounds a race
            // with one that arrives and exits between waitpid and the sleep.
            Err(Errno::ECHILD) => {
                nix::unistd::sleep(1);
            }
            _ => {}
        }
    }
}
