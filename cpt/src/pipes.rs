//! Pipe and FIFO contents, read without consuming them: `tee(2)` duplicates the buffered data
//! into a private pipe, from which the dumper reads. The tree's own reads see every byte after
//! a `--leave-running` dump.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};

use images_format::pipes::PipeData;
use nix::fcntl::{fcntl, tee, FcntlArg, OFlag, SpliceFFlags};

use crate::DumpError;

#[derive(Default)]
pub struct PipeDumper {
    pub pipes: Vec<PipeData>,
    seen: HashSet<u64>,
}

fn task_err(pid: i32, fd: i32, reason: String) -> DumpError {
    DumpError::Task {
        pid,
        what: format!("pipe data of fd {fd}"),
        reason,
    }
}

impl PipeDumper {
    /// Records the unread data of the pipe behind `fd` of `pid`, once per pipe.
    pub fn dump_pipe(&mut self, pid: i32, fd: i32, pipe_id: u64) -> Result<(), DumpError> {
        if !self.seen.insert(pipe_id) {
            return Ok(());
        }
        // A new read-side description of the same pipe, non-blocking, through the magic link.
        let link = format!("/proc/{pid}/fd/{fd}");
        let reader: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&link)
            .map_err(|e| task_err(pid, fd, format!("open {link} for reading: {e}")))?
            .into();
        let capacity = fcntl(reader.as_fd(), FcntlArg::F_GETPIPE_SZ)
            .map_err(|e| task_err(pid, fd, format!("F_GETPIPE_SZ: {e}")))?
            as u32;
        let (copy_r, copy_w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .map_err(|e| task_err(pid, fd, format!("pipe2: {e}")))?;
        if capacity > 65536 {
            fcntl(copy_w.as_fd(), FcntlArg::F_SETPIPE_SZ(capacity as i32))
                .map_err(|e| task_err(pid, fd, format!("F_SETPIPE_SZ({capacity}): {e}")))?;
        }
        let mut data = Vec::new();
        match tee(
            reader.as_fd(),
            copy_w.as_fd(),
            capacity as usize,
            SpliceFFlags::SPLICE_F_NONBLOCK,
        ) {
            Ok(n) if n > 0 => {
                data.resize(n, 0);
                let mut off = 0;
                while off < n {
                    let got = nix::unistd::read(copy_r.as_fd(), &mut data[off..])
                        .map_err(|e| task_err(pid, fd, format!("read copy: {e}")))?;
                    if got == 0 {
                        break;
                    }
                    off += got;
                }
                data.truncate(off);
            }
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(task_err(pid, fd, format!("tee: {e}"))),
        }
        self.pipes.push(PipeData {
            pipe_id,
            capacity,
            data,
        });
        Ok(())
    }
}

use std::os::unix::fs::OpenOptionsExt;
