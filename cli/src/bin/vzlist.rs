//! `vzlist`: the VEs of this host (running ones; all with -a).
use clap::Parser;
use ve::Layout;

#[derive(Parser, Debug)]
#[command(name = "vzlist", version, about = "List VEs")]
struct Cli {
    /// Also list VEs that are not running.
    #[arg(short = 'a', long)]
    all: bool,
    /// One JSON object: {"ves": [...]}.
    #[arg(long)]
    json: bool,
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let ves = ve::ops::list(&Layout::from_env(), cli.all)?;
    if cli.json {
        println!("{}", serde_json::json!({ "ves": ves }));
        return Ok(());
    }
    println!("{:>10} {:>6} {:<10} HOSTNAME", "CTID", "NPROC", "STATUS");
    for v in ves {
        println!(
            "{:>10} {:>6} {:<10} {}",
            v.ctid,
            v.nproc,
            v.status.to_string(),
            v.hostname
        );
    }
    Ok(())
}

fn main() {
    sys::syscalls::default_sigpipe();
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("vzlist: {}", msg.join(": "));
        std::process::exit(1);
    }
}
