//! Who may log in to `patron serve`: users with salted SCRAM-SHA-256 password hashes, checked
//! with the SCRAM exchange (the password never crosses the wire, and the server never holds
//! or compares it in plain text).
//!
//! A hash is written `scram-sha-256$<iterations>:<salt>$<salted password>` (base64 salt and
//! `Hi(password, salt, iterations)` from RFC 5802); `patron serve --hash-password` makes one.
//! An unknown user gets a salt and key derived from its name and a server secret (a hash of
//! every configured password hash), so its exchange looks like a real user's: the same
//! salt on every attempt, and the same "password authentication failed" as for a wrong
//! password. User names cannot be probed.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{SCRAM_ITERATIONS, gen_salted_password};
use datafusion_postgres::pgwire::api::auth::{AuthSource, LoginInfo, Password};
use datafusion_postgres::pgwire::error::PgWireResult;
use sha2::{Digest, Sha256};

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
    /// Secret the stand-in salt and key of unknown users are derived from.
    secret: [u8; 32],
}

impl Users {
    /// Adds (or replaces) a user.
    pub fn insert(&mut self, name: String, hash: PasswordHash) {
        self.by_name.insert(name, hash);
        self.secret = self.derive_secret();
    }

    /// A hash of every configured password hash: unknown to clients, the same across
    /// restarts while the users are, so an unknown user's salt never changes either.
    fn derive_secret(&self) -> [u8; 32] {
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        let mut hasher = Sha256::new();
        hasher.update(b"patron serve unknown-user secret");
        for name in names {
            let h = &self.by_name[name];
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&h.salt);
            hasher.update(&h.salted_password);
        }
        hasher.finalize().into()
    }

    /// The salt and key an unknown user `name` gets: derived, never stored, never matching.
    fn stand_in(&self, name: &str) -> (Vec<u8>, Vec<u8>) {
        let derive = |purpose: &[u8]| {
            let mut hasher = Sha256::new();
            hasher.update(self.secret);
            hasher.update(purpose);
            hasher.update(name.as_bytes());
            hasher.finalize().to_vec()
        };
        (derive(b"salt")[..16].to_vec(), derive(b"key"))
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
                let (salt, key) = self.stand_in(login.user().unwrap_or_default());
                Ok(Password::new(Some(salt), key))
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

    #[tokio::test]
    async fn an_unknown_user_gets_a_stable_salt_like_a_known_one() {
        let mut users = Users::default();
        users.insert("bi".into(), PasswordHash::new("pw"));
        async fn salt_of(users: &Users, name: &str) -> Option<Vec<u8>> {
            let login = LoginInfo::new(Some(name), None, "127.0.0.1".into());
            users.get_password(&login).await.unwrap().salt().map(<[u8]>::to_vec)
        }
        let known = salt_of(&users, "bi").await;
        assert_eq!(known, salt_of(&users, "bi").await);
        let ghost = salt_of(&users, "ghost").await;
        assert_eq!(
            ghost,
            salt_of(&users, "ghost").await,
            "unknown user's salt changed between attempts"
        );
        assert_ne!(ghost, salt_of(&users, "ghost2").await);
        assert_eq!(ghost.as_ref().map(Vec::len), known.as_ref().map(Vec::len));
        // The same users after a restart: the same stand-in salt.
        let mut again = Users::default();
        again.insert(
            "bi".into(),
            PasswordHash::parse(&users.by_name["bi"].to_string()).unwrap(),
        );
        assert_eq!(salt_of(&again, "ghost").await, ghost);
    }
}
