//! Statement work off the protocol threads: parsing, planning and execution each run on a
//! thread of their own ("patron-query", a single-threaded runtime, a stack of
//! [`QUERY_STACK_BYTES`]), and only finished batches cross back over a small channel to be
//! encoded as rows. A CPU-bound parse, plan or query therefore cannot stall logins, other
//! connections or the statement-timeout timer (which lives on the protocol runtime), and
//! the deepest statement [`policy`](super::policy) lets through fits the thread's stack.
//! When the timer fires, the client cancels or goes away, the caller stops waiting; the
//! thread stops at the engine's next yield point, dropping its runtime and every task of
//! the statement. At most `max_threads` statements run at once; a statement waits for a
//! slot until its deadline.

use std::future::Future;
use std::iter;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::QueryResponse;
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::data::DataRow;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// Batches in flight between a running query and the connection sending its rows.
const CHANNEL_BATCHES: usize = 2;

/// Stack of a query thread. Planning and evaluating an expression recurses once per level
/// of nesting; this holds [`MAX_EXPRESSION_DEPTH`](super::policy::MAX_EXPRESSION_DEPTH)
/// levels in a debug build with room to spare (measured: `tests` in this module). It is
/// address space: only the pages a statement touches are ever backed by memory.
pub const QUERY_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Statements longer than this are "large": parsing one can take hundreds of MiB (a syntax
/// tree node per token), so at most [`LARGE_STATEMENT_SLOTS`] are parsed at once.
pub const LARGE_STATEMENT_BYTES: usize = 64 * 1024;
/// Large statements parsed at once, server-wide.
pub const LARGE_STATEMENT_SLOTS: usize = 2;

/// Runs statement work, each piece on its own thread.
pub struct Executor {
    slots: Arc<Semaphore>,
    large: Arc<Semaphore>,
}

/// Why statement work did not finish.
#[derive(Debug)]
pub enum StartError {
    /// Every execution slot stayed busy until the deadline.
    Busy,
    /// The work did not finish by the deadline.
    TimedOut,
    /// Encoding the result schema or spawning the thread failed.
    Failed(PgWireError),
}

impl Executor {
    /// An executor running at most `max_threads` statements at once.
    pub fn new(max_threads: usize) -> Executor {
        Executor {
            slots: Arc::new(Semaphore::new(max_threads.max(1))),
            large: Arc::new(Semaphore::new(LARGE_STATEMENT_SLOTS)),
        }
    }

    async fn slot(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, StartError> {
        permit(&self.slots, deadline).await
    }

    /// Runs `job` (parsing, planning) on a query thread and waits for its result until
    /// `deadline`. Whatever the job returns or drops is dropped on that thread too, so a deep
    /// syntax tree never unwinds on a protocol thread's small stack. `sql_bytes` is the
    /// length of the statement text the job parses (0: none); a large one also waits for
    /// one of the [`LARGE_STATEMENT_SLOTS`].
    pub async fn run<T, F, Fut>(&self, deadline: Instant, sql_bytes: usize, job: F) -> Result<T, StartError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let large = if sql_bytes > LARGE_STATEMENT_BYTES {
            Some(permit(&self.large, deadline).await?)
        } else {
            None
        };
        let permit = (self.slot(deadline).await?, large);
        let (tx, rx) = oneshot::channel::<T>();
        spawn(move |runtime| {
            let _permit = permit;
            runtime.block_on(async move {
                let mut tx = tx;
                let out = tokio::select! {
                    _ = tx.closed() => None,
                    out = job() => Some(out),
                };
                // A caller that gave up returns the value here, dropped on this thread.
                if let Some(out) = out {
                    let _ = tx.send(out);
                }
            });
        })?;
        tokio::time::timeout_at(deadline, rx)
            .await
            .map_err(|_| StartError::TimedOut)?
            .map_err(|_| StartError::Failed(PgWireError::ApiError("the query thread stopped".into())))
    }

    /// Starts executing `plan` on `ctx` and returns the response whose rows stream in as
    /// batches finish, encoded in `format`. `connection` is the connection's own slot (a
    /// connection runs a bounded number of statements at once).
    pub async fn start(
        &self,
        ctx: SessionContext,
        plan: LogicalPlan,
        format: &Format,
        options: Arc<FormatOptions>,
        deadline: Instant,
        connection: OwnedSemaphorePermit,
    ) -> Result<QueryResponse, StartError> {
        let fields = Arc::new(
            arrow_schema_to_pg_fields(plan.schema().as_arrow(), format, Some(options)).map_err(StartError::Failed)?,
        );
        let permit = self.slot(deadline).await?;
        let (tx, rx) = mpsc::channel::<Result<RecordBatch, DataFusionError>>(CHANNEL_BATCHES);
        spawn(move |runtime| execute(runtime, ctx, plan, tx, (permit, connection)))?;
        let row_fields = Arc::clone(&fields);
        let rows = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .map(move |batch| {
                let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> = match batch {
                    Ok(b) => encode_recordbatch(Arc::clone(&row_fields), b),
                    Err(e) => Box::new(iter::once(Err(PgWireError::ApiError(Box::new(e))))),
                };
                futures::stream::iter(rows)
            })
            .flatten();
        Ok(QueryResponse::new(fields, rows))
    }
}

/// A permit of `slots`, waited for until `deadline`.
async fn permit(slots: &Arc<Semaphore>, deadline: Instant) -> Result<OwnedSemaphorePermit, StartError> {
    tokio::time::timeout_at(deadline, Arc::clone(slots).acquire_owned())
        .await
        .map_err(|_| StartError::Busy)?
        .map_err(|_| StartError::Busy)
}

/// Starts a query thread with its own single-threaded runtime and runs `body` on it.
fn spawn(body: impl FnOnce(tokio::runtime::Runtime) + Send + 'static) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name("patron-query".into())
        .stack_size(QUERY_STACK_BYTES)
        .spawn(
            move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => body(runtime),
                Err(e) => tracing::warn!(error = %e, "a query thread could not start its runtime"),
            },
        )
        .map(|_| ())
        .map_err(|e| StartError::Failed(PgWireError::IoError(e)))
}

/// The body of a query thread: run the plan, send its batches, stop when nobody listens.
fn execute(
    runtime: tokio::runtime::Runtime,
    ctx: SessionContext,
    plan: LogicalPlan,
    tx: mpsc::Sender<Result<RecordBatch, DataFusionError>>,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    runtime.block_on(async move {
        let run = async {
            let mut stream = match ctx.execute_logical_plan(plan).await {
                Ok(df) => match df.execute_stream().await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(batch) = stream.next().await {
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tx.closed() => {}
            _ = run => {}
        }
    });
    // Dropping the runtime here cancels every task the query spawned.
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::Statement as DfParserStatement;
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    use super::*;
    use crate::serve::policy::{self, MAX_EXPRESSION_DEPTH, MAX_STATEMENT_BYTES};

    /// What a query thread does with `sql`: parse, check, plan, execute; the sum it returns,
    /// or the refusal.
    async fn run_sql(sql: String) -> Result<i64, String> {
        let statements = PostgresCompatibilityParser::new()
            .parse(&sql)
            .map_err(|e| e.to_string())?;
        let statement = statements.into_iter().next().ok_or("no statement")?;
        policy::check_statement(&statement).map_err(|r| r.message)?;
        let ctx = SessionContext::new();
        let plan = ctx
            .state()
            .statement_to_plan(DfParserStatement::Statement(Box::new(statement)))
            .await
            .map_err(|e| e.to_string())?;
        let batches = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let column = batches[0].column(0);
        let column = datafusion::arrow::compute::cast(column, &datafusion::arrow::datatypes::DataType::Int64)
            .map_err(|e| e.to_string())?;
        Ok(column
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .ok_or("not an integer")?
            .value(0))
    }

    /// The stack a query thread gets holds the deepest statement the policy allows (planned
    /// and executed) and the longest one it refuses (parsed, checked and dropped), with a
    /// quarter of it: a stack overflow would abort this test process.
    #[test]
    fn a_quarter_of_the_query_stack_holds_the_deepest_allowed_and_longest_refused_statements() {
        let chain = |terms: usize| format!("SELECT 1{}", "+1".repeat(terms - 1));
        // The query itself is one level of nesting.
        let deepest = chain(MAX_EXPRESSION_DEPTH - 1);
        let longest = chain(MAX_STATEMENT_BYTES / 2 - 8);
        assert!(longest.len() <= MAX_STATEMENT_BYTES);
        let filter = format!(
            "SELECT COUNT(*) FROM (VALUES (1)) t(x) WHERE {}",
            vec!["x = 1"; MAX_EXPRESSION_DEPTH / 2 - 2].join(" OR ")
        );
        let results = std::thread::Builder::new()
            .stack_size(QUERY_STACK_BYTES / 4)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                runtime.block_on(async { (run_sql(deepest).await, run_sql(filter).await, run_sql(longest).await) })
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(results.0, Ok(MAX_EXPRESSION_DEPTH as i64 - 1));
        assert_eq!(results.1, Ok(1));
        let refused = results.2.unwrap_err();
        assert!(refused.contains("too complex"), "{refused}");
    }
}
