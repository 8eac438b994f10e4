//! Query execution off the protocol threads: every query runs on a thread of its own
//! ("patron-query", a single-threaded runtime), and only finished batches cross back over a
//! small channel to be encoded as rows. A CPU-bound query therefore cannot stall logins,
//! other connections or the statement-timeout timer (which lives on the protocol runtime).
//! When the timer fires or the client goes away the row stream is dropped, and the query's
//! thread stops at the engine's next yield point, dropping its runtime and every task of
//! the query. At most `max_threads` queries execute at once; a statement waits for a slot
//! until its deadline.

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

/// Batches in flight between a running query and the connection sending its rows.
const CHANNEL_BATCHES: usize = 2;

/// Runs queries, each on its own thread.
pub struct Executor {
    slots: Arc<Semaphore>,
}

/// Why a query did not start.
#[derive(Debug)]
pub enum StartError {
    /// Every execution slot stayed busy until the deadline.
    Busy,
    /// Encoding the result schema or spawning the thread failed.
    Failed(PgWireError),
}

impl Executor {
    /// An executor running at most `max_threads` queries at once.
    pub fn new(max_threads: usize) -> Executor {
        Executor {
            slots: Arc::new(Semaphore::new(max_threads.max(1))),
        }
    }

    /// Starts executing `plan` on `ctx` and returns the response whose rows stream in as
    /// batches finish, encoded in `format`.
    pub async fn start(
        &self,
        ctx: SessionContext,
        plan: LogicalPlan,
        format: &Format,
        options: Arc<FormatOptions>,
        deadline: Instant,
    ) -> Result<QueryResponse, StartError> {
        let fields = Arc::new(
            arrow_schema_to_pg_fields(plan.schema().as_arrow(), format, Some(options)).map_err(StartError::Failed)?,
        );
        let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| StartError::Busy)?
            .map_err(|_| StartError::Busy)?;
        let (tx, rx) = mpsc::channel::<Result<RecordBatch, DataFusionError>>(CHANNEL_BATCHES);
        std::thread::Builder::new()
            .name("patron-query".into())
            .spawn(move || execute(ctx, plan, tx, permit))
            .map_err(|e| StartError::Failed(PgWireError::IoError(e)))?;
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

/// The body of a query thread: run the plan, send its batches, stop when nobody listens.
fn execute(
    ctx: SessionContext,
    plan: LogicalPlan,
    tx: mpsc::Sender<Result<RecordBatch, DataFusionError>>,
    _permit: OwnedSemaphorePermit,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.blocking_send(Err(DataFusionError::External(Box::new(e))));
            return;
        }
    };
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
