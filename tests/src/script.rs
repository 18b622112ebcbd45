//! Runs a test's bash script as PID 1 of its own PID namespace (and mount namespace, for its
//! own /proc; optionally its own network namespace), so that whatever it starts dies with it.
//! The script gets `$VZCPT` (the binary) and `$WORK` (a fresh directory kept on failure under
//! `target/<profile>/test-work/`), and passes when it exits 0 having printed `OK` last.

use std::process::Command;

pub struct Script<'a> {
    /// The trial's name, in the work directory's name and in the failure message.
    pub name: &'a str,
    /// Prefix of the work directory (the test file's name).
    pub prefix: &'a str,
    /// The whole script.
    pub body: String,
    /// More `unshare` flags (`--net`).
    pub unshare: &'a [&'a str],
    /// More environment variables; `WORK` may be used in their values as `{WORK}`.
    pub env: Vec<(&'a str, String)>,
    pub timeout_s: u32,
}

impl Script<'_> {
    pub fn run(&self) -> Result<(), String> {
        let vzcpt = crate::paths::vzcpt().map_err(|e| format!("{e:#}"))?;
        let work = crate::paths::profile_dir().join("test-work").join(format!(
            "{}-{}-{}",
            self.prefix,
            self.name,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let work_s = work.to_string_lossy().into_owned();
        let out = Command::new("timeout")
            .arg(self.timeout_s.to_string())
            .args(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
            .args(self.unshare)
            .args(["bash", "-c", &self.body])
            .env("VZCPT", &vzcpt)
            .env("WORK", &work)
            .envs(
                self.env
                    .iter()
                    .map(|(k, v)| (*k, v.replace("{WORK}", &work_s))),
            )
            .output()
            .map_err(|e| format!("run bash: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() && text.lines().any(|l| l == "OK") {
            let _ = std::fs::remove_dir_all(&work);
            Ok(())
        } else {
            Err(format!(
                "{}: {}; work dir {}\n{text}",
                self.name,
                out.status,
                work.display()
            ))
        }
    }
}
