//! `[serve]` in the pipeline file: where `patron serve` listens, who may log in, TLS and the
//! limits that keep one query from taking the server down. Validated with the rest of the
//! pipeline file, so a typo in a password hash is reported before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::auth::PasswordHash;
use crate::problems::Problems;

/// Serving settings (`[serve]` in the pipeline file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSettings {
    /// Address and port to listen on; anything but loopback needs `users`.
    pub listen: String,
    /// Who may log in: name and SCRAM-SHA-256 password hash (`patron serve --hash-password`).
    /// None: no password asked, allowed on a loopback address only.
    pub users: Vec<UserEntry>,
    /// PEM certificate chain for TLS (relative to the project root); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for TLS; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Refuse clients that do not switch to TLS (needs `tls_cert` and `tls_key`).
    pub require_tls: bool,
    /// A statement running longer than this is cancelled (planning, execution and sending rows).
    pub statement_timeout_secs: u64,
    /// Memory one query may use, in MiB; a query needing more fails (nothing spills to disk).
    pub query_memory_limit_mb: u64,
    /// Connections served at once; further clients are refused until one disconnects.
    pub max_connections: usize,
}

/// One user allowed to log in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The login name.
    pub name: String,
    /// Salted SCRAM-SHA-256 hash, `scram-sha-256$<iterations>:<salt>$<salted password>`
    /// (base64); never the password itself.
    pub password_hash: String,
}

/// Default listen address: loopback, PostgreSQL's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5432";

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            listen: DEFAULT_LISTEN.into(),
            users: Vec::new(),
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            statement_timeout_secs: 300,
            query_memory_limit_mb: 1024,
            max_connections: 64,
        }
    }
}

impl ServeSettings {
    /// Records problems under `serve.*`; security rules that depend on the final listen
    /// address (which `--listen` can change) are checked again at start.
    pub fn validate(&self, problems: &mut Problems) {
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(
                "serve.listen",
                format!("`{}` is not an address:port such as 127.0.0.1:5432", self.listen),
            );
        }
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                problems.push(format!("serve.users[{i}].name"), "is empty");
            }
            if self.users[..i].iter().any(|o| o.name == u.name) {
                problems.push(
                    format!("serve.users[{i}].name"),
                    format!("`{}` is listed twice", u.name),
                );
            }
            if let Err(e) = PasswordHash::parse(&u.password_hash) {
                problems.push(format!("serve.users[{i}].password_hash"), e);
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(
                "serve.tls_key",
                "`tls_cert` and `tls_key` go together: set both or neither",
            );
        }
        if self.require_tls && self.tls_cert.is_none() {
            problems.push("serve.require_tls", "needs `tls_cert` and `tls_key`");
        }
        if !(1..=86_400).contains(&self.statement_timeout_secs) {
            problems.push(
                "serve.statement_timeout_secs",
                format!("{} must be between 1 and 86400", self.statement_timeout_secs),
            );
        }
        if self.query_memory_limit_mb < 16 {
            problems.push(
                "serve.query_memory_limit_mb",
                format!("{} is below the minimum of 16", self.query_memory_limit_mb),
            );
        }
        if !(1..=10_000).contains(&self.max_connections) {
            problems.push(
                "serve.max_connections",
                format!("{} must be between 1 and 10000", self.max_connections),
            );
        }
    }

    /// Resolves the TLS paths against the project root.
    pub fn resolve_paths(&mut self, root: &std::path::Path) {
        for p in [&mut self.tls_cert, &mut self.tls_key].into_iter().flatten() {
            if p.is_relative() {
                *p = root.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_each_reported() {
        let mut problems = Problems::default();
        ServeSettings::default().validate(&mut problems);
        assert!(format!("{problems:?}").contains("[]"), "{problems:?}");

        let bad = ServeSettings {
            listen: "localhost".into(),
            users: vec![UserEntry {
                name: "bi".into(),
                password_hash: "secret".into(),
            }],
            tls_cert: Some("c.pem".into()),
            tls_key: None,
            require_tls: true,
            statement_timeout_secs: 0,
            query_memory_limit_mb: 1,
            max_connections: 0,
        };
        let mut problems = Problems::default();
        bad.validate(&mut problems);
        let text = format!("{problems:?}");
        for key in [
            "serve.listen",
            "serve.users[0].password_hash",
            "serve.tls_key",
            "serve.statement_timeout_secs",
            "serve.query_memory_limit_mb",
            "serve.max_connections",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
    }
}
