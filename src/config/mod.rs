//! Pipeline configuration: a TOML pipeline file becomes a validated [`Plan`].
//!
//! Unknown keys are rejected by serde (`deny_unknown_fields`, the message names the key, line
//! and file); values are then checked together so one run reports every problem at once,
//! before any data is read. Relative paths in the file resolve against `root`, which itself
//! is relative to the pipeline file's folder (default `..`, so `pipelines/x.toml` sees the
//! project root).

pub mod schema;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{Engine, EngineSettings};
pub use crate::problems::{Problem, Problems};
use crate::publish::PublishSettings;
use crate::remote::StorageSettings;
use crate::schedule::settings::{CronSchedule, ScheduleSettings};
use crate::score::ScoringSettings;
use crate::serve::settings::ServeSettings;
use crate::warehouse::Warehouse;
pub use schema::TableSchema;

/// Everything that can be wrong with a pipeline file or what it points to.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML did not parse or had an unknown key; the message carries line and column.
    #[error("{path}: {message}")]
    Parse {
        /// The pipeline file.
        path: PathBuf,
        /// toml's message, with line, column and the offending snippet.
        message: String,
    },
    /// Values parsed but are not acceptable; every problem is listed.
    #[error("{path}: invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The pipeline file.
        path: PathBuf,
        /// One entry per problem.
        problems: Vec<Problem>,
    },
    /// A declared export schema is malformed.
    #[error("schema {path}: {message}")]
    Schema {
        /// The schema file.
        path: PathBuf,
        /// What is wrong, with the field name.
        message: String,
    },
}

/// When the run is "as of": events after the end of this day are ignored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AsOf {
    /// The latest event date found in the extracted data.
    Latest,
    /// A fixed day, to reproduce what was known then.
    Date(NaiveDate),
}

impl AsOf {
    /// Parses `latest` or `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("latest") {
            return Ok(AsOf::Latest);
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(AsOf::Date)
            .map_err(|_| format!("`{text}` is neither `latest` nor a date YYYY-MM-DD"))
    }
}

impl std::fmt::Display for AsOf {
    /// `latest` or the day, as [`AsOf::parse`] reads them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AsOf::Latest => f.write_str("latest"),
            AsOf::Date(d) => write!(f, "{d}"),
        }
    }
}

/// File formats an export can come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma (or `delimiter`) separated text with a header line.
    Csv,
    /// One JSON object per line.
    Ndjson,
    /// Apache Parquet.
    Parquet,
}

/// How an input file is compressed (`auto`: by extension, else by its magic bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// By the file name's extension (`.gz`, `.zst`, `.bz2`, `.xz`), else by magic bytes.
    #[default]
    Auto,
    /// Not compressed.
    None,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
    /// bzip2.
    Bzip2,
    /// xz.
    Xz,
}

/// A validated source: where its files are, how to read them, what they must look like.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// Source name; its extracted table is `raw_<name>`.
    pub name: String,
    /// Resolved location: a path or glob pattern.
    pub location: String,
    /// File format.
    pub format: Format,
    /// The declared schema file.
    pub schema_file: PathBuf,
    /// The declared schema.
    pub schema: TableSchema,
    /// CSV field delimiter.
    pub delimiter: u8,
    /// Largest share of rows that may be quarantined before the run fails.
    pub error_budget: f64,
    /// How the files are compressed.
    pub compression: Compression,
    /// Character encoding of CSV / NDJSON text (UTF-8 unless declared).
    pub encoding: &'static encoding_rs::Encoding,
    /// Load only new or changed files, carrying the rest over from the last run.
    pub incremental: bool,
}

/// A validated pipeline: what one `patron run` does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Pipeline name.
    pub name: String,
    /// The pipeline file this plan came from.
    pub pipeline_file: PathBuf,
    /// SHA-256 of the pipeline file, the schemas and every SQL file: same hash, same logic.
    pub config_hash: String,
    /// Folder relative paths resolve against.
    pub root: PathBuf,
    /// The warehouse the run publishes into: a folder or an object store URL.
    pub warehouse: Warehouse,
    /// The as-of date setting.
    pub as_of: AsOf,
    /// Sources to extract, in file order.
    pub sources: Vec<SourcePlan>,
    /// Folder holding the SQL stages.
    pub sql_dir: PathBuf,
    /// Query engine settings.
    pub engine: EngineSettings,
    /// Scoring settings and thresholds.
    pub scoring: ScoringSettings,
    /// Table format, version retention, lock timeout.
    pub publish: PublishSettings,
    /// `patron serve`: listen address, users, TLS, limits (TLS paths resolved).
    pub serve: ServeSettings,
    /// Object store options and retry policy.
    pub storage: StorageSettings,
    /// Reload every file of incremental sources (`--full-refresh`).
    pub full_refresh: bool,
    /// The stages to run (`--select` / `--exclude`).
    pub selection: Selection,
    /// When `patron schedule` runs this pipeline (the `[schedule]` section), if set.
    pub schedule: Option<Schedule>,
}

/// A validated `[schedule]` section: the settings and the parsed cron expression.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The settings as written (with defaults).
    pub settings: ScheduleSettings,
    /// The cron expression, parsed, in its time zone.
    pub cron: CronSchedule,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    root: Option<String>,
    #[serde(default)]
    run: RawRun,
    #[serde(default)]
    engine: EngineSettings,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    transform: RawTransform,
    #[serde(default)]
    scoring: ScoringSettings,
    #[serde(default)]
    publish: PublishSettings,
    #[serde(default)]
    storage: StorageSettings,
    schedule: Option<ScheduleSettings>,
    #[serde(default)]
    serve: ServeSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    as_of: Option<String>,
    warehouse: Option<String>,
    error_budget: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransform {
    sql_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    location: String,
    format: Option<Format>,
    schema: String,
    delimiter: Option<String>,
    error_budget: Option<f64>,
    compression: Option<Compression>,
    encoding: Option<String>,
    #[serde(default)]
    incremental: bool,
}

/// Default share of rows a source may quarantine before the run fails.
pub const DEFAULT_ERROR_BUDGET: f64 = 0.05;

/// Overrides from the command line, applied on top of the pipeline file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--as-of`.
    pub as_of: Option<AsOf>,
    /// `--warehouse`: warehouse folder (relative to the working directory) or object store URL.
    pub warehouse: Option<String>,
    /// `--full-refresh`: incremental sources reload every file.
    pub full_refresh: bool,
    /// `--select` / `--exclude`: the stages a run runs (dbt selector syntax).
    pub selection: Selection,
    /// `--engine`: where queries execute (overrides `engine.engine`).
    pub engine: Option<Engine>,
}

/// Which stages a run runs: all when both lists are empty.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Selection {
    /// Selectors of the stages to run (`name`, `+name`, `name+`, `tag:x`, `layer:x`).
    pub select: Vec<String>,
    /// Selectors of stages to leave out.
    pub exclude: Vec<String>,
}

impl Selection {
    /// True when every stage runs.
    pub fn is_all(&self) -> bool {
        self.select.is_empty() && self.exclude.is_empty()
    }
}

impl Plan {
    /// The raw tables of the pipeline's sources (`raw_<source>`).
    pub fn source_tables(&self) -> std::collections::BTreeSet<String> {
        self.sources.iter().map(|s| crate::names::raw_table(&s.name)).collect()
    }

    /// Reads, parses and validates a pipeline file, and loads the schemas it names.
    pub fn load(pipeline_file: &Path, overrides: &Overrides) -> Result<Plan, ConfigError> {
        let text = std::fs::read_to_string(pipeline_file).map_err(|source| ConfigError::Read {
            path: pipeline_file.to_path_buf(),
            source,
        })?;
        let raw: RawPipeline = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: pipeline_file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = pipeline_file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut problems = Problems::default();
        let root_setting = base.join(raw.root.as_deref().unwrap_or(".."));
        let root = std::fs::canonicalize(&root_setting).unwrap_or_else(|e| {
            problems.push("root", format!("{}: {e}", root_setting.display()));
            root_setting.clone()
        });

        let as_of = match (&overrides.as_of, &raw.run.as_of) {
            (Some(a), _) => *a,
            (None, None) => AsOf::Latest,
            (None, Some(text)) => AsOf::parse(text).unwrap_or_else(|m| {
                problems.push("run.as_of", m);
                AsOf::Latest
            }),
        };
        let error_budget = raw.run.error_budget.unwrap_or(DEFAULT_ERROR_BUDGET);
        problems.check_range("run.error_budget", error_budget, 0.0, 1.0);
        raw.engine.validate(&mut problems);
        raw.scoring.validate(&mut problems);
        raw.publish.validate(&mut problems);
        raw.storage.validate(&mut problems);
        // `--warehouse` is relative to the working directory, `run.warehouse` to the pipeline.
        let (key, location, base) = match &overrides.warehouse {
            Some(w) => ("--warehouse", w.as_str(), Path::new(".")),
            None => (
                "run.warehouse",
                raw.run.warehouse.as_deref().unwrap_or("warehouse"),
                root.as_path(),
            ),
        };
        let warehouse = Warehouse::open(location, base, &raw.storage).unwrap_or_else(|e| {
            problems.push(key, e.message);
            Warehouse::local(root.join("warehouse"))
        });
        if warehouse.is_remote() && raw.publish.format != crate::publish::TableFormat::Delta {
            problems.push(
                "publish.format",
                "an object store warehouse takes Delta tables only (the parquet format swaps folders with renames)",
            );
        }
        let cron = raw.schedule.as_ref().and_then(|s| s.validate(&mut problems));
        raw.serve.validate(&mut problems);

        if raw.sources.is_empty() {
            problems.push("sources", "no `[[sources]]` declared");
        }
        let mut sources = Vec::with_capacity(raw.sources.len());
        let mut schema_errors = Vec::new();
        for (i, s) in raw.sources.iter().enumerate() {
            let key = |k: &str| format!("sources[{i}].{k}");
            if !is_identifier(&s.name) {
                problems.push(
                    key("name"),
                    format!(
                        "`{}` must be lower-case letters, digits and `_`, starting with a letter",
                        s.name
                    ),
                );
            }
            if raw.sources[..i].iter().any(|o| o.name == s.name) {
                problems.push(key("name"), format!("source `{}` is declared twice", s.name));
            }
            let encoding = match s.encoding.as_deref() {
                None => encoding_rs::UTF_8,
                Some(label) => encoding_rs::Encoding::for_label(label.trim().as_bytes()).unwrap_or_else(|| {
                    problems.push(
                        key("encoding"),
                        format!("`{label}` is not a known encoding (e.g. utf-8, windows-1252, iso-8859-1, utf-16le)"),
                    );
                    encoding_rs::UTF_8
                }),
            };
            let format = match s.format.or_else(|| format_from_extension(&s.location)) {
                Some(f) => f,
                None => {
                    problems.push(
                        key("format"),
                        "missing and not clear from the location's extension (csv, ndjson, parquet)",
                    );
                    Format::Csv
                }
            };
            let delimiter = match s.delimiter.as_deref() {
                None => b',',
                Some(d) if d.len() == 1 && format == Format::Csv => d.as_bytes()[0],
                Some("\\t") | Some("\t") if format == Format::Csv => b'\t',
                Some(d) => {
                    problems.push(
                        key("delimiter"),
                        format!("`{d}` must be one ASCII character, for csv sources only"),
                    );
                    b','
                }
            };
            let source_budget = s.error_budget.unwrap_or(error_budget);
            problems.check_range(&key("error_budget"), source_budget, 0.0, 1.0);
            let schema_file = root.join(&s.schema);
            match TableSchema::load(&schema_file) {
                Ok(schema) => sources.push(SourcePlan {
                    name: s.name.clone(),
                    location: resolve_location(&root, &s.location),
                    format,
                    schema_file,
                    schema,
                    delimiter,
                    error_budget: source_budget,
                    compression: s.compression.unwrap_or_default(),
                    encoding,
                    incremental: s.incremental,
                }),
                Err(ConfigError::Read { path, source }) => {
                    problems.push(key("schema"), format!("cannot read {}: {source}", path.display()))
                }
                Err(e) => schema_errors.push(e),
            }
        }
        let sql_dir = root.join(raw.transform.sql_dir.as_deref().unwrap_or("sql"));
        if !sql_dir.is_dir() {
            problems.push("transform.sql_dir", format!("{} is not a folder", sql_dir.display()));
        }
        if let Some(e) = schema_errors.into_iter().next() {
            return Err(e);
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: pipeline_file.to_path_buf(),
                problems: problems.into_vec(),
            });
        }
        let config_hash = hash_inputs(&text, &sources, &sql_dir);
        let mut serve = raw.serve;
        serve.resolve_paths(&root);
        Ok(Plan {
            name: raw.name.unwrap_or_else(|| {
                pipeline_file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "pipeline".into())
            }),
            pipeline_file: pipeline_file.to_path_buf(),
            config_hash,
            root,
            warehouse,
            as_of,
            sources,
            sql_dir,
            engine: EngineSettings {
                engine: overrides.engine.clone().unwrap_or(raw.engine.engine.clone()),
                ..raw.engine
            },
            scoring: raw.scoring,
            publish: raw.publish,
            storage: raw.storage,
            full_refresh: overrides.full_refresh,
            selection: overrides.selection.clone(),
            schedule: raw
                .schedule
                .zip(cron)
                .map(|(settings, cron)| Schedule { settings, cron }),
            serve,
        })
    }
}

/// True for names usable unquoted in SQL: `[a-z][a-z0-9_]*`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn format_from_extension(location: &str) -> Option<Format> {
    let mut lower = location.to_ascii_lowercase();
    // `sales.csv.gz` is a CSV file, compressed.
    if let Some((stem, _)) = lower.rsplit_once('.')
        && crate::extract::codec::Codec::from_extension(&lower).is_some()
    {
        lower = stem.to_string();
    }
    if lower.ends_with(".csv") {
        Some(Format::Csv)
    } else if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
        Some(Format::Ndjson)
    } else if lower.ends_with(".parquet") {
        Some(Format::Parquet)
    } else {
        None
    }
}

fn resolve_location(root: &Path, location: &str) -> String {
    if Path::new(location).is_absolute() || crate::remote::is_url(location) {
        location.to_string()
    } else {
        root.join(location).to_string_lossy().into_owned()
    }
}

/// Hashes the pipeline text, each schema and each SQL/seed file under `sql_dir` in sorted
/// order, so the hash changes exactly when the logic of the run changes.
fn hash_inputs(pipeline_text: &str, sources: &[SourcePlan], sql_dir: &Path) -> String {
    let mut h = Sha256::new();
    h.update(pipeline_text.as_bytes());
    for s in sources {
        if let Ok(bytes) = std::fs::read(&s.schema_file) {
            h.update(&bytes);
        }
    }
    let mut files = Vec::new();
    collect_files(sql_dir, &mut files);
    files.sort();
    for f in files {
        h.update(f.strip_prefix(sql_dir).unwrap_or(&f).to_string_lossy().as_bytes());
        if let Ok(bytes) = std::fs::read(&f) {
            h.update(&bytes);
        }
    }
    hex::encode(h.finalize())
}

/// Every file below `dir`, recursively (unreadable folders are skipped here and reported
/// by stage discovery).
pub fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "p.toml", "root = \".\"\n[run]\nas_off = \"latest\"\n");
        let err = Plan::load(&p, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("as_off") && err.contains("p.toml"), "{err}");
    }

    #[test]
    fn all_bad_values_are_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sql")).unwrap();
        write(dir.path(), "s.json", r#"{"fields":[{"name":"a"}]}"#);
        let p = write(
            dir.path(),
            "p.toml",
            "root = \".\"\n[run]\nas_of = \"yesterday\"\nerror_budget = 2.0\n\
             [[sources]]\nname = \"Bad Name\"\nlocation = \"x.txt\"\nschema = \"s.json\"\n",
        );
        let err = Plan::load(&p, &Overrides::default()).unwrap_err().to_string();
        for needle in ["run.as_of", "run.error_budget", "sources[0].name", "sources[0].format"] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }

    #[test]
    fn a_schedule_section_is_parsed_and_its_unknown_keys_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sql")).unwrap();
        write(dir.path(), "s.json", r#"{"fields":[{"name":"a"}]}"#);
        let base = "root = \".\"\n[[sources]]\nname = \"a\"\nlocation = \"a.csv\"\nschema = \"s.json\"\n";
        let p = write(
            dir.path(),
            "p.toml",
            &format!("{base}[schedule]\ncron = \"*/5 * * * *\"\ntimezone = \"Europe/Berlin\"\nmissed = \"catch_up\"\n"),
        );
        let plan = Plan::load(&p, &Overrides::default()).unwrap();
        let schedule = plan.schedule.expect("schedule parsed");
        assert_eq!(
            schedule.settings.missed,
            crate::schedule::settings::MissedPolicy::CatchUp
        );
        assert_eq!(schedule.settings.retries, 2);
        let p = write(
            dir.path(),
            "q.toml",
            &format!("{base}[schedule]\ncron = \"0 2 * * *\"\nretry = 3\n"),
        );
        let err = Plan::load(&p, &Overrides::default()).unwrap_err().to_string();
        assert!(
            err.contains("q.toml") && err.contains("retry") && err.contains("line"),
            "{err}"
        );
        let p = write(
            dir.path(),
            "r.toml",
            &format!("{base}[schedule]\ncron = \"0 25 * * *\"\n"),
        );
        let err = Plan::load(&p, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("r.toml") && err.contains("schedule.cron"), "{err}");
    }

    #[test]
    fn paths_resolve_against_root_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sql")).unwrap();
        write(dir.path(), "s.json", r#"{"fields":[{"name":"a"}]}"#);
        let p = write(
            dir.path(),
            "pipelines/p.toml",
            "[[sources]]\nname = \"a\"\nlocation = \"data/*.csv\"\nschema = \"s.json\"\n",
        );
        let plan = Plan::load(&p, &Overrides::default()).unwrap();
        assert_eq!(plan.sources[0].format, Format::Csv);
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(plan.sources[0].location, root.join("data/*.csv").to_string_lossy());
        assert_eq!(plan.warehouse.local_dir(), Some(root.join("warehouse").as_path()));
        assert_eq!(plan.as_of, AsOf::Latest);
    }
}
