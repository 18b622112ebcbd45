//! Parsers for the `/proc/PID` files the dumper reads. Each takes the file's text so that unit
//! tests run on fixtures; [`ProcDir`] reads them from a live task.

use std::collections::HashMap;
use std::path::PathBuf;

/// `/proc/PID` (or `/proc/PID/task/TID`) of one task.
#[derive(Debug, Clone)]
pub struct ProcDir(pub PathBuf);

impl ProcDir {
    pub fn pid(pid: i32) -> Self {
        Self(PathBuf::from(format!("/proc/{pid}")))
    }
    pub fn task(pid: i32, tid: i32) -> Self {
        Self(PathBuf::from(format!("/proc/{pid}/task/{tid}")))
    }
    pub fn read(&self, name: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.0.join(name))
    }
    pub fn read_bytes(&self, name: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.0.join(name))
    }
    pub fn readlink(&self, name: &str) -> std::io::Result<String> {
        Ok(std::fs::read_link(self.0.join(name))?
            .to_string_lossy()
            .into_owned())
    }
}

/// The fields of `/proc/PID/stat` the dumper uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_code: i32,
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Field n of proc(5) (1-based) is rest[n - 3].
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let f = |n: usize| -> Option<&str> { rest.get(n - 3).copied() };
    let u = |n: usize| -> Option<u64> { f(n)?.parse().ok() };
    let i = |n: usize| -> Option<i32> { f(n)?.parse().ok() };
    Some(Stat {
        comm,
        state: f(3)?.chars().next()?,
        ppid: i(4)?,
        pgrp: i(5)?,
        session: i(6)?,
        start_code: u(26)?,
        end_code: u(27)?,
        start_stack: u(28)?,
        start_data: u(45)?,
        end_data: u(46)?,
        start_brk: u(47)?,
        arg_start: u(48)?,
        arg_end: u(49)?,
        env_start: u(50)?,
        env_end: u(51)?,
        exit_code: i(52)?,
    })
}

/// `/proc/PID/status` as key -> value text.
pub fn parse_status(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Whitespace-separated decimal numbers of a status field (`Uid`, `Gid`, `Groups`, `NSpid`).
pub fn status_numbers(status: &HashMap<String, String>, key: &str) -> Vec<i64> {
    status
        .get(key)
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn status_hex(status: &HashMap<String, String>, key: &str) -> Option<u64> {
    u64::from_str_radix(status.get(key)?, 16).ok()
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    pub path: String,
}

pub fn parse_maps(text: &str) -> Option<Vec<MapsLine>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut it = line.splitn(6, ' ');
            let range = it.next()?;
            let perms = it.next()?.as_bytes();
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let dev = it.next()?.to_string();
            let inode = it.next()?.parse().ok()?;
            let path = it.next().unwrap_or("").trim_start().to_string();
            let (s, e) = range.split_once('-')?;
            if perms.len() < 4 {
                return None;
            }
            Some(MapsLine {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                read: perms[0] == b'r',
                write: perms[1] == b'w',
                exec: perms[2] == b'x',
                shared: perms[3] == b's',
                offset,
                dev,
                inode,
                path,
            })
        })
        .collect()
}

/// `VmFlags` of every area in `/proc/PID/smaps`, keyed by start address.
pub fn parse_smaps_vmflags(text: &str) -> HashMap<u64, Vec<String>> {
    let mut out = HashMap::new();
    let mut cur: Option<u64> = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(start) = cur {
                out.insert(start, flags.split_whitespace().map(String::from).collect());
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((s, _)) = range.split_once('-') {
                if let Ok(start) = u64::from_str_radix(s, 16) {
                    cur = Some(start);
                }
            }
        }
    }
    out
}

/// `pos`, `flags` (octal) and `mnt_id` of `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    pub mnt_id: u64,
}

pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let mut info = FdInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => info.pos = v.parse().ok()?,
            "flags" => info.flags = u32::from_str_radix(v, 8).ok()?,
            "mnt_id" => info.mnt_id = v.parse().ok()?,
            _ => {}
        }
    }
    Some(info)
}

/// `/proc/PID/limits` rows in the kernel's resource order: (soft, hard), `u64::MAX` = unlimited.
pub fn parse_limits(text: &str) -> Option<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        // Columns are fixed-width: name (26 chars), soft (21), hard (21), units.
        let tail = line.get(26..)?;
        let mut it = tail.split_whitespace();
        let parse = |s: &str| -> Option<u64> {
            if s == "unlimited" {
                Some(u64::MAX)
            } else {
                s.parse().ok()
            }
        };
        let soft = parse(it.next()?)?;
        let hard = parse(it.next()?)?;
        out.push((soft, hard));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let text = "1234 (a (b) c) S 1 1234 1234 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 5 1000 10 18446744073709551615 93824992231424 93824992236000 140737488346000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 93824992240000 93824992241000 93824992250000 140737488347000 140737488347100 140737488347100 140737488347200 9\n";
        let s = parse_stat(text).expect("parse");
        assert_eq!(s.comm, "a (b) c");
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgrp, s.session), (1, 1234, 1234));
        assert_eq!(s.start_code, 93824992231424);
        assert_eq!(s.start_stack, 140737488346000);
        assert_eq!(s.start_brk, 93824992250000);
        assert_eq!(s.env_end, 140737488347200);
        assert_eq!(s.exit_code, 9);
    }

    #[test]
    fn stat_truncated_is_none() {
        assert!(parse_stat("12 (x) S 1 2").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn maps_lines() {
        let text = "55d0c0000000-55d0c0001000 r-xp 00001000 08:01 1234   /usr/bin/cat\n7ffd1000-7ffd2000 rw-p 00000000 00:00 0                  [stack]\n7f0000000000-7f0000001000 rw-s 00000000 00:01 99 /dev/zero (deleted)\n7f0000002000-7f0000003000 rw-p 00000000 00:00 0 \n";
        let m = parse_maps(text).expect("parse");
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "/usr/bin/cat");
        assert!(m[0].exec && !m[0].write && !m[0].shared);
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!(m[1].path, "[stack]");
        assert!(m[2].shared);
        assert_eq!(m[2].path, "/dev/zero (deleted)");
        assert_eq!(m[2].inode, 99);
        assert_eq!(m[3].path, "");
    }

    #[test]
    fn fdinfo_and_limits() {
        let fi =
            parse_fdinfo("pos:\t42\nflags:\t02100002\nmnt_id:\t25\nino:\t77\n").expect("fdinfo");
        assert_eq!(fi.pos, 42);
        assert_eq!(fi.flags, 0o2100002);
        assert_eq!(fi.mnt_id, 25);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            1024                 524288               files     \n";
        let l = parse_limits(limits).expect("limits");
        assert_eq!(l, vec![(u64::MAX, u64::MAX), (1024, 524288)]);
    }

    #[test]
    fn smaps_vmflags_by_start() {
        let text = "7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]\nSize: 4 kB\nVmFlags: rd wr mr mw me gd ac\n";
        let f = parse_smaps_vmflags(text);
        assert!(f[&0x7ffd1000].contains(&"gd".to_string()));
    }

    #[test]
    fn status_fields() {
        let s =
            parse_status("Name:\tx\nUid:\t0\t1\t2\t3\nNSpid:\t100\t1\nCapEff:\t000001ffffffffff\n");
        assert_eq!(status_numbers(&s, "Uid"), vec![0, 1, 2, 3]);
        assert_eq!(status_numbers(&s, "NSpid"), vec![100, 1]);
        assert_eq!(status_hex(&s, "CapEff"), Some(0x1ffffffffff));
    }
}
