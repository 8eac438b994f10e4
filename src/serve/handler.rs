//! The PostgreSQL protocol handlers of one connection, on top of `datafusion-postgres`:
//! login (SCRAM-SHA-256 or none, TLS required or not), then every statement checked by
//! [`policy`](super::policy), run on the current [`Snapshot`] with its own memory pool and
//! cut off at the statement timeout (including while rows are being sent).
//!
//! What patron does itself rather than through the crate's defaults: the crate's `serve()`
//! accepts any statement (CREATE EXTERNAL TABLE reads server files), compares passwords in
//! plain text, falls back to plaintext when TLS fails to load, and applies the statement
//! timeout to planning only. Here queries are planned, checked and run by patron (on the
//! [`Executor`]'s runtime, with a session per statement); SET/SHOW/BEGIN go to the crate's
//! [`DfSessionService`] hooks.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DfParserStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::ScramAuth;
use datafusion_postgres::pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, StartupHandler};
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, StreamExt};
use tokio::time::Instant;

use super::auth::Users;
use super::executor::{Executor, StartError};
use super::policy::{self, Allowed};
use super::snapshot::{Published, Snapshot};

/// A parsed statement of the extended protocol, as `datafusion-postgres` stores it.
pub type DfStatement = (String, Option<(Statement, LogicalPlan)>);

/// Client metadata key under which `datafusion-postgres` keeps `SET statement_timeout`
/// (milliseconds); patron applies the lower of it and the server's limit.
const CLIENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

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
                sql: PostgresCompatibilityParser::new(),
            }),
            shared: Arc::clone(&shared),
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
                let mut parameters = DefaultServerParameterProvider::default();
                parameters.is_superuser = false;
                parameters.default_transaction_read_only = true;
                Login::Scram(Box::new(
                    SASLAuthStartupHandler::new(Arc::new(parameters))
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
}

impl Queries {
    /// When a statement starting now must be done: the server's limit, or the client's
    /// `SET statement_timeout` when lower.
    fn deadline<C: ClientInfo + ?Sized>(&self, client: &C) -> Instant {
        let client_limit = client
            .metadata()
            .get(CLIENT_TIMEOUT_KEY)
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        let limit = client_limit.map_or(self.shared.statement_timeout, |c| c.min(self.shared.statement_timeout));
        Instant::now() + limit
    }

    /// Plans and checks one query on a session of its own, then starts it on the query
    /// runtime; rows stream afterwards, cut off at `deadline`.
    async fn run_query(
        &self,
        snapshot: &Snapshot,
        statement: Statement,
        options: Arc<FormatOptions>,
        deadline: Instant,
    ) -> PgWireResult<Response> {
        let ctx = snapshot
            .query_context(self.shared.query_memory_bytes)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let planned = async {
            let plan = ctx
                .state()
                .statement_to_plan(DfParserStatement::Statement(Box::new(statement)))
                .await
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
            policy::check_plan(&plan).map_err(read_only)?;
            Ok::<_, PgWireError>(plan)
        };
        let plan = tokio::time::timeout_at(deadline, planned)
            .await
            .map_err(|_| timeout_error())??;
        let response = self
            .shared
            .executor
            .start(ctx, plan, &Format::UnifiedText, options, deadline)
            .await
            .map_err(start_error)?;
        Ok(Response::Query(with_deadline(response, deadline)))
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.parser.parse(&super::compat::rewrite_sql(query))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        // Refuse the whole batch if any statement is refused, before running any of it.
        let kinds: Vec<Allowed> = statements
            .iter()
            .map(policy::check_statement)
            .collect::<Result<_, _>>()
            .map_err(read_only)?;
        let snapshot = self.shared.published.current().await;
        let mut responses = Vec::with_capacity(statements.len());
        for (statement, kind) in statements.into_iter().zip(kinds) {
            match kind {
                Allowed::Session => {
                    let service: &DfSessionService = snapshot.service();
                    responses.extend(SimpleQueryHandler::do_query(service, client, &statement.to_string()).await?);
                }
                Allowed::Query => {
                    let deadline = self.deadline(client);
                    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                    responses.push(self.run_query(&snapshot, statement, options, deadline).await?);
                }
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

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<DfStatement>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // The statement was checked at Parse; its plan holds the tables of the snapshot it
        // was parsed on.
        let deadline = self.deadline(client);
        let snapshot = self.shared.published.current().await;
        let stored = &portal.statement.statement;
        let (Some((statement, plan)), false) = (&stored.1, stored.0.is_empty()) else {
            return Ok(Response::EmptyQuery);
        };
        if policy::check_statement(statement) != Ok(Allowed::Query) {
            // SET, SHOW, BEGIN...: answered by the crate's hooks, no data read.
            let service: &DfSessionService = snapshot.service();
            return ExtendedQueryHandler::do_query(service, client, portal, max_rows).await;
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
        let ctx = snapshot
            .query_context(self.shared.query_memory_bytes)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let response = self
            .shared
            .executor
            .start(ctx, plan, &portal.result_column_format, options, deadline)
            .await
            .map_err(start_error)?;
        Ok(Response::Query(with_deadline(response, deadline)))
    }
}

/// The extended protocol's Parse step: the allow-list and plan check happen here, so a
/// refused statement never becomes a prepared statement.
pub struct CheckedParser {
    shared: Arc<Shared>,
    sql: PostgresCompatibilityParser,
}

impl CheckedParser {
    /// Parses with the PostgreSQL-compatible parser; SQL it rejects that DataFusion's parser
    /// reads as a DataFusion-only statement gets the read-only refusal instead.
    fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        self.sql
            .parse(sql)
            .map_err(|e| match policy::refuse_datafusion_extension(sql) {
                Some(refusal) => read_only(refusal),
                None => syntax_error(e),
            })
    }
}

#[async_trait]
impl QueryParser for CheckedParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql: &str = &super::compat::rewrite_sql(sql);
        let statements = self.parse(sql)?;
        let kind = match statements.as_slice() {
            [] => return Ok(None),
            [one] => policy::check_statement(one).map_err(read_only)?,
            _ => {
                return Err(user_error(
                    "ERROR",
                    "42601",
                    "cannot insert multiple commands into a prepared statement".into(),
                ));
            }
        };
        let snapshot = self.shared.published.current().await;
        let parser = ExtendedQueryHandler::query_parser(snapshot.service().as_ref());
        let parsed = parser.parse_sql(client, sql, types).await?;
        if kind == Allowed::Query
            && let Some((_, Some((_, plan)))) = &parsed
        {
            policy::check_plan(plan).map_err(read_only)?;
        }
        Ok(parsed)
    }

    fn get_parameter_types(&self, stmt: &DfStatement) -> PgWireResult<Vec<Type>> {
        self.shared.describe_parser.get_parameter_types(stmt)
    }

    fn get_result_schema(&self, stmt: &DfStatement, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        self.shared.describe_parser.get_result_schema(stmt, column_format)
    }
}

/// Ends the row stream with the statement-timeout error once `deadline` passes; dropping
/// the inner stream stops the query's execution.
fn with_deadline(mut response: QueryResponse, deadline: Instant) -> QueryResponse {
    let rows = std::mem::replace(&mut response.data_rows, Box::pin(futures::stream::empty()));
    let timer = Box::pin(tokio::time::sleep_until(deadline));
    response.data_rows = Box::pin(futures::stream::unfold(Some((rows, timer)), |state| async move {
        let (mut rows, mut timer) = state?;
        tokio::select! {
            biased;
            _ = &mut timer => Some((Err(timeout_error()), None)),
            row = rows.next() => row.map(|r| (r, Some((rows, timer)))),
        }
    }));
    response
}

fn user_error(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(severity.into(), code.into(), message)))
}

fn timeout_error() -> PgWireError {
    user_error("ERROR", "57014", "canceling statement due to statement timeout".into())
}

fn start_error(e: StartError) -> PgWireError {
    match e {
        StartError::Busy => user_error(
            "ERROR",
            "57014",
            "canceling statement due to statement timeout (every query slot stayed busy)".into(),
        ),
        StartError::Failed(e) => e,
    }
}

fn read_only(message: String) -> PgWireError {
    user_error("ERROR", policy::SQLSTATE_READ_ONLY, message)
}

fn syntax_error(e: impl std::fmt::Display) -> PgWireError {
    user_error("ERROR", "42601", e.to_string())
}
