//! The `exo` binary: parses the command line and hands over to the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    exo::engine::cpu::heap::keep_freed_buffers();
    let cli = exo::cli::Cli::parse();
    for (name, value) in cli.environment_defaults() {
        if std::env::var_os(name).is_none() {
            // SAFETY: no other thread exists yet (the runtime is built below), so nothing
            // can read the environment while it changes.
            unsafe { std::env::set_var(name, value) };
        }
    }
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.default_log_filter()));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        exo::cli::LogFormat::Text => logs.init(),
        // One JSON object per line; the spans a line is in (a request's id among them)
        // travel with it, so a collector can follow one request through every node.
        exo::cli::LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
