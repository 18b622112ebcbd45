//! The destination's staged memory of an online migration.
//!
//! Each pre-copy round's pages are appended, as they arrive, to a page store of the image
//! format (`pages`, in a directory beside the incoming image); an index remembers where the
//! latest copy of every page is. The source's last dump stores only the pages written since
//! the last round and names all the others in its `parent-pages` record; [`Staging::merge`]
//! then appends the last pages to the same store, writes a pagemap that points every page at
//! its latest copy, and moves the store into the image. So the restore reads the pages where
//! they landed when they arrived: nothing of the whole memory is copied while the VE is
//! stopped. Copies of a page that a later round replaced stay in the store, unreferenced (the
//! image is as large as what was sent, not as the memory).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use images_format::mm::{PageOwner, PagemapEntry, PagemapImage, ParentPagesImage};
use images_format::{ImageDir, ImageKind, PageLoc, PageStoreWriter, PAGE_SIZE};

use crate::{MigrateError, Result};

const PAGE: u64 = PAGE_SIZE as u64;
/// Most pages one batch may carry (its data is at most one page-store chunk).
pub const MAX_BATCH_PAGES: u64 = (images_format::CHUNK_SIZE / PAGE_SIZE) as u64;

/// An owner as a sortable key: kind, then id.
fn owner_key(o: PageOwner) -> (u8, u64) {
    match o {
        PageOwner::Process(pid) => (0, pid as u32 as u64),
        PageOwner::Shmem(id) => (1, id),
        PageOwner::SysvShm(id) => (2, id as u32 as u64),
        PageOwner::TmpfsFile(id) => (3, id as u64),
    }
}

fn bad(reason: &str) -> MigrateError {
    MigrateError::Connection(format!("the source sent {reason}"))
}

fn fmt_err(e: &images_format::FormatError) -> MigrateError {
    MigrateError::Aborted(format!("staged pages: {}", crate::error_chain(e)))
}

pub struct Staging {
    dir: PathBuf,
    store: PageStoreWriter,
    /// Owner -> page address -> where its latest copy is.
    latest: HashMap<PageOwner, BTreeMap<u64, PageLoc>>,
    /// Pages received (a page sent twice counts twice).
    pub pages_received: u64,
}

impl Staging {
    /// A new, empty staging store in `dir` (created; it must not hold a store yet).
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| MigrateError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(ImageKind::Pages.file_name());
        let _ = std::fs::remove_file(&path);
        Ok(Staging {
            dir: dir.to_path_buf(),
            store: PageStoreWriter::create_file(&path, None).map_err(|e| fmt_err(&e))?,
            latest: HashMap::new(),
            pages_received: 0,
        })
    }

    /// Stages `runs` (address, pages) of `owner`, whose bytes are `data` in order.
    pub fn add(&mut self, owner: PageOwner, runs: &[(u64, u32)], data: &[u8]) -> Result<()> {
        let pages: u64 = runs.iter().map(|r| r.1 as u64).sum();
        if pages > MAX_BATCH_PAGES || pages * PAGE != data.len() as u64 {
            return Err(bad(&format!(
                "a page batch of {pages} pages with {} bytes of data",
                data.len()
            )));
        }
        let map = self.latest.entry(owner).or_default();
        let mut at = 0usize;
        for &(addr, n) in runs {
            if addr % PAGE != 0 || n == 0 || addr.checked_add(n as u64 * PAGE).is_none() {
                return Err(bad(&format!("a page run of {n} pages at {addr:#x}")));
            }
            let mut done = 0u64;
            while done < n as u64 {
                let fit = (self.store.room() / PAGE_SIZE) as u64;
                let k = fit.min(n as u64 - done);
                let len = (k * PAGE) as usize;
                let loc = self
                    .store
                    .append(&data[at..at + len])
                    .map_err(|e| fmt_err(&e))?;
                for i in 0..k {
                    map.insert(
                        addr + (done + i) * PAGE,
                        PageLoc {
                            chunk: loc.chunk,
                            offset: loc.offset + (i * PAGE) as u32,
                        },
                    );
                }
                at += len;
                done += k;
            }
        }
        self.pages_received += pages;
        Ok(())
    }

    /// Completes the image at `image` (received records, and a page store holding the last
    /// pages only): its own pages join the staged ones, its parent runs are resolved, and
    /// the staged store becomes the image's `pages`. An image without a `parent-pages`
    /// record (the source fell back to a full dump) is left as it is.
    pub fn merge(mut self, image: &Path) -> Result<MergeStats> {
        let dir = ImageDir::open(image).map_err(|e| fmt_err(&e))?;
        if !dir.has(ImageKind::ParentPages) {
            return Ok(MergeStats::default());
        }
        let parent: ParentPagesImage = dir.read().map_err(|e| fmt_err(&e))?;
        let last: PagemapImage = dir.read().map_err(|e| fmt_err(&e))?;
        let reader = dir.page_store(&last.store).map_err(|e| fmt_err(&e))?;
        let mut stats = MergeStats::default();
        // The last dump's own pages: appended, entry by entry, chunk by chunk.
        let mut cached: Option<(u32, Vec<u8>)> = None;
        for e in &last.entries {
            if cached.as_ref().map(|c| c.0) != Some(e.loc.chunk) {
                cached = Some((
                    e.loc.chunk,
                    reader.chunk(e.loc.chunk).map_err(|e| fmt_err(&e))?,
                ));
            }
            let Some((_, raw)) = &cached else { continue };
            let start = e.loc.offset as usize;
            let end = start + e.nr_pages as usize * PAGE_SIZE;
            let data = raw.get(start..end).ok_or_else(|| {
                bad(&format!(
                    "a last dump whose pagemap entry at {:#x} lies outside its chunk",
                    e.addr
                ))
            })?;
            self.add(e.owner, &[(e.addr, e.nr_pages)], data)?;
            stats.last_pages += e.nr_pages as u64;
        }
        // Every page the image holds now: its own and the parent's, each at its latest copy.
        let mut wanted: HashMap<PageOwner, Vec<(u64, u32)>> = HashMap::new();
        for e in &last.entries {
            wanted
                .entry(e.owner)
                .or_default()
                .push((e.addr, e.nr_pages));
        }
        for r in &parent.runs {
            wanted
                .entry(r.owner)
                .or_default()
                .push((r.addr, r.nr_pages));
            stats.parent_pages += r.nr_pages as u64;
        }
        // Each run lies in one memory area (the dump makes them so): pages are joined only
        // within a run, when their copies are also consecutive in one chunk.
        let mut entries: Vec<PagemapEntry> = Vec::new();
        let mut owners: Vec<PageOwner> = wanted.keys().copied().collect();
        owners.sort_by_key(|o| owner_key(*o));
        for owner in owners {
            let map = self.latest.get(&owner);
            let mut mine: Vec<PagemapEntry> = Vec::new();
            for &(addr, n) in &wanted[&owner] {
                let mut current: Option<PagemapEntry> = None;
                for i in 0..n as u64 {
                    let page = addr + i * PAGE;
                    let loc = map.and_then(|m| m.get(&page)).copied().ok_or_else(|| {
                        bad(&format!(
                            "a last dump that keeps page {page:#x} of {owner:?} from the rounds, \
                             which never sent it"
                        ))
                    })?;
                    if let Some(c) = current.as_mut() {
                        if c.loc.chunk == loc.chunk
                            && c.loc.offset as u64 + c.nr_pages as u64 * PAGE == loc.offset as u64
                        {
                            c.nr_pages += 1;
                            continue;
                        }
                        mine.push(*c);
                    }
                    current = Some(PagemapEntry {
                        owner,
                        addr: page,
                        nr_pages: 1,
                        loc,
                    });
                }
                mine.extend(current);
            }
            // The restore reads chunk by chunk, taking consecutive entries of one chunk
            // together: order by where the copies are.
            mine.sort_by_key(|e| (e.loc.chunk, e.loc.offset));
            entries.extend(mine);
        }
        drop(reader);
        let store = self.store.finish().map_err(|e| fmt_err(&e))?;
        stats.store_bytes = store.chunks.iter().map(|c| c.stored_len as u64).sum();
        stats.entries = entries.len();
        images_format::replace_record(image, &PagemapImage { store, entries })
            .map_err(|e| fmt_err(&e))?;
        let pages = image.join(ImageKind::Pages.file_name());
        let staged = self.dir.join(ImageKind::Pages.file_name());
        std::fs::rename(&staged, &pages).map_err(|source| MigrateError::Io {
            op: "move the staged pages into",
            path: pages.clone(),
            source,
        })?;
        let parent_file = image.join(ImageKind::ParentPages.file_name());
        std::fs::remove_file(&parent_file).map_err(|source| MigrateError::Io {
            op: "remove",
            path: parent_file,
            source,
        })?;
        Ok(stats)
    }
}

/// What [`Staging::merge`] did.
#[derive(Debug, Clone, Default)]
pub struct MergeStats {
    /// Pages the last dump stored itself.
    pub last_pages: u64,
    /// Pages it took from the rounds.
    pub parent_pages: u64,
    pub entries: usize,
    pub store_bytes: u64,
}
