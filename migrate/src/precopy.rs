//! The source's memory pre-copy: rounds of pages sent while the VE runs.
//!
//! Round 0 write-protects every private anonymous area of the VE (userfaultfd in async
//! write-protect mode, see `cpt::track`) and sends all their present pages; each later round
//! sends only the pages written since the one before (`PAGEMAP_SCAN`, which protects them
//! again). Before each round the engine asks the tracker how many pages are written by now:
//! once sending them would take no longer than the downtime budget at the bandwidth the last
//! round measured, or after `max_rounds`, the pre-copy ends and the final dump (VE stopped)
//! stores only what is still written; the destination holds the rest.
//!
//! Pages are read on a blocking thread and handed to the async side through a bounded
//! channel, so reading and sending overlap.

use std::path::PathBuf;
use std::time::Instant;

use cpt::track::Tracker;
use cpt::DumpError;
use images_format::mm::PageOwner as ImagePageOwner;
use proto::{Message, PageBatch, PageOwner, RoundBegin, RoundEnd};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::staging::MAX_BATCH_PAGES;
use crate::streams::{send_on_control, PageSenders, Sent};
use crate::{MigrateError, Result};

/// How an online migration pre-copies.
#[derive(Debug, Clone, Copy)]
pub struct OnlineOptions {
    /// The time the VE may stay stopped for its last pages (`--downtime-ms`).
    pub downtime_ms: u64,
    /// Rounds after the first before the pre-copy gives up converging.
    pub max_rounds: u32,
    /// zstd per batch (`--compress`).
    pub compress: bool,
    /// QUIC streams for the pages beside the control stream (`--page-streams`; 0: the
    /// control stream carries them).
    pub page_streams: usize,
}

impl Default for OnlineOptions {
    fn default() -> Self {
        OnlineOptions {
            downtime_ms: 100,
            max_rounds: 8,
            compress: false,
            page_streams: crate::streams::PAGE_STREAMS,
        }
    }
}

/// One round, as `vzmigrate --json` reports it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundReport {
    pub round: u32,
    pub pages: u64,
    /// Page bytes (before compression).
    pub bytes: u64,
    /// Bytes of the batches on the wire (after compression).
    pub wire_bytes: u64,
    pub ms: f64,
}

/// Groups emitted pages into batches of one owner, at most one chunk each.
struct Batcher {
    round: u32,
    compress: bool,
    /// Encoded `PageBatch` frames, with the pages each holds.
    out: mpsc::Sender<(Vec<u8>, u64)>,
    owner: Option<PageOwner>,
    runs: Vec<(u64, u32)>,
    data: Vec<u8>,
}

fn stopped() -> DumpError {
    DumpError::Tree("the transfer of the pages stopped".into())
}

impl Batcher {
    fn push(
        &mut self,
        owner: ImagePageOwner,
        addr: u64,
        bytes: &[u8],
    ) -> std::result::Result<(), DumpError> {
        let ImagePageOwner::Process(pid) = owner else {
            return Err(DumpError::Tree(format!(
                "pre-copy of {owner:?}: only process memory is pre-copied"
            )));
        };
        let owner = PageOwner::Process(pid);
        let n = (bytes.len() / images_format::PAGE_SIZE) as u64;
        let held = (self.data.len() / images_format::PAGE_SIZE) as u64;
        if self.owner != Some(owner) || held + n > MAX_BATCH_PAGES {
            self.flush()?;
        }
        self.owner = Some(owner);
        match self.runs.last_mut() {
            Some((a, k)) if *a + *k as u64 * 4096 == addr => *k += n as u32,
            _ => self.runs.push((addr, n as u32)),
        }
        self.data.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), DumpError> {
        let Some(owner) = self.owner.take() else {
            return Ok(());
        };
        let raw = std::mem::take(&mut self.data);
        let (data, compressed) = match self.compress {
            true => match zstd::bulk::compress(&raw, 1) {
                Ok(c) if c.len() < raw.len() => (c, true),
                _ => (raw, false),
            },
            false => (raw, false),
        };
        let batch = PageBatch {
            round: self.round,
            owner,
            runs: std::mem::take(&mut self.runs),
            compressed,
            data,
        };
        let pages = batch.pages();
        let frame = proto::encode(&Message::PageBatch(batch))
            .map_err(|e| DumpError::Tree(format!("a page batch: {e}")))?;
        self.out
            .blocking_send((frame, pages))
            .map_err(|_| stopped())
    }
}

fn blocking_err(e: &tokio::task::JoinError) -> MigrateError {
    MigrateError::Aborted(format!("the page tracker thread failed: {e}"))
}

/// The pre-copy of one migration: the tracker and what the rounds did.
pub struct Precopy {
    /// Away on the blocking thread while a round runs.
    tracker: Option<Tracker>,
    pub rounds: Vec<RoundReport>,
    /// Bytes per millisecond the last round measured.
    bandwidth: f64,
    /// The page streams, when the destination takes them (else batches go on the control
    /// stream).
    pub senders: Option<PageSenders>,
}

impl Precopy {
    /// Arms the tracker on the VE's cgroup (the VE is stopped for a moment).
    pub async fn arm(cgroup: PathBuf) -> Result<Self> {
        let tracker = tokio::task::spawn_blocking(move || Tracker::arm(&cgroup))
            .await
            .map_err(|e| blocking_err(&e))?
            .map_err(|e| MigrateError::Aborted(format!("tracking the VE's memory: {e}")))?;
        Ok(Precopy {
            tracker: Some(tracker),
            rounds: Vec::new(),
            bandwidth: 0.0,
            senders: None,
        })
    }

    /// Pages written since the last round (what the next one, or the final dump, sends).
    pub async fn pending(&mut self) -> Result<u64> {
        let mut t = self.take()?;
        let (t, r) = tokio::task::spawn_blocking(move || {
            let r = t.pending_pages();
            (t, r)
        })
        .await
        .map_err(|e| blocking_err(&e))?;
        self.tracker = Some(t);
        r.map_err(|e| MigrateError::Aborted(format!("tracking the VE's memory: {e}")))
    }

    fn take(&mut self) -> Result<Tracker> {
        self.tracker.take().ok_or_else(|| {
            MigrateError::Aborted("the page tracker was lost by an earlier failure".into())
        })
    }

    /// What the destination holds, for the final dump.
    pub fn sent(&self) -> Result<images_format::track::SentPagesImage> {
        self.tracker
            .as_ref()
            .map(Tracker::sent)
            .ok_or_else(|| MigrateError::Aborted("the page tracker was lost".into()))
    }

    /// Stops tracking: the VE's areas lose their write protection.
    pub fn disarm(&mut self) {
        self.tracker = None;
    }

    /// Whether the pages written by now are worth another round, or fit the budget.
    pub fn converged(&self, pending: u64, opts: &OnlineOptions) -> bool {
        let n = self.rounds.len() as u32;
        if n == 0 {
            return false;
        }
        if n > opts.max_rounds || pending == 0 || self.bandwidth <= 0.0 {
            return true;
        }
        let est_ms = (pending * images_format::PAGE_SIZE as u64) as f64 / self.bandwidth;
        est_ms <= opts.downtime_ms as f64
    }

    /// Runs one round: pages read on a blocking thread, sent here as they come.
    pub async fn round(
        &mut self,
        opts: &OnlineOptions,
        tx: &mut quinn::SendStream,
        rx: &mut quinn::RecvStream,
        wire: &mut u64,
        progress: crate::offline::Progress<'_>,
    ) -> Result<RoundReport> {
        let round = self.rounds.len() as u32;
        let t0 = Instant::now();
        let (btx, brx) = mpsc::channel::<(Vec<u8>, u64)>(4);
        let mut tracker = self.take()?;
        let compress = opts.compress;
        let reading = tokio::task::spawn_blocking(move || {
            let mut b = Batcher {
                round,
                compress,
                out: btx,
                owner: None,
                runs: Vec::new(),
                data: Vec::new(),
            };
            let r = tracker
                .round(&mut |o, a, d| b.push(o, a, d))
                .and_then(|s| b.flush().map(|()| s));
            (tracker, r)
        });
        let m = Message::RoundBegin(RoundBegin { round, pages: 0 });
        *wire += proto::encode(&m)?.len() as u64;
        crate::transport::send(tx, &m).await?;
        let mut report = RoundReport {
            round,
            ..Default::default()
        };
        let label = format!("memory round {round}");
        let mut shown = |s: Sent| progress(&label, s.pages * images_format::PAGE_SIZE as u64, 0);
        let sent = match self.senders.as_mut() {
            Some(streams) => streams.send_all(brx, &mut shown).await,
            None => send_on_control(tx, brx, &mut shown).await,
        };
        let (tracker, stats) = reading.await.map_err(|e| blocking_err(&e))?;
        self.tracker = Some(tracker);
        let sent = match sent {
            Ok(s) => s,
            Err(e) => return Err(crate::offline::peer_reason(rx, e).await),
        };
        report.pages = sent.pages;
        report.bytes = sent.pages * images_format::PAGE_SIZE as u64;
        report.wire_bytes = sent.wire_bytes;
        *wire += sent.wire_bytes;
        stats.map_err(|e| MigrateError::Aborted(format!("pre-copy round {round}: {e}")))?;
        let m = Message::RoundEnd(RoundEnd {
            round,
            pages: report.pages,
            bytes: report.bytes,
            last: false,
        });
        *wire += proto::encode(&m)?.len() as u64;
        crate::transport::send(tx, &m).await?;
        match crate::offline::expect(rx).await? {
            Message::RoundAck(a) if a.round == round => {}
            m => return Err(crate::offline::unexpected(&m, "RoundAck")),
        }
        report.ms = t0.elapsed().as_secs_f64() * 1000.0;
        if report.ms > 0.0 && report.bytes > 0 {
            self.bandwidth = report.bytes as f64 / report.ms;
        }
        self.rounds.push(report.clone());
        Ok(report)
    }
}
