//! Who may log in to `patron serve`: users with salted SCRAM-SHA-256 password hashes, checked
//! with the SCRAM exchange (the password never crosses the wire, and the server never holds
//! or compares it in plain text).
//!
//! A hash is written `scram-sha-256$<iterations>:<salt>$<salted password>` (base64 salt and
//! `Hi(password, salt, iterations)` from RFC 5802); `patron serve --hash-password` makes one.
//! An unknown user gets a random salt and key, so the answer is the same "password
//! authentication failed" as for a wrong password and user names cannot be probed.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{SCRAM_ITERATIONS, gen_salted_password};
use datafusion_postgres::pgwire::api::auth::{AuthSource, LoginInfo, Password};
use datafusion_postgres::pgwire::error::PgWireResult;

/// Prefix of a patron password hash.
pub const HASH_PREFIX: &str = "scram-sha-256$";

/// A parsed password hash.
#[derive(Debug, Clone, PartialEq)]
pub struct PasswordHash {
    /// PBKDF2 iterations.
    pub iterations: usize,
    /// Salt.
    pub salt: Vec<u8>,
    /// `Hi(password, salt, iterations)`.
    pub salted_password: Vec<u8>,
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt and the SCRAM default of 4096 iterations.
    pub fn new(password: &str) -> PasswordHash {
        let salt: [u8; 16] = rand::random();
        PasswordHash {
            iterations: SCRAM_ITERATIONS,
            salt: salt.to_vec(),
            salted_password: gen_salted_password(password, &salt, SCRAM_ITERATIONS),
        }
    }

    /// Parses `scram-sha-256$<iterations>:<salt>$<salted password>`.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let shape = || {
            format!(
                "is not a password hash `{HASH_PREFIX}<iterations>:<salt>$<key>` (make one with `patron serve --hash-password`)"
            )
        };
        let rest = text.strip_prefix(HASH_PREFIX).ok_or_else(shape)?;
        let (params, key) = rest.split_once('$').ok_or_else(shape)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(shape)?;
        let iterations: usize = iterations.parse().map_err(|_| shape())?;
        if iterations < SCRAM_ITERATIONS {
            return Err(format!(
                "{iterations} iterations is below the SCRAM minimum of {SCRAM_ITERATIONS}"
            ));
        }
        let salt = STANDARD.decode(salt).map_err(|e| format!("salt is not base64: {e}"))?;
        let salted_password = STANDARD.decode(key).map_err(|e| format!("key is not base64: {e}"))?;
        if salted_password.len() != 32 || salt.is_empty() {
            return Err("salt is empty or the key is not 32 bytes (SHA-256)".into());
        }
        Ok(PasswordHash {
            iterations,
            salt,
            salted_password,
        })
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{HASH_PREFIX}{}:{}${}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(&self.salted_password)
        )
    }
}

/// The users allowed to log in, as the SCRAM exchange needs them.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, PasswordHash>,
}

impl Users {
    /// Adds (or replaces) a user.
    pub fn insert(&mut self, name: String, hash: PasswordHash) {
        self.by_name.insert(name, hash);
    }

    /// True when no user is configured (no authentication).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The one iteration count all hashes use (the SCRAM exchange announces one per server);
    /// an error naming the users when they differ.
    pub fn iterations(&self) -> Result<usize, String> {
        let mut counts: Vec<(usize, &str)> = self.by_name.iter().map(|(n, h)| (h.iterations, n.as_str())).collect();
        counts.sort();
        match (counts.first(), counts.last()) {
            (Some(a), Some(b)) if a.0 != b.0 => Err(format!(
                "password hashes use different iteration counts ({} for `{}`, {} for `{}`); rehash them with `patron serve --hash-password`",
                a.0, a.1, b.0, b.1
            )),
            (Some(a), _) => Ok(a.0),
            _ => Ok(SCRAM_ITERATIONS),
        }
    }
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        match login.user().and_then(|u| self.by_name.get(u)) {
            Some(h) => Ok(Password::new(Some(h.salt.clone()), h.salted_password.clone())),
            None => {
                let salt: [u8; 16] = rand::random();
                let key: [u8; 32] = rand::random();
                Ok(Password::new(Some(salt.to_vec()), key.to_vec()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_round_trips_and_never_contains_the_password() {
        let h = PasswordHash::new("s3cret-pass");
        let text = h.to_string();
        assert!(text.starts_with("scram-sha-256$4096:"), "{text}");
        assert!(!text.contains("s3cret-pass"));
        assert_eq!(PasswordHash::parse(&text).unwrap(), h);
        // Same password, fresh salt: a different hash.
        assert_ne!(PasswordHash::new("s3cret-pass").to_string(), text);
        // The key is Hi(password, salt, i): recomputing it from the password matches.
        assert_eq!(
            gen_salted_password("s3cret-pass", &h.salt, h.iterations),
            h.salted_password
        );
    }

    #[test]
    fn malformed_hashes_are_rejected_with_the_expected_shape() {
        for bad in [
            "plaintext",
            "scram-sha-256$4096:c2FsdA==",
            "scram-sha-256$10:c2FsdA==$AAAA",
            "scram-sha-256$4096:%%%$AAAA",
            "scram-sha-256$4096:c2FsdA==$AAAA",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
