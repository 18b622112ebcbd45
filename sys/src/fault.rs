//! Named failure points, for tests of the "nothing lost" rules (issue 6).
//!
//! In debug builds (what the test suite runs), `VZCPT_FAULT=NAME[:ACTION][,...]` arms points:
//! [`hit`] returns true at an armed point whose action is `fail` (the default), so the caller
//! fails there as a real error would; the action `kill` SIGKILLs the process on the spot
//! (a crash at that moment). Release builds compile every point to `false`: no environment
//! variable can make an installed engine fail on purpose.
//!
//! The points are listed in docs/RELIABILITY.md with the test that arms each.

/// Whether the failure point `name` is armed (and, for `kill`, never returns).
#[inline]
pub fn hit(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        let Ok(spec) = std::env::var("VZCPT_FAULT") else {
            return false;
        };
        match action(&spec, name) {
            None => false,
            Some(a) => {
                eprintln!("vzcpt: failure point {name} reached ({a})");
                if a == "kill" {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::SIGKILL);
                }
                true
            }
        }
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}

/// The action `spec` (a `VZCPT_FAULT` value) gives point `name`, if it arms it.
#[cfg(any(debug_assertions, test))]
fn action<'a>(spec: &'a str, name: &str) -> Option<&'a str> {
    spec.split(',').find_map(|item| {
        let (point, action) = item.split_once(':').unwrap_or((item, "fail"));
        (point.trim() == name).then(|| action.trim())
    })
}

/// The error text of a failure point.
pub fn message(name: &str) -> String {
    format!("failure point {name} (VZCPT_FAULT)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_points_only() {
        let spec = "a.b, c.d:kill,e.f:fail";
        assert_eq!(action(spec, "a.b"), Some("fail"));
        assert_eq!(action(spec, "c.d"), Some("kill"));
        assert_eq!(action(spec, "e.f"), Some("fail"));
        assert_eq!(action(spec, "a"), None);
        assert_eq!(action("", "a.b"), None);
    }
}
