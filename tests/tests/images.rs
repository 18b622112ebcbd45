//! Damaged images are refused with clear errors, by `vzcpt verify` and by `vzcpt restore`,
//! and a refused restore starts nothing.
//!
//! One real image is made from a real process (`--leave-running`, then the process is killed so
//! its PID is free); each trial damages a copy of it in one way.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use libtest_mimic::{Arguments, Failed, Trial};

struct Base {
    dir: PathBuf,
    pid: i32,
}

static BASE: OnceLock<Result<Base, String>> = OnceLock::new();

fn vzcpt() -> PathBuf {
    tests::paths::vzcpt().expect("vzcpt binary")
}

fn make_base() -> Result<Base, String> {
    let work = tests::paths::profile_dir()
        .join("test-work")
        .join(format!("images-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut child = Command::new("sleep")
        .arg("1000")
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let dir = work.join("base");
    let out = Command::new(vzcpt())
        .args(["dump", "--leave-running", "-t", &pid.to_string(), "-D"])
        .arg(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = child.kill();
    let _ = child.wait();
    if !out.status.success() {
        return Err(format!(
            "dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Base { dir, pid })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

fn flip_byte(path: &Path, offset: u64) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&[b[0] ^ 0x5a])
}

/// Damages a copy of the base image, then checks verify and restore refuse it with `expect`
/// in their message, and that the dumped PID is still free afterwards.
fn refused(
    name: &str,
    damage: impl Fn(&Path) -> std::io::Result<()>,
    expect: &str,
) -> Result<(), Failed> {
    let base = BASE
        .get_or_init(make_base)
        .as_ref()
        .map_err(|e| Failed::from(e.clone()))?;
    let dir = base.dir.with_file_name(name);
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&base.dir, &dir).map_err(|e| Failed::from(e.to_string()))?;
    damage(&dir).map_err(|e| Failed::from(format!("damaging the image: {e}")))?;
    for args in [vec!["verify", "-D"], vec!["restore", "--detach", "-D"]] {
        let out = Command::new(vzcpt())
            .args(&args)
            .arg(&dir)
            .output()
            .map_err(|e| Failed::from(e.to_string()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Err(format!("`vzcpt {}` accepted an image with {name}", args[0]).into());
        }
        if !stderr.contains(expect) {
            return Err(format!(
                "`vzcpt {}` on {name}: expected a message with {expect:?}, got: {stderr}",
                args[0]
            )
            .into());
        }
        if stderr.lines().count() != 1 {
            return Err(format!("`vzcpt {}` printed more than one line: {stderr}", args[0]).into());
        }
    }
    if Path::new(&format!("/proc/{}", base.pid)).exists() {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/cmdline", base.pid)).unwrap_or_default();
        if stat.starts_with("sleep") {
            return Err(format!("a refused restore started process {}", base.pid).into());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Rewrites record `T` of the image in `dir` after `change`, with a valid header and checksum:
/// a crafted image, not a damaged one.
fn craft<T: images_format::Image>(dir: &Path, change: impl Fn(&mut T)) -> std::io::Result<()> {
    let other = |e: images_format::FormatError| std::io::Error::other(e.to_string());
    let img = images_format::ImageDir::open(dir).map_err(other)?;
    let mut rec: T = img.read().map_err(other)?;
    change(&mut rec);
    let payload = images_format::encode(&rec).map_err(other)?;
    let mut bytes = images_format::FileHeader::new(T::KIND, &payload)
        .to_bytes()
        .to_vec();
    bytes.extend_from_slice(&payload);
    std::fs::write(dir.join(T::KIND.file_name()), bytes)
}

fn main() {
    let args = Arguments::from_args();
    let root = nix::unistd::geteuid().is_root();
    let mut trials = vec![
        Trial::test("record_with_flipped_payload_byte", || {
            refused(
                "flipped-core",
                |d| flip_byte(&d.join("core"), 40),
                "checksum",
            )
        }),
        Trial::test("truncated_record", || {
            refused(
                "truncated-pstree",
                |d| {
                    let p = d.join("pstree");
                    let len = std::fs::metadata(&p)?.len();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)?
                        .set_len(len - 3)
                },
                "truncated",
            )
        }),
        Trial::test("newer_major_version", || {
            refused(
                "major2",
                |d| {
                    let p = d.join("inventory");
                    let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
                    f.seek(SeekFrom::Start(4))?;
                    f.write_all(&2u16.to_le_bytes())
                },
                "is not readable by this engine",
            )
        }),
        Trial::test("newer_minor_version", || {
            refused(
                "minor9",
                |d| {
                    let p = d.join("mm");
                    let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
                    f.seek(SeekFrom::Start(6))?;
                    f.write_all(&9u16.to_le_bytes())
                },
                "is not readable by this engine",
            )
        }),
        Trial::test("bad_magic", || {
            refused("magic", |d| flip_byte(&d.join("files"), 0), "magic")
        }),
        Trial::test("damaged_page_chunk", || {
            refused(
                "flipped-page",
                |d| flip_byte(&d.join("pages"), 4096 + 100),
                "checksum",
            )
        }),
        Trial::test("missing_record_file", || {
            refused("no-mm", |d| std::fs::remove_file(d.join("mm")), "mm")
        }),
        // Crafted records: well-formed files with hostile contents.
        Trial::test("crafted_overlapping_areas", || {
            use images_format::mm::MmImage;
            refused(
                "overlap",
                |d| {
                    craft::<MmImage>(d, |m| {
                        let v = m.processes[0].vmas[1].clone();
                        let mut w = v.clone();
                        w.start = v.start + 4096;
                        w.end = v.end + 4096;
                        m.processes[0].vmas.insert(2, w);
                    })
                },
                "overlap",
            )
        }),
        Trial::test("crafted_kernel_range_area", || {
            use images_format::mm::MmImage;
            refused(
                "kernel-area",
                |d| {
                    craft::<MmImage>(d, |m| {
                        let mut v = m.processes[0].vmas.last().cloned().unwrap();
                        v.start = 0xffff_8000_0000_0000;
                        v.end = 0xffff_8000_0001_0000;
                        m.processes[0].vmas.push(v);
                    })
                },
                "kernel range",
            )
        }),
        Trial::test("crafted_duplicate_pid", || {
            use images_format::pstree::PstreeImage;
            refused(
                "dup-pid",
                |d| {
                    craft::<PstreeImage>(d, |t| {
                        let mut p = t.processes[0].clone();
                        p.ppid = p.pid;
                        t.processes.push(p);
                    })
                },
                "twice",
            )
        }),
        Trial::test("crafted_pid_out_of_range", || {
            use images_format::pstree::PstreeImage;
            refused(
                "bad-pid",
                |d| {
                    craft::<PstreeImage>(d, |t| {
                        t.root_pid = 1 << 30;
                        t.processes[0].pid = 1 << 30;
                    })
                },
                "out of range",
            )
        }),
        Trial::test("crafted_pages_past_the_store", || {
            use images_format::mm::PagemapImage;
            refused(
                "pages-past-store",
                |d| {
                    craft::<PagemapImage>(d, |p| {
                        if let Some(e) = p.entries.first_mut() {
                            e.loc.chunk = 999;
                        }
                    })
                },
                "chunk",
            )
        }),
    ];
    if !root {
        trials = trials
            .into_iter()
            .map(|t| t.with_ignored_flag(true))
            .collect();
        eprintln!("images: ignored: needs root to dump a real process");
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(Ok(b)) = BASE.get() {
        if let Some(work) = b.dir.parent() {
            let _ = std::fs::remove_dir_all(work);
        }
    }
    conclusion.exit();
}
