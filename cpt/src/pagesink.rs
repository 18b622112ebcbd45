//! The storing half of the memory dump, on its own thread: the tracer thread reads pages with
//! `process_vm_readv` into buffers, finds the runs of non-zero pages and (uncompressed) their
//! crc32, and sends them here; this thread appends each run to the page store (which writes it
//! in place, or gathers and compresses a chunk) and sends the buffer back. Reading and writing
//! overlap on two CPUs, and the work is split so that neither side waits much: the writer's
//! tmpfs writes cost about as much as the reader's copy, zero scan and checksum together.

use crossbeam_channel::{bounded, Receiver, Sender};
use images_format::mm::{PageOwner, PagemapEntry};
use images_format::pagestore::{PageStoreWriter, CHUNK_SIZE};
use images_format::{PageBuf, PAGE_SIZE};

use crate::DumpError;

/// Buffers in flight: one being read, one queued, one being stored.
const BUFFERS: usize = 3;

/// `n` pages at `addr` of `owner`, in `buf[..n * PAGE_SIZE]`.
pub struct Job {
    pub owner: PageOwner,
    pub addr: u64,
    pub n: usize,
    /// Leave zero pages out (anonymous memory reads back zero anyway).
    pub drop_zero: bool,
    pub buf: PageBuf,
}

/// What the reader found in a job: the runs to store.
struct Found {
    job: Job,
    runs: Vec<Run>,
    zero_pages: u64,
}

/// `n` pages from page `first` of a job, none of them dropped, with their crc32 when the
/// store is uncompressed.
struct Run {
    first: usize,
    n: usize,
    crc: crc32fast::Hasher,
}

#[derive(Default)]
pub struct Stored {
    pub entries: Vec<PagemapEntry>,
    pub pages_stored: u64,
    pub zero_pages_skipped: u64,
}

/// The tracer's end: get an empty buffer, send it filled.
pub struct PageSink {
    jobs: Sender<Found>,
    free: Receiver<PageBuf>,
    checksum: bool,
}

/// The storing thread's end.
pub struct PageWriterEnd {
    jobs: Receiver<Found>,
    free: Sender<PageBuf>,
}

/// Page-aligned buffers (see `PageBuf`: an unaligned one halves process_vm_readv's speed).
/// `checksum`: the store is uncompressed, so the reader checksums the runs it sends.
pub fn channel(checksum: bool) -> Result<(PageSink, PageWriterEnd), DumpError> {
    let (jobs_tx, jobs_rx) = bounded(BUFFERS);
    let (free_tx, free_rx) = bounded(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = free_tx.send(PageBuf::new(CHUNK_SIZE)?);
    }
    Ok((
        PageSink {
            jobs: jobs_tx,
            free: free_rx,
            checksum,
        },
        PageWriterEnd {
            jobs: jobs_rx,
            free: free_tx,
        },
    ))
}

fn stopped() -> DumpError {
    DumpError::Tree("the page writer stopped (see the error it reported)".into())
}

impl PageSink {
    /// An empty buffer of CHUNK_SIZE bytes; waits while all are in flight.
    pub fn buffer(&self) -> Result<PageBuf, DumpError> {
        self.free.recv().map_err(|_| stopped())
    }

    /// Finds the job's runs (on the calling thread: the reader's) and sends it to the writer.
    pub fn send(&self, job: Job) -> Result<(), DumpError> {
        let found = find_runs(job, self.checksum);
        self.jobs.send(found).map_err(|_| stopped())
    }
}

/// The runs of pages to store in a job: maximal runs of non-zero pages (of all pages when
/// `!drop_zero`), at most a chunk each.
fn find_runs(job: Job, checksum: bool) -> Found {
    let page = |i: usize| &job.buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
    let skip = |i: usize| job.drop_zero && page(i).iter().all(|&b| b == 0);
    let max_run = CHUNK_SIZE / PAGE_SIZE;
    let mut runs = Vec::new();
    let mut zero_pages = 0;
    let mut i = 0;
    while i < job.n {
        if skip(i) {
            zero_pages += 1;
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < job.n && j - i < max_run && !skip(j) {
            j += 1;
        }
        let mut crc = crc32fast::Hasher::new();
        if checksum {
            crc.update(&job.buf[i * PAGE_SIZE..j * PAGE_SIZE]);
        }
        runs.push(Run {
            first: i,
            n: j - i,
            crc,
        });
        i = j;
    }
    Found {
        job,
        runs,
        zero_pages,
    }
}

impl PageWriterEnd {
    /// Stores every job until the sink is dropped. On error, stops at once: the tracer's next
    /// send fails and the dump is abandoned.
    pub fn run(self, store: &mut PageStoreWriter) -> Result<Stored, DumpError> {
        let mut out = Stored::default();
        for found in self.jobs.iter() {
            store_runs(store, &found, &mut out)?;
            let _ = self.free.send(found.job.buf);
        }
        Ok(out)
    }
}

/// Appends each run whole (the store closes a chunk early rather than split a run, so a run's
/// checksum stays usable).
fn store_runs(
    store: &mut PageStoreWriter,
    found: &Found,
    out: &mut Stored,
) -> Result<(), DumpError> {
    let job = &found.job;
    out.zero_pages_skipped += found.zero_pages;
    for r in &found.runs {
        let data = &job.buf[r.first * PAGE_SIZE..(r.first + r.n) * PAGE_SIZE];
        let loc = store.append_run(data, &r.crc)?;
        out.entries.push(PagemapEntry {
            owner: job.owner,
            addr: job.addr + (r.first * PAGE_SIZE) as u64,
            nr_pages: r.n as u32,
            loc,
        });
        out.pages_stored += r.n as u64;
    }
    Ok(())
}

/// Sends the data of `file` (its first `size` bytes) to `sink` as pages of `owner` at their
/// offsets, skipping holes (`SEEK_DATA`/`SEEK_HOLE`); the tail of the last page is zero.
/// `fail` turns a reason into the caller's error, naming the object.
pub fn send_file(
    sink: &PageSink,
    file: &std::fs::File,
    size: u64,
    owner: PageOwner,
    fail: impl Fn(String) -> DumpError,
) -> Result<(), DumpError> {
    use std::os::unix::fs::FileExt;

    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    const PAGE: u64 = PAGE_SIZE as u64;
    let mut off = 0u64;
    while off < size {
        let data = match lseek(file, off as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(fail(format!("SEEK_DATA: {e}"))),
        };
        if data >= size {
            break;
        }
        let hole = lseek(file, data as i64, Whence::SeekHole)
            .map(|h| h as u64)
            .unwrap_or(size)
            .min(size.div_ceil(PAGE) * PAGE);
        let mut pos = data & !(PAGE - 1);
        while pos < hole {
            let n = ((hole - pos).div_ceil(PAGE) as usize).min(CHUNK_SIZE / PAGE_SIZE);
            let len = n * PAGE_SIZE;
            let mut buf = sink.buffer()?;
            let mut got = 0;
            while got < len {
                match file.read_at(&mut buf[got..len], pos + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(fail(format!("read at {pos:#x}: {e}"))),
                }
            }
            buf[got..len].fill(0);
            sink.send(Job {
                owner,
                addr: pos,
                n,
                drop_zero: true,
                buf,
            })?;
            pos += len as u64;
        }
        off = hole;
    }
    Ok(())
}
