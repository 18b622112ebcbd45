//! Property tests: every record kind round-trips, with random values of every field, variant
//! and option (`common/random_value.rs` invents them from a seed), in memory and through an
//! image directory; every strict prefix of an encoding is refused; the page store gives back
//! what was appended, raw or compressed. A failure prints the seed that repeats it.

mod common;

use std::collections::HashSet;
use std::fmt::Debug;
use std::path::Path;

use common::random_value::{random, Rng};
use images_format::{
    core::CoreImage, decode, encode, events::TimersImage, files::FilesImage, ipc::IpcImage,
    mm::MmImage, mm::PagemapImage, mm::ParentPagesImage, ns::NamespacesImage, pipes::PipesImage,
    pstree::PstreeImage, tmpfs::TmpfsImage, FormatError, Image, ImageDir, ImageKind, ImageWriter,
    Inventory, PAGE_SIZE,
};

const SEEDS: u64 = 400;

/// One random `T` from `seed` round-trips; returns its encoding.
fn round_trip_one<T: Image + PartialEq + Debug>(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let v: T = random(&mut rng);
    let bytes = encode(&v).unwrap_or_else(|e| panic!("seed {seed}: encode {v:?}: {e}"));
    let back: T = decode(&bytes, Path::new("mem"))
        .unwrap_or_else(|e| panic!("seed {seed}: {} does not decode: {e}", T::KIND));
    assert_eq!(back, v, "seed {seed}: {} changed in a round trip", T::KIND);
    assert_eq!(encode(&back).unwrap(), bytes, "seed {seed}: not canonical");
    // Decoding reads the bytes of the full encoding in order, so any prefix runs out first.
    for cut in [0, 1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
        if cut < bytes.len() {
            let r = decode::<T>(&bytes[..cut], Path::new("mem"));
            assert!(
                matches!(r, Err(FormatError::Decode { .. })),
                "seed {seed}: a {}-byte prefix of a {}-byte {} decoded: {r:?}",
                cut,
                bytes.len(),
                T::KIND
            );
        }
    }
    bytes
}

/// Round-trips `SEEDS` random values of `T`; checks the generator made them differ.
fn round_trip_many<T: Image + PartialEq + Debug>() {
    let mut distinct = HashSet::new();
    let mut longest = 0;
    for seed in 0..SEEDS {
        let b = round_trip_one::<T>(seed);
        longest = longest.max(b.len());
        distinct.insert(b);
    }
    // Not a property of the format: a check that the test is not vacuous.
    assert!(
        distinct.len() as u64 > SEEDS / 2,
        "{}: only {} distinct values out of {SEEDS}",
        T::KIND,
        distinct.len()
    );
    eprintln!(
        "{}: {SEEDS} values, {} distinct, longest {longest} bytes",
        T::KIND,
        distinct.len()
    );
}

/// Every kind of the table, by its record type. No wildcard arm: a new kind does not compile
/// until it is covered here.
fn round_trip_kind(kind: ImageKind) {
    match kind {
        ImageKind::Inventory => round_trip_many::<Inventory>(),
        ImageKind::Pstree => round_trip_many::<PstreeImage>(),
        ImageKind::Core => round_trip_many::<CoreImage>(),
        ImageKind::Mm => round_trip_many::<MmImage>(),
        ImageKind::Pagemap => round_trip_many::<PagemapImage>(),
        ImageKind::Pages => page_store_round_trips(),
        ImageKind::Files => round_trip_many::<FilesImage>(),
        ImageKind::Pipes => round_trip_many::<PipesImage>(),
        ImageKind::Ns => round_trip_many::<NamespacesImage>(),
        ImageKind::Ipc => round_trip_many::<IpcImage>(),
        ImageKind::Tmpfs => round_trip_many::<TmpfsImage>(),
        ImageKind::Timers => round_trip_many::<TimersImage>(),
        ImageKind::ParentPages => round_trip_many::<ParentPagesImage>(),
        ImageKind::SentPages => round_trip_many::<images_format::track::SentPagesImage>(),
        ImageKind::TrackState => round_trip_many::<images_format::track::TrackStateImage>(),
    }
}

#[test]
fn every_record_kind_round_trips_in_memory() {
    for &kind in ImageKind::ALL {
        round_trip_kind(kind);
    }
}

/// Writes random `T` into `w`, returning it for the comparison after reading back.
fn write_random<T: Image>(w: &mut ImageWriter, rng: &mut Rng) -> T {
    let v: T = random(rng);
    w.write(&v).unwrap();
    v
}

macro_rules! read_back {
    ($dir:expr, $seed:expr, $($v:ident: $t:ty),*) => {$(
        assert_eq!(&$dir.read::<$t>().unwrap(), &$v, "seed {}: {} read back", $seed, <$t>::KIND);
    )*};
}

#[test]
fn every_record_kind_round_trips_through_an_image_directory() {
    let t = tempfile::tempdir().unwrap();
    for seed in 0..40u64 {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let path = t.path().join(format!("img-{seed}"));
        let mut w = ImageWriter::create(&path).unwrap();
        // The inventory must name a version this engine reads, or the image does not open.
        let inv = Inventory {
            format_major: images_format::FORMAT_MAJOR,
            format_minor: images_format::FORMAT_MINOR,
            ..random(&mut rng)
        };
        w.write(&inv).unwrap();
        let pstree: PstreeImage = write_random(&mut w, &mut rng);
        let core: CoreImage = write_random(&mut w, &mut rng);
        let mm: MmImage = write_random(&mut w, &mut rng);
        let pagemap: PagemapImage = write_random(&mut w, &mut rng);
        let files: FilesImage = write_random(&mut w, &mut rng);
        let pipes: PipesImage = write_random(&mut w, &mut rng);
        let ns: NamespacesImage = write_random(&mut w, &mut rng);
        let ipc: IpcImage = write_random(&mut w, &mut rng);
        let tmpfs: TmpfsImage = write_random(&mut w, &mut rng);
        let timers: TimersImage = write_random(&mut w, &mut rng);
        let parent: ParentPagesImage = write_random(&mut w, &mut rng);
        let track: images_format::track::TrackStateImage = write_random(&mut w, &mut rng);
        let dir = ImageDir::open(&w.commit().unwrap()).unwrap();
        assert_eq!(dir.inventory(), &inv);
        read_back!(dir, seed, pstree: PstreeImage, core: CoreImage, mm: MmImage,
            pagemap: PagemapImage, files: FilesImage, pipes: PipesImage,
            ns: NamespacesImage, ipc: IpcImage, tmpfs: TmpfsImage, timers: TimersImage,
            parent: ParentPagesImage, track: images_format::track::TrackStateImage);
        // Not the pages (no page store was opened) nor `sent-pages`, which is never part of
        // an image (a migration's source hands it to its final dump).
        for &k in ImageKind::ALL {
            let expected = !matches!(k, ImageKind::Pages | ImageKind::SentPages);
            assert_eq!(dir.has(k), expected, "seed {seed}: {k}");
        }
    }
}

/// Random runs of pages, raw and compressed (some zstd shrinks, some it cannot), across chunk
/// boundaries: every run reads back from where `append` said it went.
fn page_store_round_trips() {
    let t = tempfile::tempdir().unwrap();
    for seed in 0..12u64 {
        let mut rng = Rng::new(seed ^ 0xa11);
        let level = match seed % 3 {
            0 => None,
            1 => Some(1),
            _ => Some(3),
        };
        let path = t.path().join(format!("img-{seed}"));
        let mut w = ImageWriter::create(&path).unwrap();
        let inv = Inventory {
            format_major: images_format::FORMAT_MAJOR,
            format_minor: images_format::FORMAT_MINOR,
            ..random(&mut rng)
        };
        w.write(&inv).unwrap();
        let mut store = w.page_store(level).unwrap();
        let mut runs = Vec::new();
        // Up to about 1.5 chunks in all, in runs of 1..64 pages.
        let mut total = 0;
        while total < (3 * images_format::CHUNK_SIZE / 2) && rng.below(40) != 0 {
            let pages = 1 + rng.below(64) as usize;
            let fill = rng.below(3);
            let data: Vec<u8> = (0..pages * PAGE_SIZE)
                .map(|i| match fill {
                    0 => (i / PAGE_SIZE) as u8,
                    1 => rng.next() as u8,
                    _ => 0,
                })
                .collect();
            let mut pos = 0;
            while pos < data.len() {
                let n = store.room().min(data.len() - pos);
                let loc = store.append(&data[pos..pos + n]).unwrap();
                runs.push((loc, data[pos..pos + n].to_vec()));
                pos += n;
            }
            total += data.len();
        }
        let index = store.finish().unwrap();
        let dir = ImageDir::open(&w.commit().unwrap()).unwrap();
        let reader = dir.page_store(&index).unwrap();
        reader.verify_all().unwrap();
        let mut chunks = std::collections::HashMap::new();
        for (loc, data) in &runs {
            let chunk = chunks
                .entry(loc.chunk)
                .or_insert_with(|| reader.chunk(loc.chunk).unwrap());
            let at = loc.offset as usize;
            assert_eq!(
                &chunk[at..at + data.len()],
                &data[..],
                "seed {seed}: run at {loc:?}"
            );
        }
        assert_eq!(reader.chunk_count(), index.chunks.len());
        let past = u32::try_from(index.chunks.len()).unwrap();
        assert!(matches!(
            reader.chunk(past),
            Err(FormatError::NoSuchChunk { .. })
        ));
    }
}

#[test]
fn generator_reaches_every_variant_of_an_enum() {
    // The generator picks variants from the count serde gives it: all must come up. No
    // wildcard arm, so a new variant is counted here too.
    use images_format::mm::PageOwner;
    let variant = |o: &PageOwner| match o {
        PageOwner::Process(_) => 0,
        PageOwner::Shmem(_) => 1,
        PageOwner::SysvShm(_) => 2,
        PageOwner::TmpfsFile(_) => 3,
    };
    let mut rng = Rng::new(7);
    let seen: HashSet<_> = (0..200)
        .map(|_| variant(&random::<PageOwner>(&mut rng)))
        .collect();
    assert_eq!(seen.len(), 4);
}
