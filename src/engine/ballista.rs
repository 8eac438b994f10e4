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
use std::time::Duration;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::RuntimeProducer;
use ballista_core::config::{BALLISTA_CLIENT_PULL, BallistaConfig};
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::CancelJobParams;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::StreamExt;

use super::{Engine, cluster_store, codec};

/// A Ballista session for `engine` with patron's codecs; for [`Engine::Remote`] the
/// scheduler must answer now, so a wrong address fails before any work starts. Every job
/// the session submits fails after `job_timeout` (none when `None`), and on a remote
/// cluster is cancelled on the scheduler (see [`JobDeadlineExec`]).
pub(super) async fn context(
    engine: &Engine,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    job_timeout: Option<Duration>,
) -> DfResult<SessionContext> {
    let (logical, physical) = codec::codecs();
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = config
        .with_ballista_logical_extension_codec(logical)
        .with_ballista_physical_extension_codec(physical)
        .with_ballista_standalone_parallelism(slots)
        .with_ballista_job_name("patron")
        // Pull job tracking: the client learns the job id as soon as the scheduler accepts
        // the job, so a job past its deadline can be cancelled. With push tracking the id
        // comes with the first status change, which a job queued with no executor never has.
        .set_str(BALLISTA_CLIENT_PULL, "true")
        .set_bool(cluster_store::DYNAMIC_FILTERS, false);
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .build();
    let (ctx, scheduler) = match engine {
        Engine::Local => {
            return Err(DataFusionError::Configuration(
                "the local engine has no Ballista session".into(),
            ));
        }
        Engine::Standalone => (SessionContext::standalone_with_state(state).await?, None),
        Engine::Remote { host, port } => {
            let url = format!("http://{host}:{port}");
            SchedulerGrpcClient::connect(url.clone()).await.map_err(|e| {
                DataFusionError::Configuration(format!("cannot reach the Ballista scheduler at {engine}: {e}"))
            })?;
            (
                SessionContext::remote_with_state(&engine.to_string(), state).await?,
                Some(url),
            )
        }
    };
    let Some(timeout) = job_timeout else {
        return Ok(ctx);
    };
    let state = ctx.state();
    let planner = Arc::new(DeadlinePlanner {
        inner: Arc::clone(state.query_planner()),
        deadline: Arc::new(JobDeadline { timeout, scheduler }),
    });
    Ok(SessionContext::new_with_state(
        SessionStateBuilder::new_from_existing(state)
            .with_query_planner(planner)
            .build(),
    ))
}

/// How long a job may take, and the scheduler to cancel it on (none for the in-process
/// standalone cluster, which stops with the run).
#[derive(Debug)]
struct JobDeadline {
    timeout: Duration,
    /// `http://host:port` of a remote scheduler.
    scheduler: Option<String>,
}

impl JobDeadline {
    /// The error for a job that ran out of time, after asking the scheduler to cancel it.
    async fn expire(&self, job: Option<String>) -> DataFusionError {
        let secs = self.timeout.as_secs();
        let Some(job) = job else {
            return DataFusionError::Execution(format!(
                "the Ballista scheduler did not accept the job within {secs} s (engine.job_timeout_secs)"
            ));
        };
        let cancelled = match &self.scheduler {
            None => "; the in-process cluster stops with this run".to_string(),
            Some(url) => match tokio::time::timeout(CANCEL_TIMEOUT, cancel_job(url, &job)).await {
                Ok(Ok(())) => "; it was cancelled on the scheduler".to_string(),
                Ok(Err(e)) => format!("; cancelling it on the scheduler failed: {e}"),
                Err(_) => format!(
                    "; the scheduler did not answer the cancellation within {} s",
                    CANCEL_TIMEOUT.as_secs()
                ),
            },
        };
        DataFusionError::Execution(format!(
            "Ballista job {job} did not finish within {secs} s (engine.job_timeout_secs){cancelled}"
        ))
    }
}

/// How long a timed-out job's cancellation may take before the run fails without it.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the scheduler at `url` to cancel `job` (its tasks stop on the executors).
async fn cancel_job(url: &str, job: &str) -> Result<(), String> {
    let mut client = SchedulerGrpcClient::connect(url.to_string())
        .await
        .map_err(|e| e.to_string())?;
    client
        .cancel_job(CancelJobParams {
            job_id: job.to_string(),
        })
        .await
        .map(|_| ())
        .map_err(|e| e.message().to_string())
}

/// Ballista's query planner, with each distributed query wrapped in a [`JobDeadlineExec`].
#[derive(Debug)]
struct DeadlinePlanner {
    inner: Arc<dyn QueryPlanner + Send + Sync>,
    deadline: Arc<JobDeadline>,
}

#[async_trait::async_trait]
impl QueryPlanner for DeadlinePlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.create_physical_plan(logical_plan, session).await?;
        if !plan.is::<DistributedQueryExec<LogicalPlanNode>>() {
            return Ok(plan);
        }
        Ok(Arc::new(JobDeadlineExec {
            input: plan,
            deadline: Arc::clone(&self.deadline),
        }))
    }
}

/// A distributed query (a Ballista job: submission, execution on the cluster, and reading
/// its results back) that fails once `engine.job_timeout_secs` have passed since it
/// started, cancelling the job on the scheduler. Without it a job waits for ever when no
/// executor is left to run its tasks.
#[derive(Debug)]
pub struct JobDeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    deadline: Arc<JobDeadline>,
}

impl DisplayAs for JobDeadlineExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "JobDeadlineExec: timeout={}s", self.deadline.timeout.as_secs())
    }
}

impl ExecutionPlan for JobDeadlineExec {
    fn name(&self) -> &str {
        "JobDeadlineExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("JobDeadlineExec has exactly one child".into()))?;
        Ok(Arc::new(JobDeadlineExec {
            input,
            deadline: Arc::clone(&self.deadline),
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let schema = stream.schema();
        let until = tokio::time::Instant::now() + self.deadline.timeout;
        let state = (Some(stream), Arc::clone(&self.input), Arc::clone(&self.deadline));
        let timed = futures::stream::unfold(state, move |(stream, input, deadline)| async move {
            let mut stream = stream?;
            match tokio::time::timeout_at(until, stream.next()).await {
                Ok(Some(item)) => Some((item, (Some(stream), input, deadline))),
                Ok(None) => None,
                Err(_) => {
                    // Stop polling the job before cancelling it.
                    drop(stream);
                    let job = input
                        .downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()
                        .and_then(|d| d.job_id())
                        .map(|id| id.to_string());
                    let error = deadline.expire(job).await;
                    Some((Err(error), (None, input, deadline)))
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, timed)))
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
        // Sessions take the `patron_store.*` options, and planning a scan of a run's files
        // in the warehouse's object store lists them through the store they name.
        override_config_producer: Some(Arc::new(cluster_store::cluster_session_config)),
        override_session_builder: Some(Arc::new(|config| {
            let state = ballista_core::utils::default_session_builder(config)?;
            cluster_store::register_session_store(state.config(), state.runtime_env())?;
            Ok(state)
        })),
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
    // Each session's runtime reaches the object store its `patron_store.*` options name
    // (the run's files in the warehouse's store), with the client's credentials.
    let work_dir = options.work_dir.clone();
    let runtime: RuntimeProducer = Arc::new(move |config: &SessionConfig| {
        let runtime = RuntimeEnvBuilder::new().with_temp_file_path(&work_dir).build_arc()?;
        cluster_store::register_session_store(config, &runtime)?;
        Ok(runtime)
    });
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
        override_config_producer: Some(Arc::new(cluster_store::cluster_session_config)),
        override_runtime_producer: Some(runtime),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| describe(&format!("executor on {}", options.bind), e))
}
