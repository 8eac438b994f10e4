//! The PostgreSQL protocol handlers of one connection, on top of `pgwire` and
//! `datafusion-postgres`: login (SCRAM-SHA-256 or none, TLS required or not), then every
//! statement parsed, checked by [`policy`](super::policy) and planned on a query thread
//! under the statement timeout, run on the current [`Snapshot`](super::snapshot::Snapshot) with its own session and
//! memory pool, its rows streamed to the client in bounded memory on both protocols, and
//! stopped by the statement timeout or a cancel request (57014) at any point.
//!
//! What patron does itself rather than through the crates' defaults: `datafusion-postgres`'
//! `serve()` accepts any statement (CREATE EXTERNAL TABLE reads server files), answers SET by
//! running it on the shared session, compares passwords in plain text and falls back to
//! plaintext when TLS fails to load; pgwire collects a portal's whole result before sending
//! it and listens for cancel requests only until a query's response is ready. Here session
//! statements are answered from the connection's own settings ([`session`]), and
//! `on_query` / `on_execute` are patron's, streaming rows with the timeout and the cancel
//! request watched throughout.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfParserStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser as SqlParser;
use datafusion_postgres::Parser;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::ScramAuth;
use datafusion_postgres::pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, StartupHandler};
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::portal::{Format, Portal, PortalExecutionState};
use datafusion_postgres::pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_execution_response, send_query_response, send_ready_for_query,
};
use datafusion_postgres::pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::{Entry, PortalStore};
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, DEFAULT_NAME, PgWireConnectionState,
    PgWireServerHandlers, Type,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::extendedquery::{Execute, PortalSuspended};
use datafusion_postgres::pgwire::messages::response::{EmptyQueryResponse, TransactionStatus};
use datafusion_postgres::pgwire::messages::simplequery::Query;
use datafusion_postgres::pgwire::messages::startup::ParameterStatus;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::types::format::FormatOptions;
use futures::future::{BoxFuture, Shared as SharedFuture};
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::auth::Users;
use super::compat;
use super::executor::{Executor, StartError};
use super::policy::{self, Allowed, Refusal};
use super::session::{self, Command};
use super::snapshot::Published;

/// Statements one connection may have executing at once (open portals included), so one
/// client cannot take every query slot of the server.
pub const MAX_RUNNING_PER_CONNECTION: usize = 4;

/// A parsed statement of the extended protocol, as `datafusion-postgres` stores it.
pub type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// What every connection shares: the published state, users and limits.
pub struct Shared {
    /// The published tables.
    pub published: Published,
    /// Users allowed to log in; `None` means no authentication (loopback only).
    pub users: Option<(Arc<Users>, usize)>,
    /// Refuse clients that did not switch to TLS.
    pub require_tls: bool,
    /// Longest a statement may run.
    pub statement_timeout: Duration,
    /// Memory one statement may use.
    pub query_memory_bytes: usize,
    /// Cancel requests find connections here.
    pub connections: Arc<ConnectionManager>,
    /// A parser for describing prepared statements (it does not depend on the tables).
    pub describe_parser: Arc<Parser>,
    /// Where queries execute.
    pub executor: Executor,
}

/// The handlers of one connection (pgwire asks for them once per connection).
pub struct Connection {
    shared: Arc<Shared>,
    queries: Arc<Queries>,
    /// Set when the connection is over `max_connections`: the login is answered with
    /// this error (SQLSTATE 53300), as PostgreSQL does, and the connection closed.
    refusal: Option<String>,
}

impl Connection {
    /// Handlers for a connection that is refused at login with `message`.
    pub fn refused(shared: Arc<Shared>, message: String) -> Connection {
        Connection {
            refusal: Some(message),
            ..Connection::new(shared)
        }
    }

    /// Handlers for a new connection.
    pub fn new(shared: Arc<Shared>) -> Connection {
        let queries = Arc::new(Queries {
            parser: Arc::new(CheckedParser {
                shared: Arc::clone(&shared),
            }),
            shared: Arc::clone(&shared),
            running: Arc::new(Semaphore::new(MAX_RUNNING_PER_CONNECTION)),
        });
        Connection {
            shared,
            queries,
            refusal: None,
        }
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let login = match &self.shared.users {
            None => Login::Trust(Trust {
                connections: Arc::clone(&self.shared.connections),
            }),
            Some((users, iterations)) => {
                let mut scram = ScramAuth::new(Arc::clone(users) as Arc<dyn AuthSource>);
                scram.set_iterations(*iterations);
                Login::Scram(Box::new(
                    SASLAuthStartupHandler::new(Arc::new(session::login_parameters()))
                        .with_scram(scram)
                        .with_connection_manager(Arc::clone(&self.shared.connections)),
                ))
            }
        };
        Arc::new(Startup {
            login,
            require_tls: self.shared.require_tls,
            refusal: self.refusal.clone(),
        })
    }

    fn cancel_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::cancel::CancelHandler> {
        Arc::new(DefaultCancelHandler::new(Arc::clone(&self.shared.connections)))
    }
}

/// Login without a password (only allowed on loopback addresses).
struct Trust {
    connections: Arc<ConnectionManager>,
}

impl NoopStartupHandler for Trust {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(Arc::clone(&self.connections))
    }
}

enum Login {
    Trust(Trust),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

/// The startup phase: TLS check first, then the login method.
struct Startup {
    login: Login,
    require_tls: bool,
    refusal: Option<String>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let startup = matches!(message, PgWireFrontendMessage::Startup(_));
        if let (Some(refusal), true) = (&self.refusal, startup) {
            return Err(user_error("FATAL", "53300", refusal.clone()));
        }
        if self.require_tls && startup && !client.is_secure() {
            return Err(user_error(
                "FATAL",
                "28000",
                "this server requires TLS (sslmode=require); the connection was not encrypted".into(),
            ));
        }
        match &self.login {
            Login::Trust(h) => h.on_startup(client, message).await,
            Login::Scram(h) => h.on_startup(client, message).await,
        }
    }
}

/// Simple and extended query handling of one connection.
pub struct Queries {
    shared: Arc<Shared>,
    parser: Arc<CheckedParser>,
    /// Statements this connection has executing ([`MAX_RUNNING_PER_CONNECTION`]).
    running: Arc<Semaphore>,
}

/// What ends a statement early: its deadline, or the client's cancel request.
#[derive(Clone)]
struct Stop {
    deadline: Instant,
    cancel: SharedFuture<BoxFuture<'static, ()>>,
}

impl Stop {
    /// Listens for a cancel request for the statement starting now on `client`'s connection.
    async fn new<C: ClientInfo + ?Sized>(client: &C, deadline: Instant) -> Stop {
        let handle = client.session_extensions().get::<Arc<ConnectionHandle>>();
        let cancel: BoxFuture<'static, ()> = match handle {
            Some(handle) => {
                let rx = handle.start_query().await;
                // A dropped sender (the next statement's listener replaced it) is no cancel.
                async move {
                    if rx.await.is_err() {
                        futures::future::pending::<()>().await;
                    }
                }
                .boxed()
            }
            None => futures::future::pending().boxed(),
        };
        Stop {
            deadline,
            cancel: cancel.shared(),
        }
    }

    /// The same cancel request with a new deadline (the next statement of a batch).
    fn until(&self, deadline: Instant) -> Stop {
        Stop {
            deadline,
            cancel: self.cancel.clone(),
        }
    }

    /// The error to end the statement with, once it must end.
    async fn reached(&self) -> PgWireError {
        tokio::select! {
            _ = tokio::time::sleep_until(self.deadline) => timeout_error(),
            _ = self.cancel.clone() => cancel_error(),
        }
    }

    /// Runs `work` unless the statement must end first.
    async fn guard<T>(&self, work: impl Future<Output = PgWireResult<T>>) -> PgWireResult<T> {
        tokio::select! {
            biased;
            e = self.reached() => Err(e),
            out = work => out,
        }
    }

    /// Ends `response`'s row stream with the timeout or cancel error once the statement must
    /// end; dropping the inner stream stops the query's execution.
    fn rows(&self, mut response: QueryResponse) -> QueryResponse {
        let rows = std::mem::replace(&mut response.data_rows, Box::pin(futures::stream::empty()));
        let stop = self.clone();
        response.data_rows = Box::pin(futures::stream::unfold(Some((rows, stop)), |state| async move {
            let (mut rows, stop) = state?;
            tokio::select! {
                biased;
                e = stop.reached() => Some((Err(e), None)),
                row = rows.next() => row.map(|r| (r, Some((rows, stop)))),
            }
        }));
        response
    }
}

/// When a statement starting now on a connection with `metadata` must be done: the
/// server's limit, or the client's `SET statement_timeout` when lower.
fn deadline(shared: &Shared, metadata: &HashMap<String, String>) -> Instant {
    let limit: Duration =
        session::client_timeout(metadata).map_or(shared.statement_timeout, |c| c.min(shared.statement_timeout));
    Instant::now() + limit
}

/// Parses SQL with the PostgreSQL-compatible parser; SQL it rejects that DataFusion's parser
/// reads as a DataFusion-only statement gets the read-only refusal instead.
fn parse(sql: &str) -> PgWireResult<Vec<Statement>> {
    // Depth first, on the plain parse: nothing walks a statement deeper than the bound.
    let plain = SqlParser::parse_sql(&PostgreSqlDialect {}, sql);
    if let Ok(statements) = &plain {
        for statement in statements {
            policy::check_depth(statement).map_err(refused)?;
        }
    }
    compat::parse(sql, plain).map_err(|e| match policy::refuse_datafusion_extension(sql) {
        Some(refusal) => refused(refusal),
        None => syntax_error(e),
    })
}

/// A session for one statement on the current snapshot, in the connection's time zone,
/// `current_setting` answering with the connection's settings.
async fn statement_context(shared: &Shared, metadata: &HashMap<String, String>) -> PgWireResult<SessionContext> {
    let snapshot = shared.published.current().await;
    let ctx = snapshot
        .query_context(shared.query_memory_bytes, session::time_zone(metadata).as_deref())
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let settings = metadata.clone();
    compat::register_current_setting(&ctx, move |name| session::lookup(&settings, name).ok());
    Ok(ctx)
}

/// Plans a checked query on `ctx` and checks its plan (run on a query thread).
async fn plan_query(ctx: &SessionContext, statement: Statement) -> PgWireResult<LogicalPlan> {
    let plan = ctx
        .state()
        .statement_to_plan(DfParserStatement::Statement(Box::new(statement)))
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    policy::check_plan(&plan).map_err(refused)?;
    Ok(plan)
}

/// Sends `ParameterStatus` for each reported variable that changed.
async fn report<C>(client: &mut C, reported: Vec<(&'static str, String)>) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for (name, value) in reported {
        client
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                name.to_string(),
                value,
            )))
            .await?;
    }
    Ok(())
}

/// A result of text columns, for `SHOW`.
fn text_rows(columns: &[&str], rows: Vec<Vec<String>>, format: &Format) -> PgWireResult<QueryResponse> {
    let fields: Vec<FieldInfo> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| FieldInfo::new(c.to_string(), None, None, Type::TEXT, format.format_for(i)))
        .collect();
    let fields = Arc::new(fields);
    let encoded = rows
        .into_iter()
        .map(|row| {
            let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
            for value in row {
                encoder.encode_field(&Some(value))?;
            }
            Ok(encoder.take_row())
        })
        .collect::<Vec<PgWireResult<_>>>();
    Ok(QueryResponse::new(fields, futures::stream::iter(encoded)))
}

/// The plan stored for a session statement at Parse: no rows to read, the columns `SHOW`
/// answers with (so Describe tells the client what Execute will send).
fn session_plan(command: &Command) -> PgWireResult<LogicalPlan> {
    let columns: Vec<&str> = match command {
        Command::Show(v) => vec![v.name],
        Command::ShowAll => vec!["name", "setting", "description"],
        _ => vec![],
    };
    let schema = Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    );
    let schema = DFSchema::try_from(schema).map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    Ok(LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(schema),
    }))
}

/// The transaction status after `response` (as PostgreSQL reports it in ReadyForQuery).
fn status_after(status: TransactionStatus, response: &Response) -> TransactionStatus {
    match response {
        Response::TransactionStart(_) => status.to_in_transaction_state(),
        Response::TransactionEnd(_) => status.to_idle_state(),
        _ => status,
    }
}

/// Sends a response without rows (a command tag, an empty query).
async fn send_tag<C>(client: &mut C, response: Response) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    match response {
        Response::EmptyQuery => {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new()))
                .await?
        }
        Response::Execution(tag) | Response::TransactionStart(tag) | Response::TransactionEnd(tag) => {
            send_execution_response(client, tag).await?
        }
        Response::Error(e) => client.feed(PgWireBackendMessage::ErrorResponse((*e).into())).await?,
        _ => {
            return Err(PgWireError::ApiError(
                "patron serve: a response kind it never makes".into(),
            ));
        }
    }
    Ok(())
}

impl Queries {
    fn deadline<C: ClientInfo + ?Sized>(&self, client: &C) -> Instant {
        deadline(&self.shared, client.metadata())
    }

    /// Parses and checks a simple-protocol query string on a query thread: its statements
    /// and how each is allowed, or the refusal of the first refused one (none runs then).
    async fn prepare(&self, sql: &str, stop: &Stop) -> PgWireResult<Vec<(Statement, Allowed)>> {
        policy::check_size(sql).map_err(refused)?;
        let sql = sql.to_string();
        let job = self.shared.executor.run(stop.deadline, sql.len(), move || async move {
            parse(&sql)?
                .into_iter()
                .map(|s| policy::check_statement(&s).map(|a| (s, a)).map_err(refused))
                .collect::<PgWireResult<Vec<_>>>()
        });
        stop.guard(async { job.await.map_err(start_error)? }).await
    }

    /// The response to one allowed statement. Session statements change only this
    /// connection's settings (reported changes are sent as `ParameterStatus` first); queries
    /// are planned on a query thread (unless `plan` was made at Parse) and start executing,
    /// their rows streaming afterwards.
    async fn respond<C>(
        &self,
        client: &mut C,
        statement: Statement,
        allowed: Allowed,
        plan: Option<LogicalPlan>,
        format: &Format,
        stop: &Stop,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let command = match allowed {
            Allowed::Session(command) => command,
            Allowed::Query => return self.start_query(client, statement, plan, format, stop).await,
        };
        Ok(match command {
            Command::Set(changes, tag) => {
                let reported = session::apply(client.metadata_mut(), &changes);
                report(client, reported).await?;
                Response::Execution(Tag::new(tag))
            }
            Command::ResetAll(tag) => {
                let reported = session::reset_all(client.metadata_mut());
                report(client, reported).await?;
                Response::Execution(Tag::new(tag))
            }
            Command::Show(v) => {
                let value = session::value(client.metadata(), v);
                Response::Query(text_rows(&[v.name], vec![vec![value]], format)?)
            }
            Command::ShowAll => {
                let rows = session::VARIABLES
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.to_string(),
                            session::value(client.metadata(), v),
                            v.description.to_string(),
                        ]
                    })
                    .collect();
                Response::Query(text_rows(&["name", "setting", "description"], rows, format)?)
            }
            Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Command::End(tag) => Response::TransactionEnd(Tag::new(tag)),
            Command::Savepoint(tag) | Command::NoOp(tag) => Response::Execution(Tag::new(tag)),
        })
    }

    /// Plans (when needed) and starts one query on the current snapshot.
    async fn start_query<C>(
        &self,
        client: &mut C,
        statement: Statement,
        plan: Option<LogicalPlan>,
        format: &Format,
        stop: &Stop,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let running = Arc::clone(&self.running).try_acquire_owned().map_err(|_| {
            user_error(
                "ERROR",
                "53000",
                format!(
                    "this connection already has {MAX_RUNNING_PER_CONNECTION} statements executing; \
                     finish or close an open portal first"
                ),
            )
        })?;
        let ctx = statement_context(&self.shared, client.metadata()).await?;
        let plan = match plan {
            Some(plan) => {
                drop(statement);
                plan
            }
            None => {
                let ctx = ctx.clone();
                let job =
                    self.shared.executor.run(
                        stop.deadline,
                        0,
                        move || async move { plan_query(&ctx, statement).await },
                    );
                stop.guard(async { job.await.map_err(start_error)? }).await?
            }
        };
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let response = stop
            .guard(async {
                self.shared
                    .executor
                    .start(ctx, plan, format, options, stop.deadline, running)
                    .await
                    .map_err(start_error)
            })
            .await?;
        Ok(Response::Query(response))
    }

    /// The simple protocol: every statement of `sql` checked first (a refused one stops the
    /// batch before anything runs), then run in order, each answered before the next
    /// starts, rows streamed under the statement's deadline and the cancel request.
    async fn run_simple<C>(&self, client: &mut C, sql: &str, status: &mut TransactionStatus) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if sql.chars().all(|c| c == ';' || c.is_whitespace()) {
            return send_tag(client, Response::EmptyQuery).await;
        }
        let stop = Stop::new(client, self.deadline(client)).await;
        let statements = self.prepare(sql, &stop).await?;
        for (statement, allowed) in statements {
            let stop = stop.until(self.deadline(client));
            let response = self
                .respond(client, statement, allowed, None, &Format::UnifiedText, &stop)
                .await?;
            *status = status_after(*status, &response);
            match response {
                Response::Query(rows) => send_query_response(client, stop.rows(rows), true).await?,
                other => send_tag(client, other).await?,
            }
        }
        Ok(())
    }

    /// Execute: starts the portal on its first Execute, then streams up to `max_rows` of its
    /// rows (0: all).
    async fn execute_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<DfStatement>,
        max_rows: usize,
        status: &mut TransactionStatus,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stop = Stop::new(client, self.deadline(client)).await;
        let state = portal.state();
        let mut state = state.lock().await;
        if matches!(*state, PortalExecutionState::Initial) {
            match self.start_portal(client, portal, &stop).await? {
                Response::Query(rows) => *state = PortalExecutionState::Suspended(rows),
                other => {
                    *status = status_after(*status, &other);
                    return send_tag(client, other).await;
                }
            }
        }
        send_portal_rows(client, &mut state, max_rows, &stop).await
    }

    /// The first Execute of a portal: parameters bound into the plan checked at Parse, then
    /// the statement answered or started.
    async fn start_portal<C>(&self, client: &mut C, portal: &Portal<DfStatement>, stop: &Stop) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stored = &portal.statement.statement;
        let (Some((statement, plan)), false) = (&stored.1, stored.0.is_empty()) else {
            return Ok(Response::EmptyQuery);
        };
        // Checked at Parse; only whether it is a session statement is decided again.
        if let Some(command) = session::command(statement).map_err(|e| refused(e.into()))? {
            let allowed = Allowed::Session(command);
            return self
                .respond(
                    client,
                    statement.clone(),
                    allowed,
                    None,
                    &portal.result_column_format,
                    stop,
                )
                .await;
        }
        let wire_types = self.shared.describe_parser.get_parameter_types(stored)?;
        let mut inferred: Vec<(String, Option<DataType>)> = plan
            .get_parameter_types()
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?
            .into_iter()
            .collect();
        inferred.sort_by_key(|(id, _)| id.trim_start_matches('$').parse::<u32>().unwrap_or(u32::MAX));
        let inferred_refs: Vec<Option<&DataType>> = inferred.iter().map(|(_, t)| t.as_ref()).collect();
        let wire_refs: Vec<Option<&Type>> = wire_types.iter().map(Some).collect();
        let params = deserialize_parameters_with_server_types(portal, &inferred_refs, &wire_refs)?;
        let plan = plan
            .clone()
            .replace_params_with_values(&params)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        self.start_query(
            client,
            statement.clone(),
            Some(plan),
            &portal.result_column_format,
            stop,
        )
        .await
    }
}

/// Sends up to `max_rows` rows (0: all) of a started portal as they arrive, then
/// `PortalSuspended` or `CommandComplete`; the rows are never collected.
async fn send_portal_rows<C>(
    client: &mut C,
    state: &mut PortalExecutionState,
    max_rows: usize,
    stop: &Stop,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let PortalExecutionState::Suspended(response) = state else {
        return send_execution_response(client, Tag::new("SELECT").with_rows(0)).await;
    };
    let tag = response.command_tag().to_string();
    let mut sent = 0;
    while max_rows == 0 || sent < max_rows {
        let next = tokio::select! {
            biased;
            e = stop.reached() => Some(Err(e)),
            row = response.data_rows().next() => row,
        };
        match next {
            Some(row) => {
                client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                sent += 1;
            }
            None => {
                *state = PortalExecutionState::Finished;
                return send_execution_response(client, Tag::new(&tag).with_rows(sent)).await;
            }
        }
    }
    client
        .send(PgWireBackendMessage::PortalSuspended(PortalSuspended::new()))
        .await?;
    Ok(())
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let mut status = client.transaction_status();
        let result = self.run_simple(client, &query.query, &mut status).await;
        // On an error pgwire sends it and ReadyForQuery, from the status set here.
        client.set_transaction_status(status);
        result?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        send_ready_for_query(client, status).await
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // pgwire calls this only from the default `on_query`, which patron replaces; it
        // answers the same statements the same way, each query's rows bounded by its deadline.
        let stop = Stop::new(client, self.deadline(client)).await;
        let mut responses = Vec::new();
        for (statement, allowed) in self.prepare(query, &stop).await? {
            let stop = stop.until(self.deadline(client));
            match self
                .respond(client, statement, allowed, None, &Format::UnifiedText, &stop)
                .await?
            {
                Response::Query(rows) => responses.push(Response::Query(stop.rows(rows))),
                other => responses.push(other),
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = DfStatement;
    type QueryParser = CheckedParser;

    fn query_parser(&self) -> Arc<CheckedParser> {
        Arc::clone(&self.parser)
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) => portal,
            Some(Entry::Empty) => return send_tag(client, Response::EmptyQuery).await,
            None => return Err(PgWireError::PortalNotFound(name.to_owned())),
        };
        client.set_state(PgWireConnectionState::QueryInProgress);
        let mut status = client.transaction_status();
        let result = self
            .execute_portal(client, &portal, message.max_rows as usize, &mut status)
            .await;
        client.set_transaction_status(status);
        result?;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<DfStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Only the default `on_execute` calls this; patron's answers the same way.
        let stop = Stop::new(client, self.deadline(client)).await;
        match self.start_portal(client, portal, &stop).await? {
            Response::Query(rows) => Ok(Response::Query(stop.rows(rows))),
            other => Ok(other),
        }
    }
}

/// The extended protocol's Parse step: the size, allow-list and depth checks, planning and
/// the plan check happen here, on a query thread under the statement timeout, so a refused
/// statement never becomes a prepared statement.
pub struct CheckedParser {
    shared: Arc<Shared>,
}

#[async_trait]
impl QueryParser for CheckedParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        policy::check_size(sql).map_err(refused)?;
        let deadline = deadline(&self.shared, client.metadata());
        let ctx = statement_context(&self.shared, client.metadata()).await?;
        let sql = sql.to_string();
        let job = self.shared.executor.run(deadline, sql.len(), move || async move {
            let mut statements = parse(&sql)?;
            let statement = match statements.len() {
                0 => return Ok(None),
                1 => statements.remove(0),
                _ => {
                    return Err(user_error(
                        "ERROR",
                        "42601",
                        "cannot insert multiple commands into a prepared statement".into(),
                    ));
                }
            };
            let plan = match policy::check_statement(&statement).map_err(refused)? {
                Allowed::Session(command) => session_plan(&command)?,
                Allowed::Query => plan_query(&ctx, statement.clone()).await?,
            };
            Ok(Some((sql, Some((statement, plan)))))
        });
        job.await.map_err(start_error)?
    }

    fn get_parameter_types(&self, stmt: &DfStatement) -> PgWireResult<Vec<Type>> {
        self.shared.describe_parser.get_parameter_types(stmt)
    }

    fn get_result_schema(&self, stmt: &DfStatement, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.shared.describe_parser.get_result_schema(stmt, column_format)
    }
}

fn user_error(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(severity.into(), code.into(), message)))
}

fn timeout_error() -> PgWireError {
    user_error("ERROR", "57014", "canceling statement due to statement timeout".into())
}

fn cancel_error() -> PgWireError {
    user_error("ERROR", "57014", "canceling statement due to user request".into())
}

fn start_error(e: StartError) -> PgWireError {
    match e {
        StartError::Busy => user_error(
            "ERROR",
            "57014",
            "canceling statement due to statement timeout (every query slot stayed busy)".into(),
        ),
        StartError::TimedOut => timeout_error(),
        StartError::Failed(e) => e,
    }
}

fn refused(refusal: Refusal) -> PgWireError {
    user_error("ERROR", refusal.code, refusal.message)
}

fn syntax_error(e: impl std::fmt::Display) -> PgWireError {
    user_error("ERROR", "42601", e.to_string())
}
