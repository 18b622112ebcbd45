//! Log output to stderr, controlled by `VZCPT_LOG` (e.g. `VZCPT_LOG=debug`); warnings by default.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VZCPT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
