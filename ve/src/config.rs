//! A VE's config file, `$VZ_DIR/conf/CTID.conf`, in TOML:
//!
//! ```toml
//! hostname = "web1"
//! command = "while :; do date >> /tmp/log; sleep 1; done"   # run by /bin/sh -c under the VE's init
//! root = "/srv/images/debian"                               # base layer; default: the host's /
//! memory = 536870912                                        # bytes
//! pids = 200
//! cpus = 1.0
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Result, VeError};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct VeConfig {
    pub hostname: Option<String>,
    /// Shell command the VE's init runs (`/bin/sh -c`); the VE stops when it exits. Without
    /// one, the init alone keeps the VE running until `vzctl stop`.
    pub command: Option<String>,
    /// The read-only base of the VE's root file system; the host's `/` when absent.
    pub root: Option<PathBuf>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Limit on the number of tasks.
    pub pids: Option<u64>,
    /// CPU bandwidth limit, in CPUs.
    pub cpus: Option<f64>,
    /// The VE's IP addresses (`ADDR` or `ADDR/PREFIX`, IPv4 or IPv6): it gets a veth pair.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipadd: Vec<String>,
    /// A bridge of the host for the VE's veth host end; routed through the host when absent.
    pub bridge: Option<String>,
}

impl VeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| VeError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let cfg: VeConfig = toml::from_str(&text).map_err(|e| VeError::Config {
            path: path.to_path_buf(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate().map_err(|reason| VeError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Writes the config atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| VeError::Config {
            path: path.to_path_buf(),
            reason: format!("write: {source}"),
        };
        let text = toml::to_string(self).map_err(|e| VeError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("conf.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(h) = &self.hostname {
            if h.is_empty() || h.len() > 64 || h.contains(['/', '\0', ' ']) {
                return Err(format!("hostname {h:?} is not a valid host name"));
            }
        }
        if let Some(c) = self.cpus {
            if !(c > 0.0 && c <= 1024.0) {
                return Err(format!("cpus {c} is out of range (0, 1024]"));
            }
        }
        for a in &self.ipadd {
            let addr = a.split('/').next().unwrap_or("");
            let prefix_ok = a
                .split_once('/')
                .is_none_or(|(_, p)| p.parse::<u8>().is_ok_and(|p| p <= 128));
            if addr.parse::<std::net::IpAddr>().is_err() || !prefix_ok {
                return Err(format!(
                    "ipadd {a:?} is not an IP address with an optional prefix"
                ));
            }
        }
        if let Some(b) = &self.bridge {
            if b.is_empty() || b.len() > 15 || b.contains(['/', ' ', '\0']) {
                return Err(format!("bridge {b:?} is not an interface name"));
            }
        }
        if self.memory == Some(0) || self.pids == Some(0) {
            return Err("memory and pids limits must be above 0".into());
        }
        Ok(())
    }
}

/// Parses a size such as `512M`, `2G`, `1048576`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("101.conf");
        let c = VeConfig {
            hostname: Some("web1".into()),
            command: Some("sleep 1".into()),
            memory: Some(512 << 20),
            cpus: Some(1.5),
            ..Default::default()
        };
        c.save(&p).unwrap();
        assert_eq!(VeConfig::load(&p).unwrap(), c);
        std::fs::write(&p, "hostname = \"a\"\nbogus = 1\n").unwrap();
        let e = VeConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&p, "hostname = \"a b\"\n").unwrap();
        assert!(VeConfig::load(&p).is_err());
        std::fs::write(&p, "ipadd = [\"10.0.0.1/24\", \"fd00::5\"]\n").unwrap();
        assert_eq!(VeConfig::load(&p).unwrap().ipadd.len(), 2);
        std::fs::write(&p, "ipadd = [\"10.0.0.300\"]\n").unwrap();
        assert!(VeConfig::load(&p).is_err());
        std::fs::write(&p, "ipadd = [\"10.0.0.3/99x\"]\n").unwrap();
        assert!(VeConfig::load(&p).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("").is_err());
    }
}
