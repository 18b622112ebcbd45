//! Where the binaries under test are.

use std::path::PathBuf;

/// `target/<profile>/` of the running test binary (tests run from `target/<profile>/deps/`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The `vzcpt` binary; built with `cargo build -p cli` if the test run did not build it.
pub fn vzcpt() -> anyhow::Result<PathBuf> {
    cli_bin("vzcpt")
}

/// A binary of the `cli` crate (`vzcpt`, `vzctl`, `vzlist`, `vzinit`), all built with
/// `cargo build -p cli --bins` if one is missing.
pub fn cli_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = profile_dir().join(name);
    if !path.exists() {
        let release = profile_dir().ends_with("release");
        let mut cmd =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", "cli", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status()?;
        anyhow::ensure!(st.success() && path.exists(), "cannot build {name}");
    }
    Ok(path)
}
