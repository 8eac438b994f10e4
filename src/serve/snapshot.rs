//! The published state `patron serve` answers from: every table of the latest succeeded run
//! at the Delta version that run committed, plus `runs`, `pg_catalog` and
//! `information_schema`, in one DataFusion session that never changes once built.
//!
//! Before each statement [`Published::current`] looks at the `runs` table's log (a directory
//! listing; in an object store at most once per [`REMOTE_REFRESH_INTERVAL`], since each
//! listing is a paid request); when a new run was recorded and it succeeded, a new
//! [`Snapshot`] is built and later statements use it. A statement holds its snapshot for its whole life, so it sees
//! one run's tables even if a publish lands meanwhile; no restart is needed.

use crate::warehouse::Warehouse;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use tokio::sync::Mutex;

use super::ServeError;
use crate::publish::{read, runs};

/// The catalog (database) name clients see.
pub const CATALOG: &str = "patron";
/// The schema the published tables live in.
pub const SCHEMA: &str = "public";

/// How often, at most, a warehouse in an object store is checked for a new run: a BI tool
/// sends many statements a second, and each check lists the `runs` log.
pub const REMOTE_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// One run's tables, ready to query.
pub struct Snapshot {
    /// The run whose tables these are.
    pub run_id: String,
    /// Names of the tables registered (published tables and `runs`), sorted.
    pub tables: Vec<String>,
    ctx: Arc<SessionContext>,
}

impl Snapshot {
    /// Registers the tables `record` published, `runs`, `pg_catalog` and the PostgreSQL
    /// functions BI tools call.
    pub async fn build(warehouse: &Warehouse, record: &runs::RunRecord) -> Result<Snapshot, ServeError> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA);
        let ctx = SessionContext::new_with_config(config);
        read::register_run(&ctx, warehouse, record).await?;
        let mut tables: Vec<String> = ctx
            .catalog(CATALOG)
            .and_then(|c| c.schema(SCHEMA))
            .map(|s| s.table_names())
            .unwrap_or_default();
        tables.sort();
        setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider).map_err(|e| ServeError::Engine(e.to_string()))?;
        let mut state = ctx.state();
        datafusion_postgres::datafusion_pg_functions::register_all(&mut state);
        let ctx = Arc::new(SessionContext::new_with_state(state));
        super::compat::register(&ctx).map_err(|e| ServeError::Engine(e.to_string()))?;
        Ok(Snapshot {
            run_id: record.run_id.clone(),
            tables,
            ctx,
        })
    }

    /// The snapshot's session. It is never handed to a client statement: statements run on
    /// a [`query_context`](Self::query_context) of their own.
    pub fn context(&self) -> &Arc<SessionContext> {
        &self.ctx
    }

    /// A session for one statement: the same tables and functions, planned in the
    /// connection's `time_zone` (`None`: the server's), with its own memory pool of `memory_limit_bytes` and no
    /// spilling to disk, so a query that needs more fails alone instead of starving the
    /// others. Nothing a statement does to its session outlives the statement.
    pub fn query_context(
        &self,
        memory_limit_bytes: usize,
        time_zone: Option<&str>,
    ) -> Result<SessionContext, DataFusionError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(memory_limit_bytes, 1.0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .with_object_store_registry(Arc::clone(&self.ctx.runtime_env().object_store_registry))
            .build_arc()?;
        let mut config = self.ctx.state().config().clone();
        if let Some(tz) = time_zone {
            config.options_mut().execution.time_zone = Some(tz.to_string());
        }
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_config(config)
            .with_runtime_env(runtime)
            .build();
        Ok(SessionContext::new_with_state(state))
    }
}

struct Current {
    /// The `runs` log commit seen when `snapshot` was last checked.
    runs_commit: Option<u64>,
    /// When the `runs` log was last looked at.
    checked: Instant,
    snapshot: Arc<Snapshot>,
}

/// The latest published state of a warehouse, refreshed when a run is recorded.
pub struct Published {
    warehouse: Warehouse,
    current: Mutex<Current>,
}

impl Published {
    /// Loads the latest succeeded run of `warehouse`; an error when there is none.
    pub async fn open(warehouse: &Warehouse) -> Result<Published, ServeError> {
        let runs_commit = runs::committed_version(warehouse).await;
        let records = runs::read_all(warehouse).await?;
        let record = runs::latest_succeeded(&records, None).ok_or_else(|| ServeError::NoRun {
            warehouse: warehouse.to_string(),
        })?;
        let snapshot = Arc::new(Snapshot::build(warehouse, record).await?);
        Ok(Published {
            warehouse: warehouse.clone(),
            current: Mutex::new(Current {
                runs_commit,
                checked: Instant::now(),
                snapshot,
            }),
        })
    }

    /// The snapshot a new statement should use: the current one, or a new one when a run
    /// succeeded since. If loading the new run fails, the previous snapshot keeps serving
    /// and the next statement tries again.
    pub async fn current(&self) -> Arc<Snapshot> {
        let mut current = self.current.lock().await;
        if self.warehouse.is_remote() && current.checked.elapsed() < REMOTE_REFRESH_INTERVAL {
            return Arc::clone(&current.snapshot);
        }
        current.checked = Instant::now();
        let commit = runs::committed_version(&self.warehouse).await;
        if commit != current.runs_commit {
            match self.latest_if_new(&current.snapshot.run_id).await {
                Ok(Some(snapshot)) => {
                    tracing::info!(run_id = %snapshot.run_id, "serving a new run");
                    current.snapshot = Arc::new(snapshot);
                    current.runs_commit = commit;
                }
                Ok(None) => current.runs_commit = commit,
                Err(e) => tracing::warn!(error = %e, "a new run could not be loaded; still serving the previous one"),
            }
        }
        Arc::clone(&current.snapshot)
    }

    async fn latest_if_new(&self, serving: &str) -> Result<Option<Snapshot>, ServeError> {
        let records = runs::read_all(&self.warehouse).await?;
        match runs::latest_succeeded(&records, None) {
            Some(r) if r.run_id != serving => Ok(Some(Snapshot::build(&self.warehouse, r).await?)),
            _ => Ok(None),
        }
    }
}
