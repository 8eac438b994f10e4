//! The `patron` binary: parse arguments, set up logging, run, map the result to the
//! documented exit code. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use patron::cli::{Cli, dispatch};
use tracing_subscriber::EnvFilter;

/// With the `mimalloc` feature, mimalloc instead of the system allocator: a little faster
/// (about 2-4% on a 10M-line extract + fact) and at half again the peak memory, see
/// docs/operations.md, Memory and large inputs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// glibc's malloc with one arena per core (its default is eight per core): memory freed by
/// one thread is reused by the next, rather than kept in an arena of its own. A 10M-line
/// extract + fact peaked at 646-686 MiB this way, against 990-1025 MiB with mimalloc (two
/// runs each). A `MALLOC_ARENA_MAX` in the environment wins.
fn limit_malloc_arenas() {
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = patron::engine::cores();
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a malloc parameter; it runs first in `main`, before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
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
            ExitCode::from(e.exit_code())
        }
    }
}
