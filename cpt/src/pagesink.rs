//! The storing half of the memory dump, on its own thread: the tracer thread reads pages with
//! `process_vm_readv` into buffers and sends them here; this thread leaves out zero pages,
//! appends the rest to the page store (which checksums and writes them, or gathers and
//! compresses a chunk) and sends the buffer back. Reading and writing overlap on two CPUs.

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

#[derive(Default)]
pub struct Stored {
    pub entries: Vec<PagemapEntry>,
    pub pages_stored: u64,
    pub zero_pages_skipped: u64,
}

/// The tracer's end: get an empty buffer, send it filled.
pub struct PageSink {
    jobs: Sender<Job>,
    free: Receiver<PageBuf>,
}

/// The storing thread's end.
pub struct PageWriterEnd {
    jobs: Receiver<Job>,
    free: Sender<PageBuf>,
}

/// Page-aligned buffers (see `PageBuf`: an unaligned one halves process_vm_readv's speed).
pub fn channel() -> Result<(PageSink, PageWriterEnd), DumpError> {
    let (jobs_tx, jobs_rx) = bounded(BUFFERS);
    let (free_tx, free_rx) = bounded(BUFFERS);
    for _ in 0..BUFFERS {
        let _ = free_tx.send(PageBuf::new(CHUNK_SIZE)?);
    }
    Ok((
        PageSink {
            jobs: jobs_tx,
            free: free_rx,
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

    pub fn send(&self, job: Job) -> Result<(), DumpError> {
        self.jobs.send(job).map_err(|_| stopped())
    }
}

impl PageWriterEnd {
    /// Stores every job until the sink is dropped. On error, stops at once: the tracer's next
    /// send fails and the dump is abandoned.
    pub fn run(self, store: &mut PageStoreWriter) -> Result<Stored, DumpError> {
        let mut out = Stored::default();
        for job in self.jobs.iter() {
            store_job(store, &job, &mut out)?;
            let _ = self.free.send(job.buf);
        }
        Ok(out)
    }
}

/// Appends the job's pages as runs of non-zero pages (all pages if `!drop_zero`); a run never
/// spans two chunks.
fn store_job(store: &mut PageStoreWriter, job: &Job, out: &mut Stored) -> Result<(), DumpError> {
    let page = |i: usize| &job.buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
    let skip = |i: usize| job.drop_zero && page(i).iter().all(|&b| b == 0);
    let mut i = 0;
    while i < job.n {
        if skip(i) {
            out.zero_pages_skipped += 1;
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < job.n && !skip(j) {
            j += 1;
        }
        let mut k = i;
        while k < j {
            let take = (j - k).min(store.room() / PAGE_SIZE);
            let loc = store.append(&job.buf[k * PAGE_SIZE..(k + take) * PAGE_SIZE])?;
            out.entries.push(PagemapEntry {
                owner: job.owner,
                addr: job.addr + (k * PAGE_SIZE) as u64,
                nr_pages: take as u32,
                loc,
            });
            out.pages_stored += take as u64;
            k += take;
        }
        i = j;
    }
    Ok(())
}
