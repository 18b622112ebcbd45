//! `vzmigrate`: move a VE to another host. `vzmigrate keygen` and `vzmigrate trust FP` set up
//! the mutual trust of two hosts; `vzmigrate --listen ADDR` runs the destination's daemon;
//! `vzmigrate DEST CTID` moves a running VE there (offline: checkpoint, transfer, restore).
use std::net::{SocketAddr, ToSocketAddrs};

use clap::{Parser, Subcommand};
use migrate::transport::{Identity, Trust};
use ve::Layout;

const PORT: u16 = 4422;

#[derive(Parser, Debug)]
#[command(
    name = "vzmigrate",
    version,
    about = "Migrate VEs between hosts over QUIC with mutually pinned TLS",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Run the destination daemon on this address (e.g. 0.0.0.0:4422).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Live migration: memory is copied in rounds while the VE runs; it stops only for the
    /// pages written since the last round.
    #[arg(long)]
    online: bool,
    /// Online: the longest the VE may stay stopped for its last pages, in milliseconds
    /// (compared with what the last round measured).
    #[arg(long, default_value_t = 100, value_name = "MS", requires = "online")]
    downtime_ms: u64,
    /// Online: pre-copy rounds after the first before giving up converging.
    #[arg(long, default_value_t = 8, value_name = "N", requires = "online")]
    max_rounds: u32,
    /// Online: compress each page batch with zstd.
    #[arg(long, requires = "online")]
    compress: bool,
    /// Online: QUIC streams carrying pages side by side (0: on the control stream).
    #[arg(long, value_name = "N", requires = "online",
          default_value_t = migrate::streams::PAGE_STREAMS as u32,
          value_parser = clap::value_parser!(u32).range(0..=migrate::streams::MAX_PAGE_STREAMS as i64))]
    page_streams: u32,
    /// Keep the VE's stopped copy (config and private area) on the source.
    #[arg(long)]
    keep_src: bool,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    /// The destination host (HOST or HOST:PORT; port 4422 by default).
    dest: Option<String>,
    ctid: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Make this host's key and certificate; prints its fingerprint.
    Keygen {
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Print this host's certificate fingerprint.
    Fingerprint,
    /// Trust the host whose certificate has this SHA-256 fingerprint.
    Trust { fingerprint: String },
}

fn addr(s: &str) -> anyhow::Result<SocketAddr> {
    let with_port = if s.parse::<SocketAddr>().is_ok()
        || s.rsplit_once(':')
            .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
    {
        s.to_string()
    } else if s.contains(':') {
        format!("[{s}]:{PORT}")
    } else {
        format!("{s}:{PORT}")
    };
    with_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{s} resolves to no address"))
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let layout = Layout::from_env();
    let dir = Identity::dir(&layout.vz_dir);
    match cli.command {
        Some(Cmd::Keygen { force }) => {
            let id = Identity::generate(&dir, force)?;
            println!("{}", id.fingerprint());
            return Ok(0);
        }
        Some(Cmd::Fingerprint) => {
            println!("{}", Identity::load(&dir)?.fingerprint());
            return Ok(0);
        }
        Some(Cmd::Trust { fingerprint }) => {
            Trust::add(&dir, &fingerprint)?;
            return Ok(0);
        }
        None => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(listen) = cli.listen {
        let a = addr(&listen)?;
        rt.block_on(migrate::offline::listen(&layout, a))?;
        return Ok(0);
    }
    let (Some(dest), Some(ctid)) = (cli.dest, cli.ctid) else {
        anyhow::bail!("give DEST and CTID (or --listen ADDR, or a subcommand); see --help");
    };
    let online = cli.online.then_some(migrate::precopy::OnlineOptions {
        downtime_ms: cli.downtime_ms,
        max_rounds: cli.max_rounds,
        compress: cli.compress,
        page_streams: cli.page_streams as usize,
    });
    // A bar on a terminal (indicatif draws nothing when stderr is not one), none with --json.
    let bar = if cli.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>14} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress = |phase: &str, done: u64, total: u64| {
        if bar.message() != phase {
            bar.set_message(phase.to_string());
        }
        bar.set_length(total);
        bar.set_position(done);
    };
    let result = rt.block_on(migrate::offline::migrate(
        &layout,
        ctid,
        addr(&dest)?,
        cli.keep_src,
        online,
        &progress,
    ));
    bar.finish_and_clear();
    let report = result?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for r in &report.rounds {
            eprintln!(
                "round {}: {} pages, {} bytes ({} on the wire) in {:.0} ms",
                r.round, r.pages, r.bytes, r.wire_bytes, r.ms
            );
        }
        eprintln!(
            "VE {ctid} moved to {dest} ({}): total {:.0} ms, downtime {:.0} ms, private area {} files {} bytes, image {} bytes, {} bytes sent, compression {:.2}",
            report.mode, report.total_ms, report.downtime_ms, report.fs_files, report.fs_bytes, report.image_bytes, report.wire_bytes, report.compression_ratio
        );
    }
    Ok(0)
}

fn main() {
    cli::logging::init();
    match run(Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("vzmigrate: {}", msg.join(": "));
            std::process::exit(1);
        }
    }
}
