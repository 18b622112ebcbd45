//! `vzctl`: create, run, checkpoint and restore VEs (containers). State lives under `$VZ_DIR`
//! (default /var/lib/vz); VE cgroups under `$VZ_CGROUP` (default vz) in every hierarchy.
use clap::Parser;
use cli::commands::vzctl::{run, VzctlCommand};

#[derive(Parser, Debug)]
#[command(
    name = "vzctl",
    version,
    about = "Manage VEs (containers): lifecycle, checkpoint and restore, snapshots"
)]
struct Cli {
    #[command(subcommand)]
    command: VzctlCommand,
}

fn main() {
    cli::logging::init();
    let cli = Cli::parse();
    match run(&cli.command) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("vzctl: {}", msg.join(": "));
            std::process::exit(1);
        }
    }
}
