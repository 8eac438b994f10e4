//! `patron serve`: a PostgreSQL-wire SQL endpoint over the latest published tables, and
//! `patron serve --hash-password` to make the password hashes its `[serve] users` list holds.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{CliError, warehouse_of};
use crate::config::{Overrides, Plan};
use crate::error::EXIT_USAGE;
use crate::serve::{self, PasswordHash, ServeOptions, ServeSettings, Users};

/// Environment variable naming one extra user (with [`ENV_PASSWORD_HASH`]).
pub const ENV_USER: &str = "PATRON_SERVE_USER";
/// Environment variable holding that user's password hash.
pub const ENV_PASSWORD_HASH: &str = "PATRON_SERVE_PASSWORD_HASH";

/// Arguments of `patron serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Pipeline file whose warehouse and `[serve]` settings to use.
    #[arg(long, default_value = "pipelines/default.toml")]
    pub pipeline: PathBuf,
    /// Warehouse folder or object store URL such as s3://bucket/prefix (overrides the pipeline's `run.warehouse`).
    #[arg(long)]
    pub warehouse: Option<String>,
    /// Address to listen on (overrides `[serve] listen`); port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Read a password from stdin, print its hash for `[serve] users`, and exit.
    #[arg(long)]
    pub hash_password: bool,
}

/// Starts the server (or prints a password hash).
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    if args.hash_password {
        return hash_password();
    }
    let settings = if args.pipeline.exists() || args.warehouse.is_none() {
        Plan::load(&args.pipeline, &Overrides::default())
            .map_err(|e| CliError::usage(e.to_string()))?
            .serve
    } else {
        ServeSettings::default()
    };
    let warehouse = warehouse_of(&args.pipeline, args.warehouse)?;
    let listen = match args.listen {
        Some(a) => a,
        None => settings
            .listen
            .parse()
            .map_err(|_| CliError::usage(format!("`serve.listen` = `{}` is not an address", settings.listen)))?,
    };
    let mut users = Users::default();
    for u in &settings.users {
        let hash =
            PasswordHash::parse(&u.password_hash).map_err(|e| CliError::usage(format!("user `{}`: {e}", u.name)))?;
        users.insert(u.name.clone(), hash);
    }
    match (std::env::var(ENV_USER), std::env::var(ENV_PASSWORD_HASH)) {
        (Ok(name), Ok(hash)) => {
            let hash = PasswordHash::parse(&hash).map_err(|e| CliError::usage(format!("{ENV_PASSWORD_HASH}: {e}")))?;
            users.insert(name, hash);
        }
        (Err(_), Err(_)) => {}
        _ => {
            return Err(CliError::usage(format!(
                "set both {ENV_USER} and {ENV_PASSWORD_HASH}, or neither"
            )));
        }
    }
    let options = ServeOptions {
        warehouse,
        listen,
        users,
        settings,
    };
    serve::serve(options).await.map_err(|e| {
        if e.is_config_error() {
            CliError::usage(e.to_string())
        } else {
            CliError::failed(e.to_string())
        }
    })
}

fn hash_password() -> Result<(), CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("reading the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(CliError {
            message: "no password on stdin (e.g. `read -s P; echo \"$P\" | patron serve --hash-password`)".into(),
            code: EXIT_USAGE,
        });
    }
    println!("{}", PasswordHash::new(password));
    Ok(())
}
