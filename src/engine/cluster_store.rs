//! How a Ballista cluster's executors reach a run's files when the warehouse is in an
//! object store.
//!
//! A run stages its tables in a local folder. On a cluster whose executors share no file
//! system with patron, that folder is out of their reach, so for a warehouse in an object
//! store every file a query reads (raw tables, quarantine, seeds, materialised stages) is
//! copied to `<warehouse>/_staging/<run_id>/` first and registered by its URL
//! ([`ClusterStaging`]); the copy is deleted when the run ends. Plans then name only URLs.
//!
//! The executors (and the scheduler, which lists the files when it plans) build the store
//! from the session's `patron_store.*` options ([`StoreOptions`]): the warehouse's root
//! URL, its `[storage]` options and the credentials patron itself was given by its
//! environment. Ballista sends a session's options with every job, so executors need no
//! credentials of their own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use datafusion::common::config_err;
use datafusion::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use url::Url;

use crate::names::STAGING_DIR;
use crate::remote::{self, RemoteLocation, StorageSettings};
use crate::warehouse::{Warehouse, WarehouseError};

/// Session options naming the object store a cluster reads (`patron_store.*`): its root
/// URL, retry policy and `object_store` options, credentials included.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreOptions {
    /// `scheme://authority` of the store; nothing is registered without it.
    root: Option<String>,
    /// Every other `patron_store.` key with its value: `retry.*` and `option.<name>`.
    values: BTreeMap<String, String>,
}

const ROOT: &str = "root";
const OPTION: &str = "option.";
const RETRIES: &str = "retry.max_retries";
const RETRY_TIMEOUT: &str = "retry.timeout_secs";
const BACKOFF: &str = "retry.init_backoff_ms";

impl StoreOptions {
    /// The options reaching the store of `location` as this process does: its `[storage]`
    /// options and retry policy, plus the credentials from this process's environment.
    pub fn new(location: &RemoteLocation, settings: &StorageSettings) -> StoreOptions {
        let mut values: BTreeMap<String, String> = settings
            .effective_options(location.scheme)
            .into_iter()
            .map(|(k, v)| (format!("{OPTION}{k}"), v))
            .collect();
        values.insert(RETRIES.into(), settings.max_retries.to_string());
        values.insert(RETRY_TIMEOUT.into(), settings.retry_timeout_secs.to_string());
        values.insert(BACKOFF.into(), settings.init_backoff_ms.to_string());
        StoreOptions {
            root: Some(location.root.clone()),
            values,
        }
    }

    /// The store these options describe, `None` when they name no root.
    fn store(&self) -> DfResult<Option<(Url, Arc<dyn object_store::ObjectStore>)>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let location = RemoteLocation::parse(root)
            .ok_or_else(|| DataFusionError::Configuration(format!("patron_store.root `{root}` is not a store URL")))?;
        let number = |key: &str| -> DfResult<Option<u64>> {
            self.values
                .get(key)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        DataFusionError::Configuration(format!("patron_store.{key} `{v}` is not a whole number"))
                    })
                })
                .transpose()
        };
        let mut settings = StorageSettings::default();
        if let Some(n) = number(RETRIES)? {
            settings.max_retries = n as usize;
        }
        if let Some(n) = number(RETRY_TIMEOUT)? {
            settings.retry_timeout_secs = n;
        }
        if let Some(n) = number(BACKOFF)? {
            settings.init_backoff_ms = n.max(1);
        }
        let options = self
            .values
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(OPTION)?.to_string(), v.clone())));
        let settings = settings.with_options(location.scheme, options);
        let store =
            remote::build_store(&location, &settings).map_err(|e| DataFusionError::Configuration(e.to_string()))?;
        let url = Url::parse(root).map_err(|e| DataFusionError::Configuration(format!("{root}: {e}")))?;
        Ok(Some((url, store)))
    }
}

impl ConfigExtension for StoreOptions {
    const PREFIX: &'static str = "patron_store";
}

impl ExtensionOptions for StoreOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> DfResult<()> {
        match key {
            ROOT => self.root = Some(value.to_string()),
            RETRIES | RETRY_TIMEOUT | BACKOFF => {
                self.values.insert(key.to_string(), value.to_string());
            }
            _ if key.starts_with(OPTION) && key.len() > OPTION.len() => {
                self.values.insert(key.to_string(), value.to_string());
            }
            _ => return config_err!("`{}.{key}` is not an option of patron's cluster store", Self::PREFIX),
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        let entry = |key: &str, value: Option<String>| ConfigEntry {
            key: format!("{}.{key}", Self::PREFIX),
            value,
            description: "the object store a Ballista cluster reads a run's files from",
        };
        std::iter::once(entry(ROOT, self.root.clone()))
            .chain(self.values.iter().map(|(k, v)| entry(k, Some(v.clone()))))
            .collect()
    }
}

/// A session config for a scheduler or executor: Ballista's, able to take the
/// `patron_store.*` options a client sends, without dynamic filters ([`DYNAMIC_FILTERS`]).
pub fn cluster_session_config() -> SessionConfig {
    use ballista::prelude::SessionConfigExt;
    SessionConfig::new_with_ballista()
        .with_option_extension(StoreOptions::default())
        .set_bool(DYNAMIC_FILTERS, false)
}

/// DataFusion's dynamic filters (a hash join's build-side keys pushed into the scan of its
/// probe side while it runs), off in every Ballista session: Ballista 55's scheduler
/// re-plans a stage's joins once the stages below it finish, and swapping the sides of a
/// hash join that carries a dynamic filter fails an assertion ("Cannot swap HashJoinExec
/// with dynamic filter") and leaves the job hanging. A filter shared by the operators of
/// one process is of little use across Ballista's stages anyway.
pub const DYNAMIC_FILTERS: &str = "datafusion.optimizer.enable_dynamic_filter_pushdown";

/// Registers in `runtime` the store the `patron_store.*` options of `config` name, if any
/// (on the scheduler, which lists the files of a scan, and on every executor).
pub fn register_session_store(config: &SessionConfig, runtime: &RuntimeEnv) -> DfResult<()> {
    let Some(options) = config.options().extensions.get::<StoreOptions>() else {
        return Ok(());
    };
    if let Some((url, store)) = options.store()? {
        tracing::debug!(store = %url, "object store from the session's patron_store options");
        runtime.register_object_store(&url, store);
    }
    Ok(())
}

/// Size and modification time of a local file, to tell whether it changed since its copy.
type Stamp = (u64, Option<SystemTime>);

/// A run's copy of its staged files in the warehouse's store, for a cluster to read:
/// `<warehouse>/_staging/<run_id>/<path below the local staging folder>`; files from
/// elsewhere (seeds) under `external/`. Attached to the run's session
/// ([`ClusterStaging::of`]); the registering functions of
/// `engine::register` name tables by [`ClusterStaging::url_of`].
#[derive(Debug)]
pub struct ClusterStaging {
    warehouse: Warehouse,
    /// What executors build the warehouse's store from.
    options: StoreOptions,
    /// The run's local staging folder.
    local_root: PathBuf,
    /// `_staging/<run_id>` in the warehouse.
    key: String,
    /// Files copied so far, by local path, with what they were when copied.
    copied: Mutex<HashMap<PathBuf, Stamp>>,
}

impl ClusterStaging {
    /// The copy of run `run_id`'s staging folder `local_root`, for a warehouse in an object
    /// store; `None` for a local one (executors then read the files where they are).
    pub fn new(warehouse: &Warehouse, run_id: &str, local_root: &Path) -> Option<ClusterStaging> {
        let (location, settings) = warehouse.store_settings()?;
        Some(ClusterStaging {
            options: StoreOptions::new(location, settings),
            warehouse: warehouse.clone(),
            local_root: local_root.to_path_buf(),
            key: format!("{STAGING_DIR}/{run_id}"),
            copied: Mutex::new(HashMap::new()),
        })
    }

    /// The session options executors build the warehouse's store from.
    pub fn store_options(&self) -> &StoreOptions {
        &self.options
    }

    /// Registers the warehouse's own store in `runtime` (this process's session plans on
    /// the copies too: it reads their schemas).
    pub fn register_store(&self, runtime: &RuntimeEnv) -> DfResult<()> {
        let (Some((location, _)), Some(store)) = (self.warehouse.store_settings(), self.warehouse.remote_store())
        else {
            return Ok(());
        };
        let url = Url::parse(&location.root)
            .map_err(|e| DataFusionError::Configuration(format!("{}: {e}", location.root)))?;
        runtime.register_object_store(&url, store);
        Ok(())
    }

    /// The staging copy attached to `ctx` (a run's session on a cluster), if any.
    pub fn of(ctx: &SessionContext) -> Option<Arc<ClusterStaging>> {
        ctx.state_ref().read().config().get_extension::<ClusterStaging>()
    }

    /// The key of the copy of local `path`.
    fn key_of(&self, path: &Path) -> String {
        let relative = match path.strip_prefix(&self.local_root) {
            Ok(below) => below.to_path_buf(),
            Err(_) => {
                use sha2::Digest;
                let folder = sha2::Sha256::digest(path.parent().unwrap_or(path).to_string_lossy().as_bytes());
                let name = path.file_name().map(PathBuf::from).unwrap_or_default();
                Path::new("external").join(&hex::encode(folder)[..16]).join(name)
            }
        };
        format!("{}/{}", self.key, key_path(&relative))
    }

    /// Copies the local file or folder `path` to the store (files unchanged since their
    /// last copy are not copied again) and returns the URL executors read it by; a
    /// folder's URL ends with `/`.
    pub async fn url_of(&self, path: &Path) -> Result<String, WarehouseError> {
        let key = self.key_of(path);
        if path.is_dir() {
            for file in files_below(path).map_err(|e| self.io_error(path, e))? {
                let below = file.strip_prefix(path).unwrap_or(&file);
                self.copy(&file, &format!("{key}/{}", key_path(below))).await?;
            }
            return Ok(format!("{}/", self.warehouse.describe(&key)));
        }
        self.copy(path, &key).await?;
        Ok(self.warehouse.describe(&key))
    }

    /// Copies local `file` to `key` unless it is unchanged since its last copy.
    async fn copy(&self, file: &Path, key: &str) -> Result<(), WarehouseError> {
        let meta = std::fs::metadata(file).map_err(|e| self.io_error(file, e))?;
        let stamp = (meta.len(), meta.modified().ok());
        let known = self.copied.lock().map(|c| c.get(file) == Some(&stamp)).unwrap_or(false);
        if known {
            return Ok(());
        }
        self.warehouse.put_file(key, file).await?;
        if let Ok(mut copied) = self.copied.lock() {
            copied.insert(file.to_path_buf(), stamp);
        }
        Ok(())
    }

    fn io_error(&self, path: &Path, e: std::io::Error) -> WarehouseError {
        WarehouseError {
            location: path.display().to_string(),
            message: format!(
                "cannot copy it to {} for the cluster: {e}",
                self.warehouse.describe(&self.key)
            ),
        }
    }

    /// Deletes the run's copy; returns how many files it deleted.
    pub async fn remove(&self) -> Result<usize, WarehouseError> {
        self.warehouse.delete_under(&self.key).await
    }
}

/// A relative local path as a store key: its parts joined by `/`.
fn key_path(relative: &Path) -> String {
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// Every file below folder `dir`, in a stable order.
fn files_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                folders.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Deletes every run's copy in `warehouse` (runs killed before they could delete theirs);
/// called with the warehouse lock held, when no other run is using one.
pub async fn remove_abandoned(warehouse: &Warehouse) -> Result<usize, WarehouseError> {
    if !warehouse.is_remote() {
        return Ok(0);
    }
    warehouse.delete_under(STAGING_DIR).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::object_store::ObjectStoreUrl;

    #[test]
    fn store_options_travel_as_key_values_and_build_the_store_on_the_other_side() {
        let location = RemoteLocation::parse("s3://lake/prod").unwrap();
        let mut settings = StorageSettings::default();
        settings
            .s3
            .insert("endpoint".into(), toml::Value::String("http://127.0.0.1:9".into()));
        settings.max_retries = 2;
        let options = StoreOptions::new(&location, &settings);
        assert_eq!(
            options.values.get("option.aws_endpoint").map(String::as_str),
            Some("http://127.0.0.1:9"),
            "{options:?}"
        );
        assert_eq!(options.values.get(RETRIES).map(String::as_str), Some("2"));

        // What Ballista does with a session's options: entries out, `set` on the other side.
        let sent = SessionConfig::new().with_option_extension(options.clone());
        let mut received = cluster_session_config();
        for entry in sent.options().entries() {
            if let (true, Some(value)) = (entry.key.starts_with("patron_store."), entry.value) {
                received.options_mut().set(&entry.key, &value).unwrap();
            }
        }
        assert_eq!(received.options().extensions.get::<StoreOptions>(), Some(&options));
        let runtime = RuntimeEnv::default();
        let url = ObjectStoreUrl::parse("s3://lake").unwrap();
        assert!(runtime.object_store(&url).is_err(), "no s3 store by default");
        register_session_store(&received, &runtime).unwrap();
        assert!(runtime.object_store(&url).is_ok());

        let error = received.options_mut().set("patron_store.nonsense", "1").unwrap_err();
        assert!(error.to_string().contains("patron_store.nonsense"), "{error}");
        // Without a root nothing is registered (the local engine, a local warehouse).
        let runtime = RuntimeEnv::default();
        register_session_store(&cluster_session_config(), &runtime).unwrap();
        assert!(runtime.object_store(&url).is_err());
    }

    #[test]
    fn staged_files_keep_their_place_below_the_runs_folder_and_others_go_to_external() {
        let warehouse = Warehouse::open("s3://lake/prod", Path::new("/"), &StorageSettings::default()).unwrap();
        let staging = ClusterStaging::new(&warehouse, "r1", Path::new("/tmp/stage/r1")).unwrap();
        let raw = staging.key_of(Path::new("/tmp/stage/r1/raw/sales/part-00000.parquet"));
        assert_eq!(raw, "_staging/r1/raw/sales/part-00000.parquet");
        assert_eq!(
            warehouse.describe(&raw),
            "s3://lake/prod/_staging/r1/raw/sales/part-00000.parquet"
        );
        let seed = staging.key_of(Path::new("/project/sql/seeds/rfm_segments.csv"));
        assert!(
            seed.starts_with("_staging/r1/external/") && seed.ends_with("/rfm_segments.csv"),
            "{seed}"
        );
        assert_ne!(seed, staging.key_of(Path::new("/elsewhere/rfm_segments.csv")));
        assert!(ClusterStaging::new(&Warehouse::local("/tmp/wh"), "r1", Path::new("/tmp/wh/_staging/r1")).is_none());
    }
}
