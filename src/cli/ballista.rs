//! `patron ballista-scheduler` and `patron ballista-executor` (hidden): the real Ballista
//! scheduler and executor from the `ballista-scheduler` / `ballista-executor` crates that
//! Cargo.lock pins, with patron's plan codecs (the fitted model functions travel inside
//! plans) and functions. A cluster for `patron run --engine df://HOST:PORT` runs these, so
//! it needs no separately installed Ballista of a matching version.

use std::net::SocketAddr;

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::engine::ballista::{self, ExecutorOptions, SchedulerOptions};

/// Arguments of `patron ballista-scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Address to listen on (gRPC, what `--engine df://HOST:PORT` connects to).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub bind: SocketAddr,
    /// Host name executors and clients reach this scheduler by (default: the bind address).
    #[arg(long)]
    pub external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor counts as lost.
    #[arg(long, default_value_t = 30)]
    pub executor_timeout_secs: u64,
}

/// Arguments of `patron ballista-executor`.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler's address, HOST:PORT (a host name or an IP address).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub scheduler: String,
    /// Address of the executor's Arrow Flight service (shuffle data).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub bind: SocketAddr,
    /// Host name the scheduler, clients and other executors reach this executor by
    /// (default: the bind address).
    #[arg(long)]
    pub external_host: Option<String>,
    /// Port of the executor's gRPC service on the same host (default: the bind port + 1).
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Folder for shuffle files.
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Tasks run at once (default: the number of cores).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Seconds between heartbeats to the scheduler.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
}

/// Runs the scheduler until the process is stopped.
pub async fn scheduler(args: SchedulerArgs) -> Result<(), CliError> {
    ballista::run_scheduler(&SchedulerOptions {
        external_host: args.external_host.unwrap_or_else(|| args.bind.ip().to_string()),
        bind: args.bind,
        executor_timeout_secs: args.executor_timeout_secs,
    })
    .await
    .map_err(CliError::failed)
}

/// Runs the executor until the process is stopped.
pub async fn executor(args: ExecutorArgs) -> Result<(), CliError> {
    let grpc_port = match args.grpc_port {
        Some(p) => p,
        None => args
            .bind
            .port()
            .checked_add(1)
            .ok_or_else(|| CliError::usage("--bind port 65535 leaves no port for gRPC: set --grpc-port"))?,
    };
    let (host, port) = args
        .scheduler
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| CliError::usage(format!("--scheduler {}: expected HOST:PORT", args.scheduler)))?;
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    ballista::run_executor(&ExecutorOptions {
        scheduler_host: host,
        scheduler_port: port,
        external_host: args.external_host.unwrap_or_else(|| args.bind.ip().to_string()),
        bind: args.bind,
        grpc_port,
        work_dir: args.work_dir,
        slots,
        heartbeat_secs: args.heartbeat_secs,
    })
    .await
    .map_err(CliError::failed)
}
