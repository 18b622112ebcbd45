//! Written-page tracking without soft-dirty: userfaultfd write protection in asynchronous mode
//! plus the `PAGEMAP_SCAN` ioctl of `/proc/PID/pagemap` (this kernel has no
//! `CONFIG_MEM_SOFT_DIRTY`).
//!
//! A userfaultfd with `UFFD_FEATURE_WP_ASYNC` never delivers a fault: a write to a protected
//! page just clears the page's write-protect bit in the kernel, and `PAGEMAP_SCAN` reports the
//! pages whose bit is clear as `PAGE_IS_WRITTEN` (optionally protecting them again in the same
//! walk). With `UFFD_FEATURE_WP_UNPOPULATED`, protecting a range also marks its empty page-table
//! entries, so a page first touched after the protection is reported too.
//!
//! Userfaultfd ioctls act on the address space the descriptor was created in (`ctx->mm`), not
//! on the caller's: a tracer that created one inside a tracee (a remote `userfaultfd(2)`) and
//! took it with `pidfd_getfd` registers and protects the tracee's areas from outside.
//!
//! Numbers are those of `include/uapi/linux/userfaultfd.h` and `include/uapi/linux/fs.h`
//! (x86-64 `_IOWR` encodings).
//!
//! # References
//! - [userfaultfd(2)](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)
//! - [ioctl_userfaultfd(2)](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
//! - [ioctl_pagemap_scan(2)](https://man7.org/linux/man-pages/man2/ioctl_pagemap_scan.2.html)
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use crate::{sys_err, Result};

/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: u64 = 0xC018_AA3F;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u64 = 0xC020_AA00;
/// `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
pub const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
pub const UFFDIO_WAKE: u64 = 0x8010_AA02;
/// `UFFD_API`.
pub const UFFD_API: u64 = 0xAA;
/// `uffd_msg.event` of a page fault; `UFFD_PAGEFAULT_FLAG_WP` in its flags: a write to a
/// write-protected page (synchronous mode).
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `userfaultfd(2)` flag: only faults from user mode. Enough for asynchronous write protection
/// (no fault is ever delivered) and allowed without `CAP_SYS_PTRACE` whatever
/// `vm.unprivileged_userfaultfd` says.
pub const UFFD_USER_MODE_ONLY: u64 = 1;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 = 0xC060_6610;
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
/// A guard region's page (`MADV_GUARD_INSTALL`): shows as swapped, holds nothing.
pub const PAGE_IS_GUARD: u64 = 1 << 8;

const PAGE: u64 = 4096;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// One `struct page_region` of a scan: pages `[start, end)` sharing `categories` (masked by
/// the request's return mask).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// What a `PAGEMAP_SCAN` asks for (see ioctl_pagemap_scan(2)): a page matches when all of
/// `category_mask`, and one of `category_anyof_mask` if not 0, are set in its categories
/// (after flipping those of `category_inverted`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanRequest {
    pub flags: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// `userfaultfd(2)` in the calling process (`flags`: `O_CLOEXEC`, `O_NONBLOCK`,
/// [`UFFD_USER_MODE_ONLY`]). The tracker creates its descriptors inside the tracked processes
/// by remote syscalls instead; this one serves tests and self-tracking.
pub fn userfaultfd(flags: u64) -> Result<OwnedFd> {
    // SAFETY: integer-only syscall; on success it returns a new descriptor owned by nobody else.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    let fd = Errno::result(r).map_err(sys_err("userfaultfd"))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `UFFDIO_API`: enables `features` on a fresh userfaultfd. Fails (`EINVAL`) if the kernel
/// lacks one of them. Returns the features the kernel reports.
pub fn api(fd: impl AsFd, features: u64) -> Result<u64> {
    let mut arg = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which `arg` is (repr(C),
    // three u64 as in the uapi header), alive for the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            UFFDIO_API as libc::c_ulong,
            &mut arg as *mut UffdioApi,
        )
    };
    Errno::result(r).map_err(sys_err("UFFDIO_API"))?;
    Ok(arg.features)
}

/// `UFFDIO_REGISTER` with `UFFDIO_REGISTER_MODE_WP` of `[start, start + len)` in the
/// descriptor's address space. Page-aligned; the range must be covered by areas that can be
/// registered (private anonymous ones can).
pub fn register_wp(fd: impl AsFd, start: u64, len: u64) -> Result<()> {
    let mut arg = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register` (repr(C) mirror of
    // the uapi layout), alive for the call; the range names memory of the descriptor's mm and
    // is never dereferenced by this process.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            UFFDIO_REGISTER as libc::c_ulong,
            &mut arg as *mut UffdioRegister,
        )
    };
    Errno::result(r).map_err(sys_err("UFFDIO_REGISTER"))?;
    Ok(())
}

/// `UFFDIO_WRITEPROTECT`: sets (`on`) or clears the write protection of a registered range.
pub fn writeprotect(fd: impl AsFd, start: u64, len: u64, on: bool) -> Result<()> {
    let mut arg = UffdioWriteprotect {
        range: UffdioRange { start, len },
        mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
    };
    // SAFETY: UFFDIO_WRITEPROTECT reads one `struct uffdio_writeprotect` (repr(C) mirror of the
    // uapi layout), alive for the call; the range is in the descriptor's mm, not ours.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            UFFDIO_WRITEPROTECT as libc::c_ulong,
            &mut arg as *mut UffdioWriteprotect,
        )
    };
    Errno::result(r).map_err(sys_err("UFFDIO_WRITEPROTECT"))?;
    Ok(())
}

/// `UFFDIO_WAKE`: wakes the threads blocked on faults in `[start, start + len)`.
pub fn wake(fd: impl AsFd, start: u64, len: u64) -> Result<()> {
    let mut arg = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE reads one `struct uffdio_range` (repr(C), two u64 as in the uapi
    // header), alive for the call; the range is in the descriptor's mm, not ours.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            UFFDIO_WAKE as libc::c_ulong,
            &mut arg as *mut UffdioRange,
        )
    };
    Errno::result(r).map_err(sys_err("UFFDIO_WAKE"))?;
    Ok(())
}

/// One `struct uffd_msg` as read from a userfaultfd (32 bytes): its event and, for a page
/// fault, the fault's flags and (page-aligned) address. Other events carry other fields in
/// the same place; a synchronous write-protect reader without event features gets faults only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdMsg {
    pub event: u8,
    pub flags: u64,
    pub address: u64,
}

/// Size of `struct uffd_msg`.
pub const UFFD_MSG_SIZE: usize = 32;

impl UffdMsg {
    /// Decodes one message (`event` at byte 0; for a page fault `flags` at 8, `address` at 16).
    pub fn parse(raw: &[u8; UFFD_MSG_SIZE]) -> UffdMsg {
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_ne_bytes(b)
        };
        UffdMsg {
            event: raw[0],
            flags: word(8),
            address: word(16),
        }
    }

    /// A write to a write-protected page, blocked until the protection is cleared.
    pub fn is_wp_fault(&self) -> bool {
        self.event == UFFD_EVENT_PAGEFAULT && self.flags & UFFD_PAGEFAULT_FLAG_WP != 0
    }
}

/// Reads the pending messages of a non-blocking userfaultfd (at most `max`); empty when none
/// is pending.
pub fn read_msgs(fd: impl AsFd, max: usize) -> Result<Vec<UffdMsg>> {
    let mut raw = vec![0u8; max.max(1) * UFFD_MSG_SIZE];
    let n = match nix::unistd::read(fd.as_fd(), &mut raw) {
        Ok(n) => n,
        Err(Errno::EAGAIN) => 0,
        Err(e) => return Err(sys_err("read userfaultfd")(e)),
    };
    Ok(raw[..n - n % UFFD_MSG_SIZE]
        .chunks_exact(UFFD_MSG_SIZE)
        .map(|c| {
            let mut m = [0u8; UFFD_MSG_SIZE];
            m.copy_from_slice(c);
            UffdMsg::parse(&m)
        })
        .collect())
}

/// Regions per ioctl call; the walk goes on from `walk_end` when they are all used.
const SCAN_VEC: usize = 512;

/// `PAGEMAP_SCAN` over `[start, end)` of the address space behind `pagemap` (an open
/// `/proc/PID/pagemap`), calling the ioctl again from `walk_end` until the walk reaches `end`.
/// Adjacent regions with the same categories are merged. With [`PM_SCAN_CHECK_WPASYNC`], an
/// area in the range without asynchronous write protection fails the scan with `EPERM`.
pub fn scan(pagemap: &File, start: u64, end: u64, req: &ScanRequest) -> Result<Vec<PageRegion>> {
    let mut out: Vec<PageRegion> = Vec::new();
    let mut vec = vec![PageRegion::default(); SCAN_VEC];
    let mut from = start;
    while from < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: req.flags,
            start: from,
            end,
            vec: vec.as_mut_ptr() as u64,
            vec_len: vec.len() as u64,
            category_inverted: req.category_inverted,
            category_mask: req.category_mask,
            category_anyof_mask: req.category_anyof_mask,
            return_mask: req.return_mask,
            ..Default::default()
        };
        // SAFETY: PAGEMAP_SCAN reads and updates one `struct pm_scan_arg` (repr(C), 12 u64 as in
        // the uapi header, size field set to its size) and writes at most `vec_len` `struct
        // page_region` (repr(C), 3 u64) into `vec`, which has that many elements and outlives
        // the call. The scanned range is only read by the kernel's page-table walk of the
        // pagemap's mm, never dereferenced here.
        let r = unsafe {
            libc::ioctl(
                pagemap.as_raw_fd(),
                PAGEMAP_SCAN as libc::c_ulong,
                &mut arg as *mut PmScanArg,
            )
        };
        let n = Errno::result(r).map_err(sys_err("PAGEMAP_SCAN"))? as usize;
        for reg in &vec[..n.min(vec.len())] {
            match out.last_mut() {
                Some(last) if last.end == reg.start && last.categories == reg.categories => {
                    last.end = reg.end
                }
                _ => out.push(*reg),
            }
        }
        if arg.walk_end <= from {
            // No progress: the kernel would return the same again (cannot happen with a
            // non-empty vector, but never loop for ever on it).
            return Err(crate::SysError::Invalid {
                op: "PAGEMAP_SCAN",
                reason: format!("the walk did not move past {from:#x}"),
            });
        }
        from = arg.walk_end;
    }
    Ok(out)
}

/// The pages of `[start, end)` written since their write protection was last set, as
/// `(first address, end address)` ranges, checking that the whole range is under asynchronous
/// write protection (`EPERM` otherwise). With `write_protect_again`, the kernel protects each
/// reported page again in the same walk, so a write that happens after it is reported by the
/// next scan.
pub fn scan_written(
    pagemap: &File,
    start: u64,
    end: u64,
    write_protect_again: bool,
) -> Result<Vec<(u64, u64)>> {
    let mut flags = PM_SCAN_CHECK_WPASYNC;
    if write_protect_again {
        flags |= PM_SCAN_WP_MATCHING;
    }
    let regions = scan(
        pagemap,
        start,
        end,
        &ScanRequest {
            flags,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..Default::default()
        },
    )?;
    Ok(regions.into_iter().map(|r| (r.start, r.end)).collect())
}

/// Pages of `[start, end)` whose categories include all of `mask`, as ranges (no write
/// protection involved; areas without it are scanned too).
pub fn scan_with(pagemap: &File, start: u64, end: u64, mask: u64) -> Result<Vec<(u64, u64)>> {
    let regions = scan(
        pagemap,
        start,
        end,
        &ScanRequest {
            category_mask: mask,
            return_mask: mask,
            ..Default::default()
        },
    )?;
    Ok(regions.into_iter().map(|r| (r.start, r.end)).collect())
}

/// Number of pages in a list of page ranges.
pub fn pages_in(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(s, e)| (e - s) / PAGE).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr::NonNull;

    #[test]
    fn layouts_match_the_uapi() {
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdioWriteprotect>(), 24);
        // _IOWR(type, nr, size) = 3 << 30 | size << 16 | type << 8 | nr
        let iowr = |ty: u64, nr: u64, size: usize| 3 << 30 | (size as u64) << 16 | ty << 8 | nr;
        assert_eq!(PAGEMAP_SCAN, iowr(b'f' as u64, 16, 96));
        assert_eq!(UFFDIO_API, iowr(0xAA, 0x3F, 24));
        assert_eq!(UFFDIO_REGISTER, iowr(0xAA, 0x00, 32));
        assert_eq!(UFFDIO_WRITEPROTECT, iowr(0xAA, 0x06, 24));
        // _IOR(type, nr, size) = 2 << 30 | size << 16 | type << 8 | nr
        assert_eq!(UFFDIO_WAKE, 2 << 30 | 16 << 16 | 0xAA << 8 | 0x02);
    }

    /// An anonymous private mapping of this test process, unmapped on drop.
    struct Area {
        addr: NonNull<libc::c_void>,
        len: usize,
    }

    impl Area {
        fn new(pages: usize) -> Area {
            let len = pages * PAGE as usize;
            // SAFETY: a fresh private anonymous mapping at an address the kernel picks; it
            // replaces nothing.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Area {
                addr: NonNull::new(p).expect("mmap returned null"),
                len,
            }
        }
        fn start(&self) -> u64 {
            self.addr.as_ptr() as u64
        }
        fn write(&self, page: usize, byte: u8) {
            assert!(page * (PAGE as usize) < self.len);
            // SAFETY: the byte is inside the mapping, which lives as long as `self`.
            unsafe {
                *self.addr.as_ptr().cast::<u8>().add(page * PAGE as usize) = byte;
            }
        }
    }

    impl Drop for Area {
        fn drop(&mut self) {
            // SAFETY: the mapping was made by `new` and nothing refers to it any more.
            unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
        }
    }

    #[test]
    fn written_pages_of_this_process() {
        let uffd = userfaultfd((libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY)
            .expect("userfaultfd");
        api(&uffd, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED).expect("UFFDIO_API");
        let area = Area::new(64);
        area.write(0, 1);
        area.write(10, 1);
        let (s, len) = (area.start(), area.len as u64);
        register_wp(&uffd, s, len).expect("register");
        writeprotect(&uffd, s, len, true).expect("writeprotect");
        let pagemap = File::open("/proc/self/pagemap").expect("pagemap");
        assert_eq!(scan_written(&pagemap, s, s + len, true).unwrap(), vec![]);
        // A page present before, one touched for the first time, two adjacent ones.
        for p in [10, 33, 40, 41] {
            area.write(p, 2);
        }
        let got = scan_written(&pagemap, s, s + len, true).unwrap();
        assert_eq!(
            got,
            vec![
                (s + 10 * PAGE, s + 11 * PAGE),
                (s + 33 * PAGE, s + 34 * PAGE),
                (s + 40 * PAGE, s + 42 * PAGE)
            ]
        );
        assert_eq!(pages_in(&got), 4);
        // Protected again by the scan: nothing until the next write.
        assert_eq!(scan_written(&pagemap, s, s + len, false).unwrap(), vec![]);
        area.write(63, 3);
        assert_eq!(
            scan_written(&pagemap, s, s + len, false).unwrap(),
            vec![(s + 63 * PAGE, s + 64 * PAGE)]
        );
        // Without WP_MATCHING nothing was protected: reported again.
        assert_eq!(
            scan_written(&pagemap, s, s + len, false).unwrap(),
            vec![(s + 63 * PAGE, s + 64 * PAGE)]
        );
        let present = scan_with(&pagemap, s, s + len, PAGE_IS_PRESENT).unwrap();
        assert_eq!(pages_in(&present), 6);
        // An area that is not registered: CHECK_WPASYNC refuses it.
        let other = Area::new(4);
        let e = scan_written(&pagemap, other.start(), other.start() + 4 * PAGE, false);
        assert!(
            matches!(
                e,
                Err(crate::SysError::Syscall {
                    source: Errno::EPERM,
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn messages_decode() {
        let mut raw = [0u8; UFFD_MSG_SIZE];
        raw[0] = UFFD_EVENT_PAGEFAULT;
        raw[8..16]
            .copy_from_slice(&(UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_WRITE).to_ne_bytes());
        raw[16..24].copy_from_slice(&0x7f00_1234_5000u64.to_ne_bytes());
        let m = UffdMsg::parse(&raw);
        assert!(m.is_wp_fault());
        assert_eq!(m.address, 0x7f00_1234_5000);
        raw[8..16].copy_from_slice(&UFFD_PAGEFAULT_FLAG_WRITE.to_ne_bytes());
        assert!(!UffdMsg::parse(&raw).is_wp_fault());
        raw[0] = 0x15; // UFFD_EVENT_REMOVE
        assert!(!UffdMsg::parse(&raw).is_wp_fault());
    }

    /// Synchronous write protection: a write to a protected page blocks its thread until the
    /// reader has seen the fault and cleared the protection; the reader still sees the page as
    /// it was before the write.
    #[test]
    fn synchronous_write_protection_blocks_the_writer() {
        let uffd = userfaultfd((libc::O_CLOEXEC | libc::O_NONBLOCK) as u64).expect("userfaultfd");
        api(&uffd, 0).expect("UFFDIO_API");
        let area = Area::new(8);
        for p in 0..8 {
            area.write(p, 5);
        }
        let (s, len) = (area.start(), area.len as u64);
        register_wp(&uffd, s, len).expect("register");
        writeprotect(&uffd, s, len, true).expect("writeprotect");
        let addr = s as usize + 3 * PAGE as usize;
        let writer = std::thread::spawn(move || {
            // SAFETY: the byte is inside `area`, which outlives this thread (joined below).
            unsafe { *(addr as *mut u8) = 9 };
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let msg = loop {
            if let Some(m) = read_msgs(&uffd, 8).expect("read").first().copied() {
                break m;
            }
            assert!(std::time::Instant::now() < deadline, "no fault reported");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(msg.is_wp_fault(), "{msg:?}");
        assert_eq!(msg.address, s + 3 * PAGE);
        // The writer is blocked: the page still holds what it held.
        // SAFETY: inside `area`; only read.
        assert_eq!(unsafe { *(addr as *const u8) }, 5);
        assert!(!writer.is_finished());
        writeprotect(&uffd, s + 3 * PAGE, PAGE, false).expect("unprotect");
        writer.join().expect("writer");
        // SAFETY: inside `area`; only read.
        assert_eq!(unsafe { *(addr as *const u8) }, 9);
        wake(&uffd, s, len).expect("wake");
    }

    #[test]
    fn a_long_scan_continues_from_walk_end() {
        let uffd = userfaultfd((libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY)
            .expect("userfaultfd");
        api(&uffd, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED).expect("UFFDIO_API");
        let pages = 3 * SCAN_VEC;
        let area = Area::new(pages);
        let (s, len) = (area.start(), area.len as u64);
        register_wp(&uffd, s, len).expect("register");
        writeprotect(&uffd, s, len, true).expect("writeprotect");
        // Every other page: more separate regions than one call can return.
        for p in (0..pages).step_by(2) {
            area.write(p, 7);
        }
        let pagemap = File::open("/proc/self/pagemap").expect("pagemap");
        let got = scan_written(&pagemap, s, s + len, true).unwrap();
        assert_eq!(got.len(), pages / 2);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, &(a, b))| a == s + 2 * i as u64 * PAGE && b == a + PAGE));
        assert_eq!(scan_written(&pagemap, s, s + len, false).unwrap(), vec![]);
    }
}
