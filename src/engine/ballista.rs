//! Apache DataFusion Ballista: the client session a run plans on, and the scheduler and
//! executor processes (`patron ballista-scheduler`, `patron ballista-executor`) built from
//! the `ballista-scheduler` / `ballista-executor` library crates pinned by Cargo.lock.
//!
//! A Ballista session plans each query in patron and sends the logical plan to the
//! scheduler, which splits it into stages that executors run. Everything a plan reads
//! must therefore be reachable by every executor under the same path or URL: patron
//! registers files (raw tables, seeds, materialised stages), never in-memory tables
//! (see [`crate::transform::runner::make_portable`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::config::BallistaConfig;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::{Engine, codec};

/// A Ballista session for `engine` with patron's codecs; for [`Engine::Remote`] the
/// scheduler must answer now, so a wrong address fails before any work starts.
pub(super) async fn context(
    engine: &Engine,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
) -> DfResult<SessionContext> {
    let (logical, physical) = codec::codecs();
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = config
        .with_ballista_logical_extension_codec(logical)
        .with_ballista_physical_extension_codec(physical)
        .with_ballista_standalone_parallelism(slots)
        .with_ballista_job_name("patron");
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .build();
    match engine {
        Engine::Local => Err(DataFusionError::Configuration(
            "the local engine has no Ballista session".into(),
        )),
        Engine::Standalone => SessionContext::standalone_with_state(state).await,
        Engine::Remote { host, port } => {
            let url = format!("http://{host}:{port}");
            SchedulerGrpcClient::connect(url).await.map_err(|e| {
                DataFusionError::Configuration(format!("cannot reach the Ballista scheduler at {engine}: {e}"))
            })?;
            SessionContext::remote_with_state(&engine.to_string(), state).await
        }
    }
}

/// True for a session built by [`context`].
pub(super) fn is_ballista(ctx: &SessionContext) -> bool {
    ctx.state()
        .config()
        .options()
        .extensions
        .get::<BallistaConfig>()
        .is_some()
}

/// A Ballista failure as text, for the CLI.
fn describe(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Settings of `patron ballista-scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address the scheduler's gRPC service listens on.
    pub bind: SocketAddr,
    /// Host name executors reach the scheduler by.
    pub external_host: String,
    /// Seconds without a heartbeat after which an executor counts as lost and its tasks
    /// are rescheduled.
    pub executor_timeout_secs: u64,
}

/// Runs a Ballista scheduler with patron's codecs until the process is stopped.
pub async fn run_scheduler(options: &SchedulerOptions) -> Result<(), String> {
    let (logical, physical) = codec::codecs();
    let config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        external_host: options.external_host.clone(),
        executor_timeout_seconds: options.executor_timeout_secs,
        expire_dead_executor_interval_seconds: (options.executor_timeout_secs / 3).max(1),
        no_executors_grace_period_seconds: options.executor_timeout_secs,
        // Spread tasks over the executors rather than filling one first: a run's queries
        // are many small jobs.
        task_distribution: TaskDistributionPolicy::RoundRobin,
        override_logical_codec: Some(logical),
        override_physical_codec: Some(physical),
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| describe("cannot set up the scheduler's cluster state", e))?;
    start_server(cluster, options.bind, Arc::new(config))
        .await
        .map_err(|e| describe(&format!("scheduler on {}", options.bind), e))
}

/// Settings of `patron ballista-executor`.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler to register with: host name or IP address.
    pub scheduler_host: String,
    /// The scheduler's gRPC port.
    pub scheduler_port: u16,
    /// Address of the executor's Arrow Flight service (shuffle data).
    pub bind: SocketAddr,
    /// Host name the scheduler and other executors reach this executor by.
    pub external_host: String,
    /// Port of the executor's gRPC service (task control).
    pub grpc_port: u16,
    /// Folder for shuffle files.
    pub work_dir: PathBuf,
    /// Tasks run at once.
    pub slots: usize,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_secs: u64,
}

/// Runs a Ballista executor with patron's codecs and functions until it is stopped.
pub async fn run_executor(options: &ExecutorOptions) -> Result<(), String> {
    std::fs::create_dir_all(&options.work_dir)
        .map_err(|e| describe(&format!("cannot create {}", options.work_dir.display()), e))?;
    let (logical, physical) = codec::codecs();
    // Every built-in function of patron's DataFusion build, nested ones included.
    let functions = BallistaFunctionRegistry::from(&SessionStateBuilder::new().with_default_features().build());
    let config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        external_host: Some(options.external_host.clone()),
        port: options.bind.port(),
        grpc_port: options.grpc_port,
        scheduler_host: options.scheduler_host.clone(),
        scheduler_port: options.scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: options.slots,
        work_dir: Some(options.work_dir.to_string_lossy().into_owned()),
        executor_heartbeat_interval_seconds: options.heartbeat_secs,
        override_logical_codec: Some(logical),
        override_physical_codec: Some(physical),
        override_function_registry: Some(Arc::new(functions)),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| describe(&format!("executor on {}", options.bind), e))
}
