//! Where a warehouse lives: a local folder, or a prefix in an object store
//! (`s3://bucket/warehouse`, `gs://...`, `az://...`).
//!
//! Every reader and writer of published state (Delta tables, the `runs` table, run
//! manifests, the lock) addresses it through a [`Warehouse`] by *keys* relative to its root
//! (`tables/fct_customer`, `runs/<run_id>.json`), so the same code serves both kinds. Both
//! are reached through `object_store`: the local filesystem store for a folder, the cloud
//! store (built by [`crate::remote::build_store`]: `[storage]` options, credentials from the
//! environment, retries with backoff) for a URL.
//!
//! What an object store needs for a safe publish is conditional put: a Delta commit is
//! written with "create only if absent" (S3 `If-None-Match: *`), so two writers can never
//! both commit version N ([`register_delta_handlers`]). A run's staging area is always a
//! local folder ([`Warehouse::staging_root`]); only finished tables travel to the store
//! (and, on a Ballista cluster, a copy of what the executors read:
//! `engine::cluster_store`, which builds on this module).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use url::Url;

use crate::names::STAGING_DIR;
use crate::remote::{self, RemoteLocation, Scheme, StorageSettings};

/// A warehouse operation failed: what was addressed and why.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct WarehouseError {
    /// The folder path or URL involved.
    pub location: String,
    /// What went wrong.
    pub message: String,
}

/// A warehouse: its root as people write it, and the store holding it.
#[derive(Clone)]
pub struct Warehouse {
    /// The folder (absolute) or the URL, without a trailing `/`.
    label: String,
    /// The folder, for a local warehouse.
    local: Option<PathBuf>,
    /// The store: the local filesystem, or the bucket/container at its root.
    store: Arc<dyn ObjectStore>,
    /// The warehouse root inside `store`.
    prefix: StorePath,
    /// The store's root location (`scheme://authority`) and settings, for a remote
    /// warehouse (what a cluster's executors need to reach it: [`Warehouse::store_settings`]).
    remote: Option<Arc<(RemoteLocation, StorageSettings)>>,
    /// Local folder for run staging (see [`Warehouse::staging_root`]).
    staging: PathBuf,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Warehouse").field(&self.label).finish()
    }
}

impl std::fmt::Display for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

impl PartialEq for Warehouse {
    fn eq(&self, other: &Self) -> bool {
        self.label == other.label
    }
}

fn store_err(location: String) -> impl FnOnce(object_store::Error) -> WarehouseError {
    move |e| WarehouseError {
        location,
        message: e.to_string(),
    }
}

impl Warehouse {
    /// The warehouse in folder `dir` (made absolute against the working directory).
    pub fn local(dir: impl AsRef<Path>) -> Warehouse {
        let dir = normalized(&std::path::absolute(dir.as_ref()).unwrap_or_else(|_| dir.as_ref().to_path_buf()));
        // Never the filesystem root: a path object_store cannot take as it is (not UTF-8)
        // is taken part by part, lossily.
        let prefix =
            StorePath::from_absolute_path(&dir).unwrap_or_else(|_| StorePath::from(dir.to_string_lossy().as_ref()));
        Warehouse {
            label: dir.to_string_lossy().trim_end_matches('/').to_string(),
            staging: dir.join(STAGING_DIR),
            local: Some(dir),
            store: Arc::new(LocalFileSystem::new()),
            prefix,
            remote: None,
        }
    }

    /// The warehouse at `location`: an object store URL (`s3://bucket/prefix`), or a folder
    /// resolved against `base`. `storage` gives the store's options and retry policy.
    pub fn open(location: &str, base: &Path, storage: &StorageSettings) -> Result<Warehouse, WarehouseError> {
        if !remote::is_url(location) {
            return Ok(Warehouse::local(base.join(location)));
        }
        let bad = |message: String| WarehouseError {
            location: location.to_string(),
            message,
        };
        let parsed = RemoteLocation::parse(location)
            .ok_or_else(|| bad("not a warehouse location: use a folder or an s3://, gs:// or az:// URL".into()))?;
        if parsed.scheme == Scheme::Http {
            return Err(bad(
                "an HTTP server cannot hold a warehouse (no atomic commits): use a folder or an s3://, gs:// or az:// URL"
                    .into(),
            ));
        }
        let key = parsed.key.trim_matches('/').to_string();
        if key.contains(['*', '?', '[']) {
            return Err(bad("a warehouse URL cannot contain glob characters".into()));
        }
        let store = remote::build_store(&parsed, storage).map_err(|e| bad(e.message))?;
        register_delta_handlers();
        let label = if key.is_empty() {
            parsed.root.clone()
        } else {
            parsed.url_of(&key)
        };
        Ok(Warehouse {
            staging: staging_for(&label, &storage.identity(parsed.scheme)),
            label,
            local: None,
            store,
            prefix: StorePath::from(key.as_str()),
            remote: Some(Arc::new((parsed, storage.clone()))),
        })
    }

    /// The folder of a local warehouse; `None` for an object store.
    pub fn local_dir(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// True for a warehouse in an object store.
    pub fn is_remote(&self) -> bool {
        self.local.is_none()
    }

    /// Where runs stage their tables before publishing: `_staging` in a local warehouse;
    /// for an object store, a folder under the system's temporary directory (`$TMPDIR`)
    /// named after the warehouse URL and the store's endpoint, so that two warehouses never
    /// share one (a run removes the staging folders of crashed runs of its warehouse).
    pub fn staging_root(&self) -> PathBuf {
        self.staging.clone()
    }

    /// How people see the object at `key`: its path or URL.
    pub fn describe(&self, key: &str) -> String {
        if key.is_empty() {
            self.label.clone()
        } else {
            format!("{}/{}", self.label, key.trim_matches('/'))
        }
    }

    /// The local path of `key` in a local warehouse.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        let key = key.trim_matches('/');
        self.local
            .as_ref()
            .map(|d| if key.is_empty() { d.clone() } else { d.join(key) })
    }

    fn key(&self, key: &str) -> StorePath {
        key.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// The URL of the table folder `location` (`tables/fct_customer`), as Delta Lake
    /// addresses it; a local folder is created first.
    pub fn table_url(&self, location: &str) -> Result<Url, WarehouseError> {
        let bad = |message: String| WarehouseError {
            location: self.describe(location),
            message,
        };
        match &self.local {
            Some(dir) => {
                let path = dir.join(location);
                std::fs::create_dir_all(&path).map_err(|e| bad(e.to_string()))?;
                Url::from_directory_path(&path).map_err(|()| bad("not an absolute path".into()))
            }
            None => Url::parse(&format!("{}/", self.describe(location))).map_err(|e| bad(e.to_string())),
        }
    }

    /// The store holding a remote warehouse, at its root (what Delta Lake is given for
    /// [`Warehouse::table_url`]); `None` for a local warehouse (Delta Lake opens folders
    /// itself).
    pub fn remote_store(&self) -> Option<Arc<dyn ObjectStore>> {
        self.remote.as_ref().map(|_| self.store.clone())
    }

    /// The store's root location (`s3://bucket`) and the settings it was built with, for a
    /// remote warehouse.
    pub fn store_settings(&self) -> Option<(&RemoteLocation, &StorageSettings)> {
        self.remote.as_deref().map(|(l, s)| (l, s))
    }

    /// Copies the local file `path` to `key` (in parts when it is large); readers see the
    /// whole file or none of it.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<(), WarehouseError> {
        let location = self.describe(key);
        let io = |e: std::io::Error| WarehouseError {
            location: location.clone(),
            message: format!("copying {}: {e}", path.display()),
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let mut writer = object_store::buffered::BufWriter::new(Arc::clone(&self.store), self.key(key));
        let copied = tokio::io::copy(&mut file, &mut writer).await;
        match copied {
            Ok(_) => tokio::io::AsyncWriteExt::shutdown(&mut writer).await.map_err(io),
            Err(e) => {
                let _ = writer.abort().await;
                Err(io(e))
            }
        }
    }

    /// Deletes everything under the folder `key`; returns how many objects it deleted.
    pub async fn delete_under(&self, key: &str) -> Result<usize, WarehouseError> {
        if !self.listable(key) {
            return Ok(0);
        }
        let err = || store_err(self.describe(key));
        let objects: Vec<object_store::ObjectMeta> = match self.store.list(Some(&self.key(key))).try_collect().await {
            Ok(objects) => objects,
            Err(object_store::Error::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(err()(e)),
        };
        for object in &objects {
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(err()(e)),
            }
        }
        Ok(objects.len())
    }

    /// The content of `key`, `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, WarehouseError> {
        match self.store.get(&self.key(key)).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(store_err(self.describe(key)))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(self.describe(key))(e)),
        }
    }

    /// The content of `key`, its version tag (ETag) and when it was last written; `None`
    /// when it does not exist.
    pub async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Bytes, UpdateVersion, DateTime<Utc>)>, WarehouseError> {
        match self.store.get(&self.key(key)).await {
            Ok(result) => {
                let version = UpdateVersion {
                    e_tag: result.meta.e_tag.clone(),
                    version: result.meta.version.clone(),
                };
                let modified = result.meta.last_modified;
                let bytes = result.bytes().await.map_err(store_err(self.describe(key)))?;
                Ok(Some((bytes, version, modified)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(self.describe(key))(e)),
        }
    }

    /// Writes `key` whole: readers see the old or the new content, never half of it.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), WarehouseError> {
        self.store
            .put(&self.key(key), PutPayload::from(bytes.into()))
            .await
            .map(|_| ())
            .map_err(store_err(self.describe(key)))
    }

    /// Writes `key` only if it does not exist yet (a conditional put); `false` when it did.
    pub async fn put_new(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool, WarehouseError> {
        self.put_mode(key, bytes.into(), PutMode::Create).await
    }

    /// Replaces `key` only if it is still at `version` (compare and swap); `false` when it
    /// changed or disappeared in between.
    pub async fn put_if(
        &self,
        key: &str,
        bytes: impl Into<Bytes>,
        version: UpdateVersion,
    ) -> Result<bool, WarehouseError> {
        self.put_mode(key, bytes.into(), PutMode::Update(version)).await
    }

    async fn put_mode(&self, key: &str, bytes: Bytes, mode: PutMode) -> Result<bool, WarehouseError> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self.store.put_opts(&self.key(key), PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(self.describe(key))(e)),
        }
    }

    /// Deletes `key`; a missing key is fine.
    pub async fn delete(&self, key: &str) -> Result<(), WarehouseError> {
        match self.store.delete(&self.key(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(self.describe(key))(e)),
        }
    }

    /// True when `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, WarehouseError> {
        match self.store.head(&self.key(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(self.describe(key))(e)),
        }
    }

    /// False for a local path that is not a folder (missing, or a file): nothing is
    /// under it, and listing it would be an error.
    fn listable(&self, key: &str) -> bool {
        self.local_path(key).is_none_or(|p| p.is_dir())
    }

    /// What lies directly under `key` (`None` when nothing can: a missing local folder).
    async fn listing(&self, key: &str) -> Result<Option<object_store::ListResult>, WarehouseError> {
        if !self.listable(key) {
            return Ok(None);
        }
        match self.store.list_with_delimiter(Some(&self.key(key))).await {
            Ok(listing) => Ok(Some(listing)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(self.describe(key))(e)),
        }
    }

    /// The names of the folders directly under `key`, sorted.
    pub async fn folders(&self, key: &str) -> Result<Vec<String>, WarehouseError> {
        let Some(listing) = self.listing(key).await? else {
            return Ok(Vec::new());
        };
        Ok(sorted(listing.common_prefixes.iter().filter_map(|p| p.filename())))
    }

    /// The names of the objects (files) directly under `key`, sorted.
    pub async fn files(&self, key: &str) -> Result<Vec<String>, WarehouseError> {
        let Some(listing) = self.listing(key).await? else {
            return Ok(Vec::new());
        };
        Ok(sorted(listing.objects.iter().filter_map(|o| o.location.filename())))
    }

    /// True when anything exists under the folder `key`.
    pub async fn has_any_under(&self, key: &str) -> Result<bool, WarehouseError> {
        if !self.listable(key) {
            return Ok(false);
        }
        let base = self.key(key);
        let mut listing = self.store.list(Some(&base));
        match listing.try_next().await {
            Ok(found) => Ok(found.is_some()),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(self.describe(key))(e)),
        }
    }
}

fn sorted<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<String> = names.map(str::to_string).collect();
    names.sort();
    names
}

/// `path` with `.` and `..` resolved lexically (object store paths take neither).
fn normalized(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `$TMPDIR/patron/<url as a name>-<hash of url and store identity>/_staging`.
fn staging_for(label: &str, identity: &str) -> PathBuf {
    use sha2::Digest;
    let name: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let hash = sha2::Sha256::digest(format!("{label}\n{identity}"));
    std::env::temp_dir()
        .join("patron")
        .join(format!("{name}-{}", &hex::encode(hash)[..12]))
        .join(STAGING_DIR)
}

/// Teaches Delta Lake the object store schemes patron can hold warehouses in: its default
/// log store (commits written with a conditional put, so two writers never both commit a
/// version). The stores themselves are passed per table ([`Warehouse::remote_store`]), with
/// patron's options and retry policy.
pub fn register_delta_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let registry = deltalake::logstore::logstore_factories();
        for scheme in ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"] {
            if let Ok(url) = Url::parse(&format!("{scheme}://")) {
                registry.insert(url, Arc::new(ConditionalPutLogStore));
            }
        }
    });
}

/// Delta Lake's default log store over any object store with conditional put.
struct ConditionalPutLogStore;

impl deltalake::logstore::LogStoreFactory for ConditionalPutLogStore {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_warehouse_reads_writes_and_lists_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::local(dir.path().join("wh"));
        assert_eq!(wh.get("runs/a.json").await.unwrap(), None);
        wh.put("runs/a.json", "one").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("wh/runs/a.json")).unwrap(),
            "one"
        );
        assert!(!wh.put_new("runs/a.json", "two").await.unwrap(), "exists: not replaced");
        assert!(wh.put_new("runs/b.json", "two").await.unwrap());
        wh.put("tables/t1/x.parquet", "p").await.unwrap();
        wh.put("tables/t2/_delta_log/0.json", "{}").await.unwrap();
        assert_eq!(wh.folders("tables").await.unwrap(), ["t1", "t2"]);
        assert_eq!(wh.files("runs").await.unwrap(), ["a.json", "b.json"]);
        assert!(wh.has_any_under("tables/t2/_delta_log").await.unwrap());
        assert!(!wh.has_any_under("tables/t3").await.unwrap());
        assert!(
            !wh.has_any_under("runs/a.json/_delta_log").await.unwrap(),
            "a file has nothing under it"
        );
        assert!(wh.exists("runs/b.json").await.unwrap());
        wh.delete("runs/b.json").await.unwrap();
        wh.delete("runs/b.json").await.unwrap();
        assert!(!wh.exists("runs/b.json").await.unwrap());
        assert_eq!(wh.describe("runs/a.json"), format!("{}/runs/a.json", wh));
        assert!(wh.table_url("tables/t1").unwrap().as_str().starts_with("file:///"));
        assert_eq!(wh.staging_root(), dir.path().join("wh").join(STAGING_DIR));
        // `..` is resolved, never handed to the store (which would refuse it).
        let up = Warehouse::local(dir.path().join("x/../wh2"));
        assert_eq!(up.local_dir(), Some(dir.path().join("wh2").as_path()));
        up.put("runs/a.json", "x").await.unwrap();
        assert!(dir.path().join("wh2/runs/a.json").is_file());
    }

    #[test]
    fn warehouse_urls_are_checked() {
        let s = StorageSettings::default();
        let base = Path::new("/tmp");
        let http = Warehouse::open("http://127.0.0.1:1/wh", base, &s).unwrap_err();
        assert!(http.to_string().contains("atomic"), "{http}");
        let glob = Warehouse::open("s3://bucket/wh-*", base, &s).unwrap_err();
        assert!(glob.to_string().contains("glob"), "{glob}");
        let wh = Warehouse::open("s3://bucket/a/wh/", base, &s).unwrap();
        assert!(wh.is_remote() && wh.local_dir().is_none());
        assert_eq!(wh.to_string(), "s3://bucket/a/wh");
        assert_eq!(wh.describe("tables/x"), "s3://bucket/a/wh/tables/x");
        assert_eq!(wh.table_url("tables/x").unwrap().as_str(), "s3://bucket/a/wh/tables/x/");
        assert!(wh.staging_root().starts_with(std::env::temp_dir()));
        let local = Warehouse::open("out/wh", base, &s).unwrap();
        assert_eq!(local.local_dir(), Some(Path::new("/tmp/out/wh")));
    }
}
