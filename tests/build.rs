//! Compiles the C test workloads (tests/workloads/*.c) into $OUT_DIR/workloads/.
//! A first line `/* cflags: ... */` adds compiler flags for that file.
use std::path::Path;
use std::process::Command;

fn main() {
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("workloads");
    std::fs::create_dir_all(&out).expect("create workloads dir");
    let src = Path::new("workloads");
    println!("cargo:rerun-if-changed=workloads");
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .expect("read workloads")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("c") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name");
        let text = std::fs::read_to_string(&path).expect("read workload");
        let extra: Vec<&str> = text
            .lines()
            .next()
            .and_then(|l| l.trim().strip_prefix("/* cflags:"))
            .and_then(|l| l.strip_suffix("*/"))
            .map(|f| f.split_whitespace().collect())
            .unwrap_or_default();
        let status = Command::new("cc")
            .args(["-O1", "-g", "-Wall", "-pthread"])
            .args(&extra)
            .arg("-o")
            .arg(out.join(name))
            .arg(&path)
            .status()
            .expect("run cc (gcc is installed by .ci/run)");
        assert!(status.success(), "cc failed for {}", path.display());
    }
    println!("cargo:rustc-env=VZCPT_WORKLOADS_BIN={}", out.display());
}
