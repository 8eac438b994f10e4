//! `patron serve`: a PostgreSQL-wire SQL endpoint over the latest published tables, and
//! `patron serve --hash-password` to make the password hashes its `[serve] users` list holds.

use std::io::BufRead;
use std::net::SocketAddr;

use clap::Args;

use super::{CliError, ReadArgs};
use crate::config::Overrides;
use crate::serve::{self, PasswordHash, ServeOptions, ServeSettings, Users};

/// Environment variable naming one extra user (with [`ENV_PASSWORD_HASH`]).
pub const ENV_USER: &str = "PATRON_SERVE_USER";
/// Environment variable holding that user's password hash.
pub const ENV_PASSWORD_HASH: &str = "PATRON_SERVE_PASSWORD_HASH";

/// Arguments of `patron serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The pipeline whose warehouse and `[serve]` settings to use.
    #[command(flatten)]
    pub read: ReadArgs,
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
    let settings = if args.read.pipeline.pipeline.exists() || args.read.warehouse.warehouse.is_none() {
        args.read.pipeline.load(&Overrides::default())?.serve
    } else {
        ServeSettings::default()
    };
    let warehouse = args.read.open()?;
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
    Ok(serve::serve(options).await?)
}

fn hash_password() -> Result<(), CliError> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(CliError::Stdin)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(CliError::usage(
            "no password on stdin (e.g. `read -s P; echo \"$P\" | patron serve --hash-password`)",
        ));
    }
    outln!("{}", PasswordHash::new(password));
    Ok(())
}
