//! Chains of incremental images (`vzcpt dump --parent DIR`).
//!
//! An incremental image stores only the pages written since its parent; its `parent-pages`
//! record lists the runs of pages its parent holds, and its inventory names the parent's
//! directory (relative to the image's own directory, so a chain can be moved as a whole).
//! [`Chain::open`] follows the parents from an image down to a standalone one (at most
//! [`MAX_CHAIN`] images, no cycle, every parent an older image of the same tree) and resolves
//! every parent run into the page store of the image that really holds the page, so a reader
//! sees one flat list of pagemap entries over one virtual page store ([`ChainStore`]) whose
//! chunk numbers run through the images' stores one after the other (the top image's first).
//! [`merge`] writes that as one standalone image.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::mm::{PageOwner, PagemapEntry, PagemapImage, ParentPagesImage};
use crate::pagestore::{ChunkDesc, PageLoc, PageStoreReader, CHUNK_SIZE};
use crate::{FormatError, ImageDir, ImageKind, ImageWriter, PageBuf, Result, PAGE_SIZE};

/// Most images in a chain (the top one included).
pub const MAX_CHAIN: usize = 64;
/// The `parent` of a migration's last dump, whose parent runs are the destination's staged
/// pages: never a directory.
pub const STAGED: &str = "staged";

const PAGE: u64 = PAGE_SIZE as u64;

/// One image of a chain.
pub struct ChainImage {
    pub dir: ImageDir,
    pub pagemap: PagemapImage,
    pub parent_pages: Option<ParentPagesImage>,
}

/// An image and its parents, runs resolved. See the module docs.
pub struct Chain {
    /// The top image first, then its parent, and so on.
    pub images: Vec<ChainImage>,
    /// First global chunk number of each image's page store.
    bases: Vec<u32>,
    /// The top image's pages, parent runs resolved, in global chunk order.
    pub entries: Vec<PagemapEntry>,
    /// Per owner, indexes into `entries` sorted by address.
    by_owner: HashMap<PageOwner, Vec<usize>>,
}

fn chain_err(path: &Path, reason: impl Into<String>) -> FormatError {
    FormatError::Chain {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Where the image `dir` says its parent is: `parent` itself if absolute, else relative to
/// `dir`.
pub fn parent_path(dir: &Path, parent: &str) -> PathBuf {
    let p = Path::new(parent);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// `target` relative to directory `from` (both made absolute first), or `target` made
/// absolute when they share nothing but the root.
pub fn relative_path(from: &Path, target: &Path) -> std::io::Result<PathBuf> {
    let from = std::path::absolute(from)?;
    let target = std::fs::canonicalize(target)?;
    let from_c: Vec<_> = from.components().collect();
    let to_c: Vec<_> = target.components().collect();
    let common = from_c.iter().zip(&to_c).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return Ok(target);
    }
    let mut out = PathBuf::new();
    for _ in common..from_c.len() {
        out.push("..");
    }
    for c in &to_c[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Ok(out)
}

/// Entries sorted by address, per owner.
fn index_by_owner(entries: &[PagemapEntry]) -> HashMap<PageOwner, Vec<usize>> {
    let mut by: HashMap<PageOwner, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        by.entry(e.owner).or_default().push(i);
    }
    for v in by.values_mut() {
        v.sort_by_key(|&i| entries[i].addr);
    }
    by
}

/// The entry of `entries` (through `by`) holding page `addr` of `owner`: where that page is,
/// and how many pages of the entry follow it (itself included).
fn lookup(
    entries: &[PagemapEntry],
    by: &HashMap<PageOwner, Vec<usize>>,
    owner: PageOwner,
    addr: u64,
) -> Option<(PageLoc, u32)> {
    let list = by.get(&owner)?;
    let end = |e: &PagemapEntry| e.addr.saturating_add(e.nr_pages as u64 * PAGE);
    let k = list.partition_point(|&i| end(&entries[i]) <= addr);
    let e = entries.get(*list.get(k)?)?;
    if e.addr > addr || addr % PAGE != e.addr % PAGE {
        return None;
    }
    let skip = (addr - e.addr) / PAGE;
    let offset = e.loc.offset as u64 + skip * PAGE;
    Some((
        PageLoc {
            chunk: e.loc.chunk,
            offset: u32::try_from(offset).ok()?,
        },
        e.nr_pages - skip as u32,
    ))
}

impl Chain {
    /// Opens `top` and its parents and resolves every parent run (see the module docs).
    /// Refused, naming the image: a parent missing or damaged (every record of the chain is
    /// read and checksummed; page chunks are checked by [`ChainStore::verify_all`]), a chain
    /// longer than [`MAX_CHAIN`], a cycle, a parent of another tree (other root PID) or not
    /// older than its child, a migration's `staged` parent, a run its parent does not hold.
    pub fn open(top: &Path) -> Result<Chain> {
        let mut images: Vec<ChainImage> = Vec::new();
        let mut seen = HashSet::new();
        let mut path = top.to_path_buf();
        loop {
            let child = images.last().map(|c| c.dir.path().to_path_buf());
            let what = |reason: String| match &child {
                Some(c) => chain_err(c, format!("its parent {} {reason}", path.display())),
                None => chain_err(&path, reason),
            };
            let canon =
                std::fs::canonicalize(&path).map_err(|e| what(format!("cannot be opened: {e}")))?;
            if !seen.insert(canon) {
                return Err(what("is already in the chain (a cycle)".into()));
            }
            if images.len() == MAX_CHAIN {
                return Err(chain_err(
                    top,
                    format!("its chain of parents is longer than {MAX_CHAIN} images"),
                ));
            }
            let wrap = |e: FormatError| match &child {
                Some(_) => what(format!("is not a valid image: {e}")),
                None => e,
            };
            let dir = ImageDir::open(&path).map_err(wrap)?;
            let pagemap: PagemapImage = dir.read().map_err(wrap)?;
            let parent_pages: Option<ParentPagesImage> = if dir.has(ImageKind::ParentPages) {
                Some(dir.read().map_err(wrap)?)
            } else {
                None
            };
            let inv = dir.inventory().clone();
            if let Some(pp) = &parent_pages {
                if pp.parent == STAGED {
                    return Err(chain_err(
                        &path,
                        "part of its pages are a live migration's staged pages (record \
                         `parent-pages`, parent `staged`): only that migration's destination \
                         can restore it",
                    ));
                }
                if inv.parent.is_none() {
                    return Err(chain_err(
                        &path,
                        "it refers to pages of a parent (record `parent-pages`) but its \
                         inventory names no parent",
                    ));
                }
            }
            if let Some(c) = images.last() {
                let ci = c.dir.inventory();
                if inv.root_pid != ci.root_pid {
                    return Err(what(format!(
                        "is an image of another tree (root PID {}, the child's is {})",
                        inv.root_pid, ci.root_pid
                    )));
                }
                if inv.created_unix_ms > ci.created_unix_ms {
                    return Err(what("was made after its child".into()));
                }
            }
            let next = inv.parent.as_deref().map(|p| parent_path(&path, p));
            images.push(ChainImage {
                dir,
                pagemap,
                parent_pages,
            });
            match next {
                Some(p) => path = p,
                None => break,
            }
        }
        let mut bases = Vec::with_capacity(images.len());
        let mut base: u32 = 0;
        for img in &images {
            bases.push(base);
            base = u32::try_from(img.pagemap.store.chunks.len())
                .ok()
                .and_then(|n| base.checked_add(n))
                .ok_or_else(|| chain_err(top, "the chain has more than 2^32 page chunks"))?;
        }
        // From the oldest image up: each image's own entries, plus its runs resolved in the
        // resolved entries of its parent.
        let mut below: Vec<PagemapEntry> = Vec::new();
        for k in (0..images.len()).rev() {
            let img = &images[k];
            let path = img.dir.path();
            let nchunks = img.pagemap.store.chunks.len();
            let mut res = Vec::with_capacity(img.pagemap.entries.len());
            for e in &img.pagemap.entries {
                if e.loc.chunk as usize >= nchunks {
                    return Err(chain_err(
                        path,
                        format!(
                            "pagemap entry at {:#x} points to chunk {} of {nchunks}",
                            e.addr, e.loc.chunk
                        ),
                    ));
                }
                let mut g = *e;
                g.loc.chunk += bases[k];
                res.push(g);
            }
            if let Some(pp) = &img.parent_pages {
                let by = index_by_owner(&below);
                let parent = images
                    .get(k + 1)
                    .map_or_else(|| path.to_path_buf(), |p| p.dir.path().to_path_buf());
                for run in &pp.runs {
                    let mut addr = run.addr;
                    let mut left = run.nr_pages;
                    while left > 0 {
                        let (loc, avail) =
                            lookup(&below, &by, run.owner, addr).ok_or_else(|| {
                                chain_err(
                                    path,
                                    format!(
                                        "it refers to page {addr:#x} of {:?}, which its parent \
                                         {} does not hold",
                                        run.owner,
                                        parent.display()
                                    ),
                                )
                            })?;
                        let n = avail.min(left);
                        res.push(PagemapEntry {
                            owner: run.owner,
                            addr,
                            nr_pages: n,
                            loc,
                        });
                        left -= n;
                        addr = addr.checked_add(n as u64 * PAGE).ok_or_else(|| {
                            chain_err(path, "a parent run goes past the address space")
                        })?;
                    }
                }
            }
            res.sort_by_key(|e| (e.loc.chunk, e.loc.offset));
            below = res;
        }
        let by_owner = index_by_owner(&below);
        Ok(Chain {
            images,
            bases,
            entries: below,
            by_owner,
        })
    }

    /// The top image.
    pub fn top(&self) -> &ImageDir {
        &self.images[0].dir
    }

    /// Where page `addr` of `owner` is (global chunk number), if the chain holds it.
    pub fn find(&self, owner: PageOwner, addr: u64) -> Option<PageLoc> {
        lookup(&self.entries, &self.by_owner, owner, addr).map(|(loc, _)| loc)
    }

    /// Chunks of all the page stores together.
    pub fn chunk_count(&self) -> usize {
        self.images
            .iter()
            .map(|i| i.pagemap.store.chunks.len())
            .sum()
    }

    /// The description of global chunk `i`.
    pub fn chunk_desc(&self, i: u32) -> Option<&ChunkDesc> {
        let k = self.bases.partition_point(|&b| b <= i).checked_sub(1)?;
        self.images[k]
            .pagemap
            .store
            .chunks
            .get((i - self.bases[k]) as usize)
    }

    /// Opens every image's page store.
    pub fn store(&self) -> Result<ChainStore> {
        Ok(ChainStore {
            readers: self
                .images
                .iter()
                .map(|i| i.dir.page_store(&i.pagemap.store))
                .collect::<Result<_>>()?,
            bases: self.bases.clone(),
        })
    }
}

/// Anything page data can be read from by chunk number.
pub trait ChunkSource: Sync {
    /// Reads and checks chunk `i` into `out`; returns its raw length.
    fn chunk_into(&self, i: u32, out: &mut PageBuf) -> Result<usize>;
}

impl ChunkSource for PageStoreReader {
    fn chunk_into(&self, i: u32, out: &mut PageBuf) -> Result<usize> {
        PageStoreReader::chunk_into(self, i, out)
    }
}

/// The page stores of a chain as one, by global chunk number (see [`Chain`]).
pub struct ChainStore {
    readers: Vec<PageStoreReader>,
    bases: Vec<u32>,
}

impl ChainStore {
    /// Reads and verifies every chunk of every image.
    pub fn verify_all(&self) -> Result<()> {
        self.readers.iter().try_for_each(|r| r.verify_all())
    }
}

impl ChunkSource for ChainStore {
    fn chunk_into(&self, i: u32, out: &mut PageBuf) -> Result<usize> {
        let k = self
            .bases
            .partition_point(|&b| b <= i)
            .checked_sub(1)
            .ok_or(FormatError::InvalidUse {
                reason: "a chain with no image".into(),
            })?;
        self.readers[k].chunk_into(i - self.bases[k], out)
    }
}

/// Figures of a [`merge`].
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MergeStats {
    pub images: usize,
    pub pages: u64,
    pub chunks: usize,
}

/// Writes the image `top` and its parents as one standalone image at `out` (every record of
/// `top`, its pages and those it refers to in one page store, no parent, no tracking state),
/// `compress` as `vzcpt dump --compress`. Every chunk read is checked.
pub fn merge(top: &Path, out: &Path, compress: Option<i32>) -> Result<MergeStats> {
    let chain = Chain::open(top)?;
    let store = chain.store()?;
    let mut writer = ImageWriter::create(out)?;
    for &kind in ImageKind::ALL {
        if matches!(
            kind,
            ImageKind::Inventory
                | ImageKind::Pagemap
                | ImageKind::Pages
                | ImageKind::ParentPages
                | ImageKind::TrackState
                | ImageKind::SentPages
        ) || !chain.top().has(kind)
        {
            continue;
        }
        let from = chain.top().path().join(kind.file_name());
        let to = writer.tmp_path().join(kind.file_name());
        std::fs::copy(&from, &to).map_err(|e| FormatError::io("copy", &from, e))?;
    }
    let mut pages = writer.page_store(compress)?;
    let mut buf = PageBuf::new(CHUNK_SIZE)?;
    let mut loaded: Option<(u32, usize)> = None;
    let mut entries = Vec::with_capacity(chain.entries.len());
    let mut count = 0u64;
    for e in &chain.entries {
        let len = match loaded {
            Some((c, len)) if c == e.loc.chunk => len,
            _ => {
                let len = store.chunk_into(e.loc.chunk, &mut buf)?;
                loaded = Some((e.loc.chunk, len));
                len
            }
        };
        let start = e.loc.offset as usize;
        let data = buf
            .get(start..start + e.nr_pages as usize * PAGE_SIZE)
            .filter(|_| start + e.nr_pages as usize * PAGE_SIZE <= len)
            .ok_or_else(|| {
                chain_err(
                    top,
                    format!("pagemap entry at {:#x} points past its chunk", e.addr),
                )
            })?;
        let mut done = 0;
        while done < data.len() {
            let n = pages.room().min(data.len() - done);
            let loc = pages.append(&data[done..done + n])?;
            entries.push(PagemapEntry {
                owner: e.owner,
                addr: e.addr + done as u64,
                nr_pages: (n / PAGE_SIZE) as u32,
                loc,
            });
            done += n;
        }
        count += e.nr_pages as u64;
    }
    let index = pages.finish()?;
    let chunks = index.chunks.len();
    writer.write(&PagemapImage {
        store: index,
        entries,
    })?;
    let mut inv = chain.top().inventory().clone();
    inv.parent = None;
    inv.compressed = compress.is_some();
    writer.write(&inv)?;
    writer.commit()?;
    Ok(MergeStats {
        images: chain.images.len(),
        pages: count,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::ParentRun;
    use crate::Inventory;

    const OWNER: PageOwner = PageOwner::Process(7);

    fn page(tag: u8) -> Vec<u8> {
        vec![tag; PAGE_SIZE]
    }

    /// An image at `dir` holding `pages` (address, fill byte) of process 7, referring to
    /// `runs` of `parent`, made at `time`.
    fn image(
        dir: &Path,
        root: i32,
        time: u64,
        parent: Option<&str>,
        pages: &[(u64, u8)],
        runs: &[(u64, u32)],
    ) {
        let mut w = ImageWriter::create(dir).unwrap();
        let mut store = w.page_store(None).unwrap();
        let mut entries = Vec::new();
        for &(addr, tag) in pages {
            let loc = store.append(&page(tag)).unwrap();
            entries.push(PagemapEntry {
                owner: OWNER,
                addr,
                nr_pages: 1,
                loc,
            });
        }
        let index = store.finish().unwrap();
        w.write(&PagemapImage {
            store: index,
            entries,
        })
        .unwrap();
        if !runs.is_empty() {
            w.write(&ParentPagesImage {
                parent: parent.unwrap_or(STAGED).to_string(),
                runs: runs
                    .iter()
                    .map(|&(addr, nr_pages)| ParentRun {
                        owner: OWNER,
                        addr,
                        nr_pages,
                    })
                    .collect(),
            })
            .unwrap();
        }
        w.write(&Inventory {
            format_major: crate::FORMAT_MAJOR,
            format_minor: crate::FORMAT_MINOR,
            engine_version: "test".into(),
            kernel: "test".into(),
            arch: "x86_64".into(),
            xsave_features: 0,
            created_unix_ms: time,
            parent: parent.map(str::to_string),
            root_pid: root,
            compressed: false,
        })
        .unwrap();
        w.commit().unwrap();
    }

    /// The fill byte of page `addr` through the chain.
    fn tag_at(chain: &Chain, store: &ChainStore, addr: u64) -> Option<u8> {
        let loc = chain.find(OWNER, addr)?;
        let mut buf = PageBuf::new(CHUNK_SIZE).unwrap();
        store.chunk_into(loc.chunk, &mut buf).unwrap();
        Some(buf[loc.offset as usize])
    }

    #[test]
    fn chain_resolves_merges_and_refuses() {
        let t = tempfile::tempdir().unwrap();
        let d = |n: &str| t.path().join(n);
        const A: u64 = 0x10000;
        // img.0: pages 0-3; img.1: page 1 anew, 0 and 2-3 from img.0; img.2: page 2 anew,
        // 0-1 and 3 from img.1 (so 0 and 3 from img.0, 1 from img.1).
        image(
            &d("img.0"),
            1,
            10,
            None,
            &[(A, 1), (A + PAGE, 2), (A + 2 * PAGE, 3), (A + 3 * PAGE, 4)],
            &[],
        );
        image(
            &d("img.1"),
            1,
            20,
            Some("../img.0"),
            &[(A + PAGE, 12)],
            &[(A, 1), (A + 2 * PAGE, 2)],
        );
        image(
            &d("img.2"),
            1,
            30,
            Some("../img.1"),
            &[(A + 2 * PAGE, 23)],
            &[(A, 2), (A + 3 * PAGE, 1)],
        );
        let chain = Chain::open(&d("img.2")).unwrap();
        assert_eq!(chain.images.len(), 3);
        let store = chain.store().unwrap();
        store.verify_all().unwrap();
        let tags: Vec<_> = (0..5)
            .map(|i| tag_at(&chain, &store, A + i * PAGE))
            .collect();
        assert_eq!(tags, vec![Some(1), Some(12), Some(23), Some(4), None]);
        // The merged image holds the same pages, alone.
        let stats = merge(&d("img.2"), &d("merged"), None).unwrap();
        assert_eq!((stats.images, stats.pages), (3, 4));
        let merged = Chain::open(&d("merged")).unwrap();
        assert_eq!(merged.images.len(), 1);
        assert!(merged.top().inventory().parent.is_none());
        let mstore = merged.store().unwrap();
        let mtags: Vec<_> = (0..5)
            .map(|i| tag_at(&merged, &mstore, A + i * PAGE))
            .collect();
        assert_eq!(mtags, tags);

        let refused = |top: &str, want: &str| {
            let e = Chain::open(&d(top))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{top}: {e:?} does not say {want:?}");
        };
        // A run its parent does not hold.
        image(
            &d("hole"),
            1,
            40,
            Some("../img.0"),
            &[],
            &[(A + 3 * PAGE, 2)],
        );
        refused("hole", "does not hold");
        // Another tree, a younger parent, a migration's staged parent, a missing one, a cycle.
        image(&d("other"), 2, 40, Some("../img.0"), &[], &[(A, 1)]);
        refused("other", "another tree");
        image(&d("young"), 1, 5, Some("../img.0"), &[], &[(A, 1)]);
        refused("young", "after its child");
        image(&d("staged"), 1, 40, None, &[], &[(A, 1)]);
        refused("staged", "staged");
        image(&d("orphan"), 1, 40, Some("../gone"), &[], &[(A, 1)]);
        refused("orphan", "gone");
        image(&d("c1"), 1, 40, Some("../c2"), &[], &[]);
        image(&d("c2"), 1, 40, Some("../c1"), &[], &[]);
        refused("c1", "cycle");
        // A damaged parent record.
        let pm = d("img.0").join(ImageKind::Pagemap.file_name());
        let mut bytes = std::fs::read(&pm).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&pm, bytes).unwrap();
        refused("img.2", "img.0");
    }

    #[test]
    fn relative_paths() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("x/img.1");
        let b = d.path().join("img.0");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let r = relative_path(&a, &b).unwrap();
        assert_eq!(r, PathBuf::from("../../img.0"));
        assert_eq!(
            std::fs::canonicalize(parent_path(&a, r.to_str().unwrap())).unwrap(),
            std::fs::canonicalize(&b).unwrap()
        );
    }

    #[test]
    fn lookup_splits_entries() {
        let e = |addr: u64, n: u32, chunk: u32, offset: u32| PagemapEntry {
            owner: PageOwner::Process(5),
            addr,
            nr_pages: n,
            loc: PageLoc { chunk, offset },
        };
        let entries = vec![e(0x10000, 4, 0, 0), e(0x20000, 2, 1, 8192)];
        let by = index_by_owner(&entries);
        let (loc, n) = lookup(&entries, &by, PageOwner::Process(5), 0x12000).unwrap();
        assert_eq!((loc.chunk, loc.offset, n), (0, 8192, 2));
        let (loc, n) = lookup(&entries, &by, PageOwner::Process(5), 0x21000).unwrap();
        assert_eq!((loc.chunk, loc.offset, n), (1, 12288, 1));
        assert!(lookup(&entries, &by, PageOwner::Process(5), 0x14000).is_none());
        assert!(lookup(&entries, &by, PageOwner::Process(6), 0x10000).is_none());
        assert!(lookup(&entries, &by, PageOwner::Process(5), 0x0).is_none());
    }
}
