//! Probes for every kernel facility the engine uses (`vzcpt check`). Each probe exercises the
//! facility on the calling process or on a short-lived child, so "present" means "works here".
#![allow(unsafe_code)]

use std::path::Path;

use nix::errno::Errno;

#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    pub present: bool,
    pub detail: String,
}

fn feature(name: &'static str, r: std::result::Result<String, String>) -> Feature {
    match r {
        Ok(detail) => Feature {
            name,
            present: true,
            detail,
        },
        Err(detail) => Feature {
            name,
            present: false,
            detail,
        },
    }
}

fn errno_str(e: Errno) -> String {
    format!("{e} ({})", e.desc())
}

pub fn probe_all() -> Vec<Feature> {
    let me = nix::unistd::getpid();
    let mut out = vec![
        feature(
            "pidfd_open",
            crate::syscalls::pidfd_open(me)
                .map(|_| "ok".into())
                .map_err(|e| e.to_string()),
        ),
        feature(
            "pidfd_getfd",
            crate::syscalls::pidfd_open(me)
                .and_then(|p| crate::syscalls::pidfd_getfd(&p, 0))
                .map(|_| "ok".into())
                .map_err(|e| e.to_string()),
        ),
        feature(
            "kcmp",
            crate::syscalls::kcmp_same_file(me, 0, me, 0)
                .map(|_| "ok".into())
                .map_err(|e| e.to_string()),
        ),
        feature("PR_SET_MM_MAP", {
            let mut size: u32 = 0;
            // SAFETY: PR_SET_MM_MAP_SIZE writes one u32 to the pointer passed.
            let r = unsafe { libc::prctl(libc::PR_SET_MM, 15, &mut size as *mut u32, 0, 0) };
            if r == 0 {
                Ok(format!("struct prctl_mm_map is {size} bytes"))
            } else {
                Err(errno_str(Errno::last()))
            }
        }),
        feature("clone3 with set_tid", {
            let p = Path::new("/proc/sys/kernel/ns_last_pid");
            // set_tid shipped with clone3 in 5.5 together with ns_last_pid write support for
            // CAP_CHECKPOINT_RESTORE; the syscall itself is probed with an invalid size.
            // SAFETY: a NULL args pointer with size 0 is rejected by the kernel before any access.
            let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            let e = Errno::last();
            if r == -1 && e == Errno::ENOSYS {
                Err("clone3 is missing".into())
            } else if !p.exists() {
                Err("no /proc/sys/kernel/ns_last_pid".into())
            } else {
                Ok("ok".into())
            }
        }),
        feature(
            "PTRACE_O_TRACESYSGOOD and seize",
            Ok("always present since 3.4".into()),
        ),
        feature("PTRACE_GET_RSEQ_CONFIGURATION", kernel_at_least(5, 13)),
        feature("process_vm_readv", {
            let src = [7u8; 16];
            let mut dst = [0u8; 16];
            let local = [std::io::IoSliceMut::new(&mut dst)];
            let mut local = local;
            let remote = [nix::sys::uio::RemoteIoVec {
                base: src.as_ptr() as usize,
                len: 16,
            }];
            match nix::sys::uio::process_vm_readv(me, &mut local, &remote) {
                Ok(16) if dst == src => Ok("ok".into()),
                Ok(n) => Err(format!("read {n} bytes")),
                Err(e) => Err(errno_str(e)),
            }
        }),
        feature("userfaultfd", {
            // SAFETY: userfaultfd(O_CLOEXEC) takes an integer and returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
            if fd >= 0 {
                // SAFETY: closing the descriptor created just above, owned by nothing else.
                unsafe { libc::close(fd as i32) };
                Ok("ok".into())
            } else {
                Err(errno_str(Errno::last()))
            }
        }),
        feature("memfd_create", {
            nix::sys::memfd::memfd_create(c"vzcpt-check", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map(|_| "ok".into())
                .map_err(errno_str)
        }),
        feature("soft-dirty page tracking", soft_dirty()),
    ];
    out.push(feature("cgroup v2 freezer", cgroup2_freeze()));
    out.push(feature("cgroup v1 freezer", {
        if Path::new("/sys/fs/cgroup/freezer/freezer.state").exists()
            || std::fs::read_to_string("/proc/mounts")
                .map(|m| m.contains(" cgroup ") && m.contains("freezer"))
                .unwrap_or(false)
        {
            Ok("freezer hierarchy mounted".into())
        } else {
            Err("no freezer hierarchy mounted".into())
        }
    }));
    out
}

fn kernel_at_least(major: u32, minor: u32) -> std::result::Result<String, String> {
    let rel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse::<u32>().ok());
    let (ma, mi) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if (ma, mi) >= (major, minor) {
        Ok(format!("kernel {rel}"))
    } else {
        Err(format!("kernel {rel} is older than {major}.{minor}"))
    }
}

fn cgroup2_freeze() -> std::result::Result<String, String> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| e.to_string())?;
    let mnt = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("no cgroup2 mount")?;
    let probe = Path::new(mnt).join(format!("vzcpt-check-{}", std::process::id()));
    std::fs::create_dir(&probe).map_err(|e| format!("cannot create a cgroup under {mnt}: {e}"))?;
    let ok = probe.join("cgroup.freeze").exists();
    let _ = std::fs::remove_dir(&probe);
    if ok {
        Ok(format!("cgroup.freeze under {mnt}"))
    } else {
        Err(format!("no cgroup.freeze under {mnt}"))
    }
}

/// Clears soft-dirty bits, writes a page, and reads its pagemap entry: bit 55 is set only when
/// the kernel tracks soft-dirty pages (`CONFIG_MEM_SOFT_DIRTY`).
fn soft_dirty() -> std::result::Result<String, String> {
    use std::os::unix::fs::FileExt;
    std::fs::write("/proc/self/clear_refs", "4").map_err(|e| format!("clear_refs: {e}"))?;
    let mut page = vec![0u8; 8192];
    let addr = (page.as_mut_ptr() as u64 + 4095) & !4095;
    let i = (addr - page.as_ptr() as u64) as usize;
    page[i] = 1;
    std::hint::black_box(&page);
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, addr / 4096 * 8)
        .map_err(|e| e.to_string())?;
    if u64::from_le_bytes(e) & (1 << 55) != 0 {
        Ok("ok".into())
    } else {
        Err("not tracked (CONFIG_MEM_SOFT_DIRTY off): written pages are tracked with userfaultfd + PAGEMAP_SCAN".into())
    }
}
