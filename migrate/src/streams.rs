//! Page streams: the pre-copy rounds' page batches travel over several QUIC streams at once,
//! beside the control stream.
//!
//! Why several: one QUIC stream delivers in order, so a lost packet holds back every batch
//! behind it (head-of-line blocking), and one stream's flow-control window bounds what is in
//! flight. Batches of one round are independent of each other (each page is sent at most
//! once per round, and the destination stages a page where it lands, in any order), so any
//! stream may carry any batch. The source opens [`PAGE_STREAMS`] unidirectional streams
//! once, after both sides said they speak [`CAP`] in their hellos; a round hands its batches
//! to whichever stream is free. The round's `RoundEnd` on the control stream carries its
//! page count, and the destination acknowledges the round only once that many pages of it
//! are staged, whatever stream they came by: the next round starts after that, so rounds
//! never mix. A peer without the capability gets its batches on the control stream.
//!
//! The destination ([`StagingWorker`]) reads each page stream on a task of its own, and one
//! thread writes the batches into the staging store, so receiving, decompressing and
//! writing overlap. It accepts at most [`MAX_PAGE_STREAMS`] streams (QUIC refuses more) and
//! only page batches on them; any other message, a batch of a round that is not under way,
//! or more pages in a round than its `RoundEnd` says, fails the migration.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::{Message, PageBatch};
use tokio::sync::{mpsc, watch, Mutex};

use crate::staging::{Staging, MAX_BATCH_PAGES};
use crate::transport;
use crate::{MigrateError, Result};

/// The capability both hellos name when page batches may use page streams.
pub const CAP: &str = "page-streams";
/// Page streams a source opens.
pub const PAGE_STREAMS: usize = 4;
/// Page streams a destination accepts on one connection (the QUIC limit of concurrent
/// unidirectional streams).
pub const MAX_PAGE_STREAMS: u32 = 8;
/// How long a destination waits for the pages a `RoundEnd` announced without one arriving.
const ROUND_STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Encoded `PageBatch` frames, with the pages each holds.
pub type Frames = mpsc::Receiver<(Vec<u8>, u64)>;

/// What one round's frames amounted to.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub frames: u64,
    pub pages: u64,
    pub wire_bytes: u64,
}

/// The source's page streams.
pub struct PageSenders {
    streams: Vec<quinn::SendStream>,
}

impl PageSenders {
    /// Opens `n` unidirectional streams on `conn`.
    pub async fn open(conn: &quinn::Connection, n: usize) -> Result<Self> {
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let s = conn
                .open_uni()
                .await
                .map_err(|e| MigrateError::Connection(format!("open a page stream: {e}")))?;
            streams.push(s);
        }
        Ok(PageSenders { streams })
    }

    /// Sends every frame `frames` yields, each on whichever stream is free, until the
    /// channel ends; returns once every frame was written to its stream. A failed stream
    /// closes `frames`, so the producer stops at its next batch.
    pub async fn send_all(
        &mut self,
        frames: Frames,
        progress: &mut dyn FnMut(Sent),
    ) -> Result<Sent> {
        let frames = Arc::new(Mutex::new(frames));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, u64)>();
        let mut tasks = tokio::task::JoinSet::new();
        for mut stream in std::mem::take(&mut self.streams) {
            let (frames, done_tx) = (frames.clone(), done_tx.clone());
            tasks.spawn(async move {
                loop {
                    let next = frames.lock().await.recv().await;
                    let Some((frame, pages)) = next else {
                        return (stream, Ok(()));
                    };
                    if let Err(e) = transport::send_frame(&mut stream, &frame).await {
                        frames.lock().await.close();
                        return (stream, Err(e));
                    }
                    let _ = done_tx.send((frame.len(), pages));
                }
            });
        }
        drop(done_tx);
        let mut sent = Sent::default();
        while let Some((len, pages)) = done_rx.recv().await {
            sent.frames += 1;
            sent.pages += pages;
            sent.wire_bytes += len as u64;
            progress(sent);
        }
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((stream, r)) => {
                    self.streams.push(stream);
                    if let Err(e) = r {
                        first_err.get_or_insert(e);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(MigrateError::Aborted(format!(
                        "a page stream task failed: {e}"
                    )));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    /// Ends the streams (the destination's readers see them finish).
    pub fn finish(mut self) {
        for s in &mut self.streams {
            let _ = s.finish();
        }
    }
}

/// Sends `frames` on the control stream, for a peer without page streams.
pub async fn send_on_control(
    tx: &mut quinn::SendStream,
    mut frames: Frames,
    progress: &mut dyn FnMut(Sent),
) -> Result<Sent> {
    let mut sent = Sent::default();
    while let Some((frame, pages)) = frames.recv().await {
        if let Err(e) = transport::send_frame(tx, &frame).await {
            // Closing the channel stops the producer at its next batch.
            frames.close();
            return Err(e);
        }
        sent.frames += 1;
        sent.pages += pages;
        sent.wire_bytes += frame.len() as u64;
        progress(sent);
    }
    Ok(sent)
}

/// Pages staged so far, per round, or what went wrong.
#[derive(Debug, Clone, Default)]
struct Staged {
    by_round: HashMap<u32, u64>,
    total: u64,
    failed: Option<String>,
}

/// A batch checked and decompressed, ready for the store.
struct Ready {
    round: u32,
    owner: images_format::mm::PageOwner,
    runs: Vec<(u64, u32)>,
    data: Vec<u8>,
}

/// Checks a batch's size and decompresses it.
fn unpack(b: PageBatch) -> Result<Ready> {
    let pages = b.pages();
    if pages > MAX_BATCH_PAGES {
        return Err(MigrateError::Connection(format!(
            "the source sent a batch of {pages} pages"
        )));
    }
    let data = if b.compressed {
        zstd::bulk::decompress(&b.data, (pages * 4096) as usize)
            .map_err(|e| MigrateError::Connection(format!("a compressed page batch: {e}")))?
    } else {
        b.data
    };
    let owner = match b.owner {
        proto::PageOwner::Process(p) => images_format::mm::PageOwner::Process(p),
        proto::PageOwner::Shmem(id) => images_format::mm::PageOwner::Shmem(id),
        proto::PageOwner::SysvShm(id) => images_format::mm::PageOwner::SysvShm(id),
    };
    Ok(Ready {
        round: b.round,
        owner,
        runs: b.runs,
        data,
    })
}

/// The destination's side: page streams read as they come, batches written into the
/// staging store by one thread.
pub struct StagingWorker {
    batches: Option<mpsc::Sender<Ready>>,
    staged_tx: Arc<watch::Sender<Staged>>,
    staged: watch::Receiver<Staged>,
    /// The round whose batches may come now: the one after the last acknowledged (the
    /// source starts a round only once the one before is acknowledged).
    round: Arc<AtomicU32>,
    writer: Option<std::thread::JoinHandle<Option<Staging>>>,
    readers: tokio::task::JoinSet<()>,
}

impl StagingWorker {
    /// Creates the staging store in `dir` and, with `streams`, starts taking the source's
    /// page streams on `conn`.
    pub fn start(dir: &Path, conn: &quinn::Connection, streams: bool) -> Result<Self> {
        let mut staging = Staging::create(dir)?;
        let (batches_tx, mut batches_rx) = mpsc::channel::<Ready>(8);
        let (staged_tx, staged) = watch::channel(Staged::default());
        let staged_tx = Arc::new(staged_tx);
        let report = staged_tx.clone();
        let writer = std::thread::Builder::new()
            .name("staging".into())
            .spawn(move || {
                while let Some(b) = batches_rx.blocking_recv() {
                    let pages: u64 = b.runs.iter().map(|r| r.1 as u64).sum();
                    if let Err(e) = staging.add(b.owner, &b.runs, &b.data) {
                        fail(&report, &e);
                        return None;
                    }
                    report.send_modify(|s| {
                        *s.by_round.entry(b.round).or_default() += pages;
                        s.total += pages;
                    });
                }
                Some(staging)
            })
            .map_err(|source| MigrateError::Io {
                op: "start the staging thread for",
                path: dir.to_path_buf(),
                source,
            })?;
        let mut worker = StagingWorker {
            batches: Some(batches_tx),
            staged_tx,
            staged,
            round: Arc::new(AtomicU32::new(0)),
            writer: Some(writer),
            readers: tokio::task::JoinSet::new(),
        };
        if streams {
            worker.accept_streams(conn.clone());
        }
        Ok(worker)
    }

    /// Reads every page stream the source opens, on a task each.
    fn accept_streams(&mut self, conn: quinn::Connection) {
        let (batches, round, report) = (
            self.batches.clone(),
            self.round.clone(),
            self.staged_tx.clone(),
        );
        self.readers.spawn(async move {
            let mut readers = tokio::task::JoinSet::new();
            while let Ok(mut stream) = conn.accept_uni().await {
                let (batches, round, report) = (batches.clone(), round.clone(), report.clone());
                readers.spawn(async move {
                    if let Err(e) = read_stream(&mut stream, batches, &round).await {
                        fail(&report, &e);
                    }
                });
            }
            // The connection ended: dropping the set ends its readers.
        });
    }

    /// Stages a batch that came on the control stream (a peer without page streams).
    pub async fn submit(&self, batch: PageBatch) -> Result<()> {
        submit(self.batches.as_ref(), &self.round, batch).await
    }

    /// Waits until `pages` pages of `round` are staged (its `RoundEnd` said so); returns
    /// the pages staged in all. The next batches must be of the round after it.
    pub async fn end_round(&mut self, round: u32, pages: u64) -> Result<u64> {
        loop {
            let now = self.staged.borrow_and_update().clone();
            if let Some(e) = now.failed {
                return Err(MigrateError::Aborted(format!("staging the pages: {e}")));
            }
            let got = now.by_round.get(&round).copied().unwrap_or(0);
            if got > pages {
                return Err(MigrateError::Connection(format!(
                    "the source sent {got} pages in round {round} and announced {pages}"
                )));
            }
            if got == pages {
                self.round.store(round.saturating_add(1), Ordering::SeqCst);
                return Ok(now.total);
            }
            match tokio::time::timeout(ROUND_STALL_TIMEOUT, self.staged.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(MigrateError::Aborted(
                        "the staging thread stopped".to_string(),
                    ))
                }
                Err(_) => {
                    return Err(MigrateError::Connection(format!(
                        "round {round}: {got} of {pages} pages arrived, then none for {} s",
                        ROUND_STALL_TIMEOUT.as_secs()
                    )))
                }
            }
        }
    }

    /// Resolves when a page stream or the staging thread failed: the control stream's
    /// reader waits on it too, so a bad page stream ends the migration at once.
    pub async fn failure(&self) -> MigrateError {
        let mut staged = self.staged.clone();
        loop {
            if let Some(e) = staged.borrow_and_update().failed.clone() {
                return MigrateError::Aborted(format!("staging the pages: {e}"));
            }
            if staged.changed().await.is_err() {
                // The sender lives in `self`: this cannot end while it is borrowed.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops reading page streams and returns the staging store with every batch received
    /// so far written.
    pub async fn finish(mut self) -> Result<Staging> {
        self.readers.shutdown().await;
        self.batches = None;
        let writer = self.writer.take();
        let staging = tokio::task::spawn_blocking(move || writer.and_then(|w| w.join().ok()))
            .await
            .ok()
            .flatten()
            .flatten();
        if let Some(e) = self.staged.borrow().failed.clone() {
            return Err(MigrateError::Aborted(format!("staging the pages: {e}")));
        }
        staging.ok_or_else(|| MigrateError::Aborted("the staging thread failed".into()))
    }
}

fn fail(report: &watch::Sender<Staged>, e: &MigrateError) {
    let why = crate::error_chain(e);
    report.send_modify(|s| {
        s.failed.get_or_insert(why);
    });
}

/// Checks a batch's round, unpacks it and queues it for the store.
async fn submit(
    batches: Option<&mpsc::Sender<Ready>>,
    round: &AtomicU32,
    batch: PageBatch,
) -> Result<()> {
    let expected = round.load(Ordering::SeqCst);
    if batch.round != expected {
        return Err(MigrateError::Connection(format!(
            "the source sent a batch of round {} while round {expected} is under way",
            batch.round
        )));
    }
    let ready = unpack(batch)?;
    match batches {
        Some(b) if b.send(ready).await.is_ok() => Ok(()),
        _ => Err(MigrateError::Aborted("the staging thread stopped".into())),
    }
}

/// Reads page batches from one page stream until the source finishes it.
async fn read_stream(
    stream: &mut quinn::RecvStream,
    batches: Option<mpsc::Sender<Ready>>,
    round: &AtomicU32,
) -> Result<()> {
    while let Some(m) = transport::recv(stream).await? {
        match m {
            Message::PageBatch(b) => submit(batches.as_ref(), round, b).await?,
            m => {
                return Err(MigrateError::Connection(format!(
                    "a page stream carried a {:?} message",
                    m.kind()
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{client, connect, server, Identity, Trust};

    fn batch(round: u32, addr: u64, pages: u32) -> (Vec<u8>, u64) {
        let m = Message::PageBatch(PageBatch {
            round,
            owner: proto::PageOwner::Process(7),
            runs: vec![(addr, pages)],
            compressed: false,
            data: vec![round as u8; pages as usize * 4096],
        });
        (proto::encode(&m).unwrap(), pages as u64)
    }

    /// A source and a destination connected over loopback: (source conn, destination conn).
    async fn pair(dir: &Path) -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
        let src = Identity::generate(&dir.join("src"), false).unwrap();
        let dst = Identity::generate(&dir.join("dst"), false).unwrap();
        let ep = server(
            "127.0.0.1:0".parse().unwrap(),
            &dst,
            Trust::from_fingerprints(&[src.fingerprint()]),
        )
        .unwrap();
        let addr = ep.local_addr().unwrap();
        let c = client(&src, Trust::from_fingerprints(&[dst.fingerprint()])).unwrap();
        let (a, b) = tokio::join!(connect(&c, addr), async {
            ep.accept().await.unwrap().await.unwrap()
        });
        (ep, a.unwrap(), b)
    }

    async fn send_round(senders: &mut PageSenders, batches: Vec<(Vec<u8>, u64)>) -> Sent {
        let (tx, rx) = mpsc::channel(2);
        let feed = tokio::spawn(async move {
            for b in batches {
                tx.send(b).await.unwrap();
            }
        });
        let sent = senders.send_all(rx, &mut |_| {}).await.unwrap();
        feed.await.unwrap();
        sent
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_of_a_round_over_several_streams_are_all_staged_before_the_ack() {
        let dir = tempfile::tempdir().unwrap();
        let (_ep, src, dst) = pair(dir.path()).await;
        let mut senders = PageSenders::open(&src, 3).await.unwrap();
        let mut worker = StagingWorker::start(&dir.path().join("staging"), &dst, true).unwrap();
        // Round 0: 40 batches of 1 to 4 pages at distinct addresses.
        let round0: Vec<_> = (0..40u64)
            .map(|i| batch(0, 0x100000 + i * 0x10000, (i % 4) as u32 + 1))
            .collect();
        let sent = send_round(&mut senders, round0).await;
        assert_eq!(sent.frames, 40);
        assert_eq!(sent.pages, (0..40).map(|i| i % 4 + 1).sum::<u64>());
        let total = worker.end_round(0, sent.pages).await.unwrap();
        assert_eq!(total, sent.pages);
        // Round 1 rewrites some pages.
        let sent1 = send_round(&mut senders, vec![batch(1, 0x100000, 2)]).await;
        assert_eq!(
            worker.end_round(1, sent1.pages).await.unwrap(),
            sent.pages + 2
        );
        let staging = worker.finish().await.unwrap();
        assert_eq!(staging.pages_received, sent.pages + 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_page_stream_fails_the_migration() {
        for (bad, wanted) in [
            (batch(3, 0x1000, 1).0, "batch of round 3 while round 0"),
            (
                proto::encode(&Message::FsDone(proto::FsDone { files: 0, bytes: 0 })).unwrap(),
                "page stream carried a FsDone",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (_ep, src, dst) = pair(dir.path()).await;
            let mut senders = PageSenders::open(&src, 2).await.unwrap();
            let worker = StagingWorker::start(&dir.path().join("staging"), &dst, true).unwrap();
            let (bad_n, good) = (0, batch(0, 0x2000, 1));
            send_round(&mut senders, vec![good, (bad, bad_n)]).await;
            let e = tokio::time::timeout(Duration::from_secs(10), worker.failure())
                .await
                .expect("the failure is seen")
                .to_string();
            assert!(e.contains(wanted), "{e}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_pages_than_announced_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_ep, src, dst) = pair(dir.path()).await;
        let mut senders = PageSenders::open(&src, 2).await.unwrap();
        let mut worker = StagingWorker::start(&dir.path().join("staging"), &dst, true).unwrap();
        let sent = send_round(&mut senders, vec![batch(0, 0x1000, 4)]).await;
        assert_eq!(sent.pages, 4);
        let e = worker.end_round(0, 3).await.unwrap_err().to_string();
        assert!(e.contains("sent 4 pages in round 0 and announced 3"), "{e}");
    }
}

/// Transport throughput alone (no VE, no tracker, no staging writes): `cargo test --release -p
/// migrate page_stream_throughput -- --ignored --nocapture`. Prints GB/s over loopback for
/// 1 and 4 page streams.
#[cfg(test)]
mod throughput {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test: run by hand in release mode"]
    async fn page_stream_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let src = crate::transport::Identity::generate(&dir.path().join("s"), false).unwrap();
        let dst = crate::transport::Identity::generate(&dir.path().join("d"), false).unwrap();
        let ep = crate::transport::server(
            "127.0.0.1:0".parse().unwrap(),
            &dst,
            crate::transport::Trust::from_fingerprints(&[src.fingerprint()]),
        )
        .unwrap();
        let addr = ep.local_addr().unwrap();
        let c = crate::transport::client(
            &src,
            crate::transport::Trust::from_fingerprints(&[dst.fingerprint()]),
        )
        .unwrap();
        for n in [1usize, 4, 1, 4] {
            let (a, b) = tokio::join!(crate::transport::connect(&c, addr), async {
                ep.accept().await.unwrap().await.unwrap()
            });
            let conn = a.unwrap();
            let sink = tokio::spawn(async move {
                let mut total = 0u64;
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..n {
                    let mut s = b.accept_uni().await.unwrap();
                    tasks.spawn(async move {
                        let mut got = 0u64;
                        while let Ok(Some(c)) = s.read_chunk(1 << 20, false).await {
                            got += c.bytes.len() as u64;
                        }
                        got
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    total += r.unwrap();
                }
                total
            });
            let mut senders = PageSenders::open(&conn, n).await.unwrap();
            let (tx, rx) = mpsc::channel(4);
            let frame = vec![0x5au8; 4 << 20];
            let t0 = std::time::Instant::now();
            let feed = tokio::spawn(async move {
                for _ in 0..256 {
                    tx.send((frame.clone(), 1024)).await.unwrap();
                }
            });
            // A stream's first write opens it on the wire: the sink accepts them as they come.
            let sent = senders.send_all(rx, &mut |_| {}).await.unwrap();
            feed.await.unwrap();
            senders.finish();
            let got = sink.await.unwrap();
            let secs = t0.elapsed().as_secs_f64();
            assert_eq!(got, sent.wire_bytes);
            println!(
                "{n} stream(s): {:.2} GB/s ({} MiB in {secs:.2} s)",
                got as f64 / secs / 1e9,
                got >> 20
            );
            conn.close(0u32.into(), b"done");
        }
    }
}
