//! `patron serve`: the latest published tables over the PostgreSQL wire protocol, for BI
//! tools (Metabase, Superset, Grafana, Tableau, Power BI) and psql, built on the
//! `datafusion-postgres` crate, secure by default:
//!
//! - read-only by construction: [`policy`] lets queries through to planning, where
//!   DataFusion's own check refuses DDL, DML and statements; session statements (SET,
//!   SHOW, BEGIN...) are answered from each connection's own settings ([`session`]) and never
//!   reach the engine; anything else is refused;
//! - no statement can crash the server: size and expression depth are bounded, and parsing,
//!   planning and execution run on query threads with stacks sized for the bound
//!   ([`executor`]), under the statement timeout, stopped by a cancel request;
//! - logins checked with SCRAM-SHA-256 against salted hashes ([`auth`]); no users is only
//!   allowed on a loopback address;
//! - TLS from `[serve] tls_cert`/`tls_key`; a certificate that does not load stops the start
//!   (no silent plaintext), and `require_tls` refuses unencrypted clients;
//! - a statement timeout, a memory pool per statement, and a connection limit.
//!
//! [`snapshot`] keeps the served tables at the latest succeeded run, refreshed without a
//! restart; [`handler`] is the protocol side.

pub mod auth;
pub mod compat;
pub mod dashboards;
pub mod executor;
pub mod handler;
pub mod policy;
pub mod session;
pub mod settings;
pub mod snapshot;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::warehouse::Warehouse;
use std::sync::Arc;
use std::time::Duration;

use datafusion_postgres::DfSessionService;
use datafusion_postgres::pgwire::api::ConnectionManager;
use datafusion_postgres::pgwire::api::query::ExtendedQueryHandler;
use datafusion_postgres::pgwire::tokio::process_socket;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::publish::PublishError;
pub use auth::{PasswordHash, Users};
pub use settings::ServeSettings;

/// Why the server did not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A security rule or setting forbids starting.
    #[error("{0}")]
    Config(String),
    /// The TLS certificate or key did not load; the server does not fall back to plaintext.
    #[error("TLS: {path}: {message}; not starting without the encryption that was configured")]
    Tls {
        /// The certificate or key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The warehouse has no succeeded run to serve.
    #[error("no succeeded run recorded in {warehouse}: run `patron run` first")]
    NoRun {
        /// The warehouse.
        warehouse: String,
    },
    /// Reading the published tables failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Setting up the query engine failed.
    #[error("query engine: {0}")]
    Engine(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ServeError {
    /// True when the operator must change the configuration (exit code 2).
    pub fn is_config_error(&self) -> bool {
        matches!(self, ServeError::Config(_) | ServeError::Tls { .. })
    }
}

/// Everything `patron serve` needs, settled from the pipeline file, environment and flags.
#[derive(Debug)]
pub struct ServeOptions {
    /// The warehouse to serve.
    pub warehouse: Warehouse,
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    pub listen: SocketAddr,
    /// Users allowed to log in (empty: no authentication).
    pub users: Users,
    /// The `[serve]` settings (TLS, limits).
    pub settings: ServeSettings,
}

/// Checks the security rules that need the final address and users: no authentication is
/// only allowed on loopback; all password hashes must share one iteration count.
pub fn check_security(listen: &SocketAddr, users: &Users) -> Result<Option<usize>, ServeError> {
    if users.is_empty() {
        if !listen.ip().is_loopback() {
            return Err(ServeError::Config(format!(
                "refusing to listen on {listen} without authentication: add users under `[serve] users` \
                 (or PATRON_SERVE_USER / PATRON_SERVE_PASSWORD_HASH), or listen on 127.0.0.1"
            )));
        }
        return Ok(None);
    }
    users.iterations().map(Some).map_err(ServeError::Config)
}

/// Loads the TLS certificate chain and key; any problem is an error.
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    let tls_err = |path: &Path, message: String| ServeError::Tls {
        path: path.to_path_buf(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err(cert, "no PEM certificate in the file".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| tls_err(key, format!("the key does not fit the certificate: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Starts serving and runs until the process is stopped (Ctrl-C ends it cleanly).
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    let ServeOptions {
        warehouse,
        listen,
        users,
        settings,
    } = options;
    let iterations = check_security(&listen, &users)?;
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
        _ if settings.require_tls => {
            return Err(ServeError::Config(
                "`require_tls` needs `tls_cert` and `tls_key`".into(),
            ));
        }
        _ => None,
    };
    let published = snapshot::Published::open(&warehouse).await?;
    let first = published.current().await;
    // Describes prepared statements from their stored plans; it parses nothing and has no
    // hooks, so no statement can reach the engine through it.
    let describer = DfSessionService::new_with_hooks(Arc::clone(first.context()), Vec::new());
    let describe_parser = ExtendedQueryHandler::query_parser(&describer);
    let auth = if iterations.is_some() {
        "scram-sha-256"
    } else {
        "none (loopback only)"
    };
    let shared = Arc::new(handler::Shared {
        published,
        users: iterations.map(|i| (Arc::new(users), i)),
        require_tls: settings.require_tls,
        statement_timeout: Duration::from_secs(settings.statement_timeout_secs),
        query_memory_bytes: (settings.query_memory_limit_mb as usize) * 1024 * 1024,
        connections: Arc::new(ConnectionManager::new()),
        describe_parser,
        executor: executor::Executor::new(settings.max_connections),
    });
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind { addr: listen, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr: listen, source })?;
    let tls_state = match (&tls, settings.require_tls) {
        (None, _) => "off",
        (Some(_), false) => "on",
        (Some(_), true) => "required",
    };
    eprintln!(
        "patron serve: listening on {bound} (run {}, {} tables; auth {auth}; tls {tls_state})",
        first.run_id,
        first.tables.len()
    );
    drop(first);
    let limiter = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("patron serve: stopped");
                return Ok(());
            }
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                continue;
            }
        };
        let tls = tls.clone();
        let Ok(permit) = Arc::clone(&limiter).try_acquire_owned() else {
            tracing::warn!(%peer, max = settings.max_connections, "connection refused: max_connections reached");
            let message = format!(
                "sorry, too many clients already (max_connections = {})",
                settings.max_connections
            );
            let connection = handler::Connection::refused(Arc::clone(&shared), message);
            tokio::spawn(async move {
                let _ = process_socket(socket, tls, connection).await;
            });
            continue;
        };
        let connection = handler::Connection::new(Arc::clone(&shared));
        tokio::spawn(async move {
            if let Err(e) = process_socket(socket, tls, connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}
