//! The `patron` binary: parse arguments, set up logging, run, map the result to the
//! documented exit code. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use patron::cli::{Cli, dispatch};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system allocator, as DataFusion's own CLI and benchmarks use
/// (many threads allocating and freeing Arrow buffers of every size is its home ground);
/// the `system-allocator` feature leaves it out, for heap profilers that hook `malloc`.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("patron=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Query plans are encoded and decoded recursively (Ballista ships them between
    // processes); deep scoring plans need more than the default 2 MiB per thread, as in
    // Ballista's own binaries.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("patron: cannot start the async runtime: {e}");
            return ExitCode::from(patron::error::EXIT_RUN_FAILED);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Do not wait for blocking work an aborted run left behind (an extract thread).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patron: {e}");
            ExitCode::from(e.code)
        }
    }
}
