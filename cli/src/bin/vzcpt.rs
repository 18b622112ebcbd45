//! `vzcpt`: checkpoint and restore process trees.
use clap::{Parser, Subcommand};
use cli::commands;

#[derive(Parser, Debug)]
#[command(
    name = "vzcpt",
    version,
    about = "Checkpoint and restore Linux process trees and containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Dump(commands::dump::DumpArgs),
    Restore(commands::restore::RestoreArgs),
    Show(commands::show::ShowArgs),
    Verify(commands::verify::VerifyArgs),
    Merge(commands::merge::MergeArgs),
    Check(commands::check::CheckArgs),
}

fn main() {
    // The keeper of `dump --track-mem` (started by the dump itself, not a user command).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(cpt::incremental::KEEPER_ARG) {
        std::process::exit(cpt::incremental::keeper_main(&args[2..]));
    }
    cli::logging::init();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Dump(a) => commands::dump::run(&a),
        Command::Restore(a) => commands::restore::run(&a),
        Command::Show(a) => {
            sys::syscalls::default_sigpipe();
            commands::show::run(&a)
        }
        Command::Verify(a) => commands::verify::run(&a),
        Command::Merge(a) => commands::merge::run(&a),
        Command::Check(a) => commands::check::run(&a),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // The whole chain on one line: "what failed: why: root cause".
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("vzcpt: {}", msg.join(": "));
            std::process::exit(1);
        }
    }
}
