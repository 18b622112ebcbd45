//! A VE's network: a veth pair whose host end (`veth<CTID>`) stays in the host's network
//! namespace and whose VE end (`eth0`) sits in the VE's, with the config's addresses
//! (`vzctl set CTID --ipadd ADDR[/PREFIX]`).
//!
//! Routed mode (default, like OpenVZ's venet): the VE's addresses are /32 routes on the host
//! through the host end, which answers ARP for the host (`proxy_arp`); inside, a default route
//! through `eth0`. Bridge mode (`bridge = "br0"` in the config): the host end joins the bridge
//! and the VE's addresses keep their prefixes. Links, addresses and routes are configured with
//! iproute2 (`ip`, through `nsenter --net` for the VE's side), as vzctl's network scripts did.
//!
//! On the LAN, the host answers ARP for the VE's IPv4 addresses on each interface whose subnet
//! holds them (proxy neighbour entries), so the address moves with the VE between hosts of
//! one LAN; IPv6 addresses are routed only (no proxy NDP yet).
//!
//! The network lock of a checkpoint: every VE address gets a blackhole route on the host
//! (bridge mode: the host end goes down), so that packets to the VE are dropped silently
//! while it is frozen, dumped and restored: its TCP peers retransmit and see neither a reset
//! nor an ICMP error. The restore puts the routes back through the new host end.

use std::process::Command;

use images_format::ns::NetState;

use crate::{Result, VeConfig, VeError};

/// The host end of the VE's veth pair.
pub fn host_if(ctid: u32) -> String {
    format!("veth{ctid}")
}

/// The VE end's name inside the VE.
pub const VE_IF: &str = "eth0";

fn run(ctid: u32, cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| VeError::Failed {
        ctid,
        what: format!("network: run {cmd:?}: {e} (is iproute2 installed?)"),
    })?;
    if !out.status.success() {
        return Err(VeError::Failed {
            ctid,
            what: format!(
                "network: {cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(ctid: u32, args: &[&str]) -> Result<String> {
    run(ctid, Command::new("ip").args(args))
}

/// `ip ARGS` inside the network namespace of task `pid`.
fn ip_in(ctid: u32, pid: i32, args: &[&str]) -> Result<String> {
    run(
        ctid,
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg("ip")
            .args(args),
    )
}

/// An address with its prefix (`/32` or `/128` when none is given).
pub fn with_prefix(addr: &str) -> String {
    if addr.contains('/') {
        addr.to_string()
    } else if addr.contains(':') {
        format!("{addr}/128")
    } else {
        format!("{addr}/32")
    }
}

/// The address alone, as a host route (`/32` or `/128`).
fn host_route(addr: &str) -> String {
    with_prefix(addr.split('/').next().unwrap_or(addr))
}

fn write_sysctl(ctid: u32, path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| VeError::Failed {
        ctid,
        what: format!("network: write {value} to {path}: {e}"),
    })
}

/// Whether the VE has a network beyond its loopback.
pub fn configured(cfg: &VeConfig) -> bool {
    !cfg.ipadd.is_empty()
}

/// Creates the veth pair with its VE end in the network namespace of `init_pid`, configures
/// the host side, and the VE side: from the config at start (`dumped` is `None`), or as the
/// image recorded it at restore.
pub fn setup(ctid: u32, cfg: &VeConfig, init_pid: i32, dumped: Option<&NetState>) -> Result<()> {
    let host = host_if(ctid);
    // A host end left over by a VE that died without its stop: the name is ours.
    if ip(ctid, &["link", "show", "dev", &host]).is_ok() {
        let _ = ip(ctid, &["link", "del", &host]);
    }
    let pid = init_pid.to_string();
    ip(
        ctid,
        &[
            "link", "add", &host, "type", "veth", "peer", "name", VE_IF, "netns", &pid,
        ],
    )?;
    // The VE side.
    if let Some(link) = dumped.and_then(|n| n.links.iter().find(|l| l.name == VE_IF)) {
        // The same MAC: the VE's neighbours (and its own ARP cache) stay right.
        if !link.mac.is_empty() {
            ip_in(
                ctid,
                init_pid,
                &["link", "set", VE_IF, "address", &link.mac],
            )?;
        }
        if link.mtu != 0 {
            ip_in(
                ctid,
                init_pid,
                &["link", "set", VE_IF, "mtu", &link.mtu.to_string()],
            )?;
        }
    }
    ip_in(ctid, init_pid, &["link", "set", "lo", "up"])?;
    ip_in(ctid, init_pid, &["link", "set", VE_IF, "up"])?;
    match dumped {
        Some(n) => {
            for a in n.addrs.iter().filter(|a| a.dev == VE_IF) {
                ip_in(ctid, init_pid, &["addr", "add", &a.addr, "dev", VE_IF])?;
            }
            for r in &n.routes {
                let mut args = vec![if r.v6 { "-6" } else { "-4" }, "route", "replace"];
                args.extend(r.args.iter().map(String::as_str));
                ip_in(ctid, init_pid, &args)?;
            }
        }
        None => {
            for a in &cfg.ipadd {
                let a = if cfg.bridge.is_some() {
                    with_prefix(a)
                } else {
                    host_route(a)
                };
                ip_in(ctid, init_pid, &["addr", "add", &a, "dev", VE_IF])?;
            }
            if cfg.bridge.is_none() {
                ip_in(ctid, init_pid, &["route", "add", "default", "dev", VE_IF])?;
                if cfg.ipadd.iter().any(|a| a.contains(':')) {
                    ip_in(
                        ctid,
                        init_pid,
                        &["-6", "route", "add", "default", "dev", VE_IF],
                    )?;
                }
            }
        }
    }
    // The host side.
    if let Some(br) = &cfg.bridge {
        ip(ctid, &["link", "set", &host, "master", br])?;
        ip(ctid, &["link", "set", &host, "up"])?;
        return Ok(());
    }
    ip(ctid, &["link", "set", &host, "up"])?;
    write_sysctl(
        ctid,
        &format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp"),
        "1",
    )?;
    write_sysctl(ctid, "/proc/sys/net/ipv4/ip_forward", "1")?;
    unlock(ctid, cfg)?;
    announce(ctid, cfg)
}

/// The host's interfaces on which IPv4 address `addr` of a VE is announced: every interface
/// but loopback and the VEs' host ends with an address whose subnet holds it.
fn lan_interfaces(ctid: u32, addr: std::net::Ipv4Addr) -> Vec<String> {
    let Ok(out) = ip(ctid, &["-o", "-4", "addr", "show"]) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in out.lines() {
        // "2: br0    inet 10.98.0.1/24 brd 10.98.0.255 scope global br0 ..."
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(cidr)) = (f.get(1), f.get(3)) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name == "lo" || name.starts_with("veth") || found.iter().any(|n| n == name) {
            continue;
        }
        let Some((net, prefix)) = cidr.split_once('/') else {
            continue;
        };
        let (Ok(net), Ok(prefix)) = (net.parse::<std::net::Ipv4Addr>(), prefix.parse::<u32>())
        else {
            continue;
        };
        if prefix == 0 || prefix >= 32 {
            continue;
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(net) & mask == u32::from(addr) & mask {
            found.push(name.to_string());
        }
    }
    found
}

fn v4_addresses(cfg: &VeConfig) -> Vec<std::net::Ipv4Addr> {
    cfg.ipadd
        .iter()
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

/// Routed mode: the host answers ARP for the VE's IPv4 addresses on its LAN interfaces
/// (proxy neighbour entries, as vzctl's `vzarp` did), so peers on the LAN reach the VE
/// through this host, wherever it was before: after a migration, the old host's entries go
/// with the VE and the new host's answer.
pub fn announce(ctid: u32, cfg: &VeConfig) -> Result<()> {
    if cfg.bridge.is_some() {
        return Ok(());
    }
    for a in v4_addresses(cfg) {
        let a_s = a.to_string();
        for dev in lan_interfaces(ctid, a) {
            ip(ctid, &["neigh", "replace", "proxy", &a_s, "dev", &dev])?;
        }
    }
    Ok(())
}

/// Stops answering ARP for the VE's addresses (see [`announce`]).
fn withdraw(ctid: u32, cfg: &VeConfig) {
    for a in v4_addresses(cfg) {
        let a_s = a.to_string();
        for dev in lan_interfaces(ctid, a) {
            let _ = ip(ctid, &["neigh", "del", "proxy", &a_s, "dev", &dev]);
        }
    }
}

/// Drops traffic to the VE silently (see the module docs).
pub fn lock(ctid: u32, cfg: &VeConfig) -> Result<()> {
    if cfg.bridge.is_some() {
        return ip(ctid, &["link", "set", &host_if(ctid), "down"]).map(drop);
    }
    for a in &cfg.ipadd {
        let family = if a.contains(':') { "-6" } else { "-4" };
        ip(
            ctid,
            &[family, "route", "replace", "blackhole", &host_route(a)],
        )?;
    }
    Ok(())
}

/// Lets traffic reach the VE again through its (new) host end.
pub fn unlock(ctid: u32, cfg: &VeConfig) -> Result<()> {
    let host = host_if(ctid);
    if cfg.bridge.is_some() {
        return ip(ctid, &["link", "set", &host, "up"]).map(drop);
    }
    for a in &cfg.ipadd {
        let family = if a.contains(':') { "-6" } else { "-4" };
        ip(
            ctid,
            &[family, "route", "replace", &host_route(a), "dev", &host],
        )?;
    }
    Ok(())
}

/// Removes what `setup` and `lock` left on the host once the VE is gone.
pub fn teardown(ctid: u32, cfg: &VeConfig) {
    withdraw(ctid, cfg);
    for a in &cfg.ipadd {
        let family = if a.contains(':') { "-6" } else { "-4" };
        let _ = ip(ctid, &[family, "route", "del", &host_route(a)]);
    }
    let _ = ip(ctid, &["link", "del", &host_if(ctid)]);
}
