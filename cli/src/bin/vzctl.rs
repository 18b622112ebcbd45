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
    // The keeper of `chkpnt --track-mem` (started by the dump itself, not a user command).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(cpt::incremental::KEEPER_ARG) {
        std::process::exit(cpt::incremental::keeper_main(&args[2..]));
    }
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
