//! Object stores: sources at `s3://`, `gs://`, `az://` (also `abfs://`, `abfss://`,
//! `azure://`) and `http(s)://` URLs, through the `object_store` crate.
//!
//! Credentials come only from each cloud's standard environment variables (and the files
//! those point to: `AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `AZURE_STORAGE_ACCOUNT_KEY`, ...), never from the pipeline file: a secret option in
//! `[storage]` is a configuration error. The non-secret options (custom S3 endpoint for
//! MinIO / Ceph / R2, region, `allow_http`...) come from the pipeline's `[storage]` section,
//! with the option names `object_store` documents. Every request is retried with
//! exponential backoff (`[storage] max_retries`, `retry_timeout_secs`), then fails with the
//! store's error.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::http::HttpBuilder;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::problems::Problems;

/// Object store kinds patron reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Amazon S3 and S3-compatible stores (`s3://`, `s3a://`).
    S3,
    /// Google Cloud Storage (`gs://`).
    Gcs,
    /// Azure Blob Storage / ADLS Gen2 (`az://`, `azure://`, `abfs://`, `abfss://`).
    Azure,
    /// A plain HTTP(S) server (`http://`, `https://`); listing needs WebDAV.
    Http,
}

impl Scheme {
    /// The `[storage]` sub-table holding this kind's options.
    pub fn settings_key(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gcs",
            Scheme::Azure => "azure",
            Scheme::Http => "http",
        }
    }
}

/// The scheme of a location, or `None` for a local path.
pub fn scheme_of(location: &str) -> Option<Scheme> {
    let (scheme, _) = location.split_once("://")?;
    match scheme.to_ascii_lowercase().as_str() {
        "s3" | "s3a" => Some(Scheme::S3),
        "gs" => Some(Scheme::Gcs),
        "az" | "azure" | "abfs" | "abfss" => Some(Scheme::Azure),
        "http" | "https" => Some(Scheme::Http),
        _ => None,
    }
}

/// True when `location` looks like a URL (`scheme://...`), known scheme or not.
pub fn is_url(location: &str) -> bool {
    location
        .split_once("://")
        .is_some_and(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+'))
}

/// A location URL split into the store's root (`scheme://authority`) and the object key
/// (or key glob) inside it, without a leading `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLocation {
    /// The store kind.
    pub scheme: Scheme,
    /// `scheme://authority`: the bucket, container or server.
    pub root: String,
    /// The key or key pattern below the root.
    pub key: String,
}

impl RemoteLocation {
    /// Splits `location`; `None` for local paths and unknown schemes.
    pub fn parse(location: &str) -> Option<RemoteLocation> {
        let scheme = scheme_of(location)?;
        let (prefix, rest) = location.split_once("://")?;
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        Some(RemoteLocation {
            scheme,
            root: format!("{prefix}://{authority}"),
            key: key.to_string(),
        })
    }

    /// The full URL of a key in this location's store.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{key}", self.root)
    }
}

/// The `[storage]` section: object store options by kind, and the retry policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Options for `s3://` locations (`endpoint`, `region`, `allow_http`, ...).
    #[serde(default)]
    pub s3: BTreeMap<String, toml::Value>,
    /// Options for `gs://` locations.
    #[serde(default)]
    pub gcs: BTreeMap<String, toml::Value>,
    /// Options for Azure locations (`account_name`, `use_emulator`, ...).
    #[serde(default)]
    pub azure: BTreeMap<String, toml::Value>,
    /// Options for `http(s)://` locations (`allow_http`, `timeout`, ...).
    #[serde(default)]
    pub http: BTreeMap<String, toml::Value>,
    /// Retries of a failed request (server errors, timeouts, connection resets).
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// No retry starts later than this many seconds after the first attempt.
    #[serde(default = "default_retry_timeout")]
    pub retry_timeout_secs: u64,
    /// First backoff in milliseconds; it doubles per retry (with jitter), up to 15 s.
    #[serde(default = "default_init_backoff")]
    pub init_backoff_ms: u64,
}

fn default_max_retries() -> usize {
    5
}
fn default_retry_timeout() -> u64 {
    120
}
fn default_init_backoff() -> u64 {
    100
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            s3: BTreeMap::new(),
            gcs: BTreeMap::new(),
            azure: BTreeMap::new(),
            http: BTreeMap::new(),
            max_retries: default_max_retries(),
            retry_timeout_secs: default_retry_timeout(),
            init_backoff_ms: default_init_backoff(),
        }
    }
}

/// Word parts of option names that carry secrets: those come from the environment only.
const SECRET_MARKERS: &[&str] = &[
    "secret",
    "access_key",
    "account_key",
    "token",
    "password",
    "sas",
    "service_account_key",
    "customer_key",
];

fn option_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `object_store`'s own name of option `key` for `scheme` (aliases resolved), or `None`
/// when it knows no such option.
fn canonical_key(scheme: Scheme, key: &str) -> Option<String> {
    match scheme {
        Scheme::S3 => AmazonS3ConfigKey::from_str(key).map(|k| k.as_ref().to_string()),
        Scheme::Gcs => GoogleConfigKey::from_str(key).map(|k| k.as_ref().to_string()),
        Scheme::Azure => AzureConfigKey::from_str(key).map(|k| k.as_ref().to_string()),
        Scheme::Http => ClientConfigKey::from_str(key).map(|k| k.as_ref().to_string()),
    }
    .ok()
}

/// Why an option is refused: unknown to `object_store`, or a secret.
fn check_option(scheme: Scheme, key: &str) -> Result<(), String> {
    let canonical = canonical_key(scheme, key)
        .ok_or_else(|| format!("`{key}` is not a {} option of object_store", scheme.settings_key()))?;
    if SECRET_MARKERS.iter().any(|m| canonical.contains(m)) {
        return Err(format!(
            "`{key}` is a credential: set it in the environment ({}), never in the pipeline file",
            canonical.to_ascii_uppercase()
        ));
    }
    Ok(())
}

impl StorageSettings {
    /// Checks every option name (and that none is a secret) and the retry settings.
    pub fn validate(&self, problems: &mut Problems) {
        for (scheme, options) in [
            (Scheme::S3, &self.s3),
            (Scheme::Gcs, &self.gcs),
            (Scheme::Azure, &self.azure),
            (Scheme::Http, &self.http),
        ] {
            for key in options.keys() {
                if let Err(message) = check_option(scheme, key) {
                    problems.push(format!("storage.{}.{key}", scheme.settings_key()), message);
                }
            }
        }
        if self.init_backoff_ms == 0 {
            problems.push("storage.init_backoff_ms", "must be at least 1");
        }
    }

    fn options_map(&mut self, scheme: Scheme) -> &mut BTreeMap<String, toml::Value> {
        match scheme {
            Scheme::S3 => &mut self.s3,
            Scheme::Gcs => &mut self.gcs,
            Scheme::Azure => &mut self.azure,
            Scheme::Http => &mut self.http,
        }
    }

    fn options(&self, scheme: Scheme) -> impl Iterator<Item = (&String, String)> {
        let map = match scheme {
            Scheme::S3 => &self.s3,
            Scheme::Gcs => &self.gcs,
            Scheme::Azure => &self.azure,
            Scheme::Http => &self.http,
        };
        map.iter().map(|(k, v)| (k, option_text(v)))
    }

    /// Every option a `scheme` store is built with in this process, by `object_store`'s
    /// names: the variables of the environment its builder reads (credentials included),
    /// overridden by the `[storage]` options. For building the same store in a process
    /// with another environment: the executors of a cluster.
    pub fn effective_options(&self, scheme: Scheme) -> BTreeMap<String, String> {
        let mut options: BTreeMap<String, String> = BTreeMap::new();
        if let Some(prefix) = env_prefix(scheme) {
            for (name, value) in std::env::vars_os() {
                let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
                    continue;
                };
                if name.starts_with(prefix)
                    && let Some(key) = canonical_key(scheme, &name.to_ascii_lowercase())
                {
                    options.insert(key, value.to_string());
                }
            }
        }
        for (key, value) in self.options(scheme) {
            options.insert(canonical_key(scheme, key).unwrap_or_else(|| key.clone()), value);
        }
        options
    }

    /// These settings with `options` (by `object_store`'s names) as the `scheme` options,
    /// secrets allowed: the inverse of [`StorageSettings::effective_options`].
    pub fn with_options(mut self, scheme: Scheme, options: impl IntoIterator<Item = (String, String)>) -> Self {
        let map = self.options_map(scheme);
        map.clear();
        map.extend(options.into_iter().map(|(k, v)| (k, toml::Value::String(v))));
        self
    }

    /// The options that say which server a `scheme` location is on (endpoint, region,
    /// account...), as one string: two warehouses with the same URL on different servers
    /// differ here. The endpoint the environment gives (the stores read it too) counts.
    pub fn identity(&self, scheme: Scheme) -> String {
        let from_env = ENDPOINT_VARIABLES
            .iter()
            .filter(|(s, _)| *s == scheme)
            .filter_map(|(_, var)| Some(format!("{var}={};", std::env::var(var).ok()?)));
        self.options(scheme)
            .map(|(k, v)| format!("{k}={v};"))
            .chain(from_env)
            .collect()
    }

    /// The retry policy every store uses.
    pub fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(self.init_backoff_ms),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: Duration::from_secs(self.retry_timeout_secs),
        }
    }
}

/// Environment variables naming the server of a store, read by `object_store`'s builders.
/// (A GCS bucket name is global: nothing to add.)
const ENDPOINT_VARIABLES: [(Scheme, &str); 3] = [
    (Scheme::S3, "AWS_ENDPOINT"),
    (Scheme::S3, "AWS_ENDPOINT_URL"),
    (Scheme::Azure, "AZURE_STORAGE_ACCOUNT_NAME"),
];

/// The prefix of the environment variables a `scheme` store's builder reads
/// (`AmazonS3Builder::from_env` and its twins).
fn env_prefix(scheme: Scheme) -> Option<&'static str> {
    match scheme {
        Scheme::S3 => Some("AWS_"),
        Scheme::Gcs => Some("GOOGLE_"),
        Scheme::Azure => Some("AZURE_"),
        Scheme::Http => None,
    }
}

/// A store could not be set up from its URL and options.
#[derive(Debug, thiserror::Error)]
#[error("{root}: {message}")]
pub struct StoreError {
    /// `scheme://authority` of the store.
    pub root: String,
    /// What `object_store` said.
    pub message: String,
}

/// Builds the store holding `location`, with credentials from the environment and options
/// from `[storage]` (validated by [`StorageSettings::validate`] at load time).
pub fn build_store(location: &RemoteLocation, settings: &StorageSettings) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let err = |e: object_store::Error| StoreError {
        root: location.root.clone(),
        message: e.to_string(),
    };
    let bad_key = |key: &str| StoreError {
        root: location.root.clone(),
        message: format!("unknown option `{key}`"),
    };
    let url = location.root.as_str();
    let retry = settings.retry();
    let store: Arc<dyn ObjectStore> = match location.scheme {
        Scheme::S3 => {
            let mut b = AmazonS3Builder::from_env().with_url(url).with_retry(retry);
            for (k, v) in settings.options(Scheme::S3) {
                b = b.with_config(AmazonS3ConfigKey::from_str(k).map_err(|_| bad_key(k))?, v);
            }
            Arc::new(b.build().map_err(err)?)
        }
        Scheme::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env().with_url(url).with_retry(retry);
            for (k, v) in settings.options(Scheme::Gcs) {
                b = b.with_config(GoogleConfigKey::from_str(k).map_err(|_| bad_key(k))?, v);
            }
            Arc::new(b.build().map_err(err)?)
        }
        Scheme::Azure => {
            let mut b = MicrosoftAzureBuilder::from_env().with_url(url).with_retry(retry);
            for (k, v) in settings.options(Scheme::Azure) {
                b = b.with_config(AzureConfigKey::from_str(k).map_err(|_| bad_key(k))?, v);
            }
            Arc::new(b.build().map_err(err)?)
        }
        Scheme::Http => {
            let mut b = HttpBuilder::new().with_url(url).with_retry(retry);
            // A plain `http://` location says it all: allow it without a separate option.
            if url.to_ascii_lowercase().starts_with("http://") {
                b = b.with_config(ClientConfigKey::AllowHttp, "true");
            }
            for (k, v) in settings.options(Scheme::Http) {
                b = b.with_config(ClientConfigKey::from_str(k).map_err(|_| bad_key(k))?, v);
            }
            Arc::new(b.build().map_err(err)?)
        }
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_store_root_and_key() {
        let l = RemoteLocation::parse("s3://bucket/sales/date=2026-11-*/part-*.csv").unwrap();
        assert_eq!(l.scheme, Scheme::S3);
        assert_eq!(l.root, "s3://bucket");
        assert_eq!(l.key, "sales/date=2026-11-*/part-*.csv");
        assert_eq!(l.url_of("a/b.csv"), "s3://bucket/a/b.csv");
        let a = RemoteLocation::parse("abfss://c@acct.dfs.core.windows.net/x/y.csv").unwrap();
        assert_eq!(
            (a.scheme, a.root.as_str(), a.key.as_str()),
            (Scheme::Azure, "abfss://c@acct.dfs.core.windows.net", "x/y.csv")
        );
        assert_eq!(
            RemoteLocation::parse("http://127.0.0.1:8080/f.csv").unwrap().key,
            "f.csv"
        );
        assert!(RemoteLocation::parse("/data/sales/*.csv").is_none());
        assert!(RemoteLocation::parse("ftp://host/x.csv").is_none());
        assert!(is_url("ftp://host/x.csv") && !is_url("data/x.csv"));
    }

    #[test]
    fn secrets_and_unknown_options_are_refused() {
        let mut s = StorageSettings::default();
        for (k, v) in [
            ("endpoint", "http://127.0.0.1:9000"),
            ("allow_http", "true"),
            ("region", "eu-west-1"),
        ] {
            s.s3.insert(k.into(), toml::Value::String(v.into()));
        }
        let mut p = Problems::default();
        s.validate(&mut p);
        assert!(p.is_empty(), "{p:?}");
        s.s3.insert("secret_access_key".into(), toml::Value::String("x".into()));
        s.s3.insert("aws_session_token".into(), toml::Value::String("x".into()));
        s.azure.insert("account_key".into(), toml::Value::String("x".into()));
        s.gcs.insert("no_such_option".into(), toml::Value::Boolean(true));
        let mut p = Problems::default();
        s.validate(&mut p);
        let text = format!("{p:?}");
        for needle in [
            "storage.s3.secret_access_key",
            "storage.s3.aws_session_token",
            "storage.azure.account_key",
            "storage.gcs.no_such_option",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        assert!(text.contains("environment"), "{text}");
    }
}
