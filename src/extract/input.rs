//! Inputs: the files of a source, wherever they are. A location is a local path or glob,
//! or an object-store URL with an optional glob in its key (`s3://bucket/sales/date=*/part-*.csv`,
//! hive-style partition folders included). Remote files are downloaded into the run's
//! staging folder before they are read, streamed in constant memory, so every reader works on
//! a local file. Each file is then decompressed (gzip, zstd, bzip2, xz: by extension, else by
//! its magic bytes) and transcoded from its declared encoding to UTF-8 while it is read.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::ExtractError;
use super::codec::Codec;
use super::reader::open;
use crate::config::{Compression, SourcePlan};
use crate::remote::{self, RemoteLocation, StorageSettings};

/// Where a listed file lives.
#[derive(Debug, Clone)]
enum Origin {
    Local(PathBuf),
    Remote {
        store: Arc<dyn ObjectStore>,
        key: ObjectPath,
    },
}

/// One listed input file, not read yet.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Path or URL, as reported in metrics and the quarantine.
    pub name: String,
    /// Size in bytes when listed.
    pub size: u64,
    /// What identifies this content: the object's ETag, else its modification time.
    pub version: String,
    origin: Origin,
}

/// A listed file with a local copy to read.
#[derive(Debug, Clone)]
pub struct LocalInput {
    /// Path or URL, as reported in metrics and the quarantine.
    pub name: String,
    /// The file to read: the file itself, or its download in the staging folder.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// ETag or modification time when listed.
    pub version: String,
}

impl LocalInput {
    /// A local file as its own input (size and modification time read now).
    pub fn local(path: &Path) -> Result<LocalInput, ExtractError> {
        let file = InputFile::local(path)?;
        Ok(LocalInput {
            name: file.name,
            path: path.to_path_buf(),
            size: file.size,
            version: file.version,
        })
    }
}

impl InputFile {
    fn local(path: &Path) -> Result<InputFile, ExtractError> {
        let name = path.to_string_lossy().into_owned();
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ExtractError::Vanished { file: name.clone() },
            _ => ExtractError::Io {
                file: name.clone(),
                source,
            },
        })?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(InputFile {
            name,
            size: meta.len(),
            version: format!("mtime:{mtime}"),
            origin: Origin::Local(path.to_path_buf()),
        })
    }
}

/// First byte of glob syntax in a pattern, if any.
fn glob_start(pattern: &str) -> Option<usize> {
    pattern.find(['*', '?', '[', '{'])
}

/// Lists the files of a source: one path or URL, or a glob, sorted by name. An empty match
/// is an error ([`ExtractError::NoInputFiles`]), as is a malformed pattern.
pub async fn list_inputs(source: &SourcePlan, storage: &StorageSettings) -> Result<Vec<InputFile>, ExtractError> {
    let bad = |message: String| ExtractError::BadPattern {
        source_name: source.name.clone(),
        location: source.location.clone(),
        message,
    };
    let mut files = match RemoteLocation::parse(&source.location) {
        None if remote::is_url(&source.location) => {
            return Err(bad(
                "unknown scheme: use a local path, s3://, gs://, az://, abfss:// or https://".into(),
            ));
        }
        None => list_local(&source.location).map_err(bad)?,
        Some(location) => list_remote(source, &location, storage).await?,
    };
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if files.is_empty() {
        return Err(ExtractError::NoInputFiles {
            source_name: source.name.clone(),
            location: source.location.clone(),
        });
    }
    Ok(files)
}

fn list_local(pattern: &str) -> Result<Vec<InputFile>, String> {
    let mut files = Vec::new();
    for entry in glob::glob(pattern).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?;
        if path.is_file() {
            // A file deleted between the glob and here simply was not there.
            if let Ok(f) = InputFile::local(&path) {
                files.push(f);
            }
        }
    }
    Ok(files)
}

async fn list_remote(
    source: &SourcePlan,
    location: &RemoteLocation,
    storage: &StorageSettings,
) -> Result<Vec<InputFile>, ExtractError> {
    let store_err = |message: String| ExtractError::Store {
        source_name: source.name.clone(),
        location: source.location.clone(),
        message,
    };
    let store = remote::build_store(location, storage).map_err(|e| store_err(e.message))?;
    let to_input = |meta: object_store::ObjectMeta| InputFile {
        name: location.url_of(meta.location.as_ref()),
        size: meta.size,
        version: meta
            .e_tag
            .clone()
            .map(|e| format!("etag:{e}"))
            .unwrap_or_else(|| format!("modified:{}", meta.last_modified.to_rfc3339())),
        origin: Origin::Remote {
            store: Arc::clone(&store),
            key: meta.location,
        },
    };
    let Some(start) = glob_start(&location.key) else {
        // One object.
        let key = ObjectPath::from(location.key.as_str());
        return match store.head(&key).await {
            Ok(meta) => Ok(vec![to_input(meta)]),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(store_err(e.to_string())),
        };
    };
    let pattern = glob::Pattern::new(&location.key).map_err(|e| ExtractError::BadPattern {
        source_name: source.name.clone(),
        location: source.location.clone(),
        message: e.to_string(),
    })?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    // List below the folder the pattern's literal part ends in.
    let prefix = location.key[..start].rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let metas: Vec<object_store::ObjectMeta> = store
        .list(prefix.as_ref())
        .try_collect()
        .await
        .map_err(|e| store_err(e.to_string()))?;
    Ok(metas
        .into_iter()
        .filter(|m| pattern.matches_with(m.location.as_ref(), options))
        .map(to_input)
        .collect())
}

/// Gives every listed file a local copy: local files are used in place, remote ones are
/// downloaded into `download_dir` (streamed, a few at a time). A file gone since listing is
/// [`ExtractError::Vanished`].
pub async fn fetch_inputs(files: Vec<InputFile>, download_dir: &Path) -> Result<Vec<LocalInput>, ExtractError> {
    let downloads = files.into_iter().enumerate().map(|(i, file)| async move {
        let path = match &file.origin {
            Origin::Local(path) => path.clone(),
            Origin::Remote { store, key } => {
                let base = key.filename().unwrap_or("object");
                let dest = download_dir.join(format!("{i:05}-{base}"));
                download(store.as_ref(), key, &dest, &file.name).await?;
                dest
            }
        };
        Ok::<_, ExtractError>(LocalInput {
            name: file.name,
            path,
            size: file.size,
            version: file.version,
        })
    });
    futures::stream::iter(downloads).buffered(4).try_collect().await
}

async fn download(store: &dyn ObjectStore, key: &ObjectPath, dest: &Path, name: &str) -> Result<(), ExtractError> {
    let io = |source: std::io::Error| ExtractError::Io {
        file: dest.to_string_lossy().into_owned(),
        source,
    };
    let store_err = |e: object_store::Error| match e {
        object_store::Error::NotFound { .. } => ExtractError::Vanished { file: name.to_string() },
        other => ExtractError::Download {
            file: name.to_string(),
            message: other.to_string(),
        },
    };
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io)?;
    }
    let mut stream = store.get(key).await.map_err(store_err)?.into_stream();
    let mut out = tokio::fs::File::create(dest).await.map_err(io)?;
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk.map_err(store_err)?).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    out.sync_all().await.map_err(io)?;
    Ok(())
}

/// Names the codec in decoder errors, so a truncated or corrupt file says what failed.
struct Labelled<R> {
    inner: R,
    codec: Codec,
}

impl<R: Read> Read for Labelled<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let kind = e.kind();
            let what = if kind == std::io::ErrorKind::UnexpectedEof {
                "truncated".to_string()
            } else {
                e.to_string()
            };
            std::io::Error::new(kind, format!("{} data is corrupt ({what})", self.codec.label()))
        })
    }
}

/// The codec an input uses, by the source's `compression` setting.
pub fn codec_of(compression: Compression, name: &str, file: &mut File) -> std::io::Result<Option<Codec>> {
    Ok(match compression {
        Compression::None => None,
        Compression::Gzip => Some(Codec::Gzip),
        Compression::Zstd => Some(Codec::Zstd),
        Compression::Bzip2 => Some(Codec::Bzip2),
        Compression::Xz => Some(Codec::Xz),
        Compression::Auto => match Codec::from_extension(name) {
            Some(c) => Some(c),
            None => {
                let mut head = [0u8; 6];
                let mut n = 0;
                while n < head.len() {
                    match file.read(&mut head[n..])? {
                        0 => break,
                        k => n += k,
                    }
                }
                file.seek(SeekFrom::Start(0))?;
                Codec::sniff(&head[..n])
            }
        },
    })
}

/// Opens an input as UTF-8 text: decompressed, then transcoded from the source's encoding.
/// UTF-8 sources are passed through unchanged, so invalid bytes reach the reader and are
/// quarantined there with their line, rather than replaced.
pub fn open_text(source: &SourcePlan, input: &LocalInput) -> Result<Box<dyn Read>, ExtractError> {
    let mut file = open(&input.path, &input.name)?;
    let codec = codec_of(source.compression, &input.name, &mut file).map_err(|e| ExtractError::Io {
        file: input.name.clone(),
        source: e,
    })?;
    let buffered = BufReader::with_capacity(1 << 20, file);
    let bad = |message: String| ExtractError::BadFile {
        file: input.name.clone(),
        line: 0,
        message,
    };
    let decoded: Box<dyn Read> = match codec {
        None => Box::new(buffered),
        Some(codec) => {
            let inner: Box<dyn Read> = match codec {
                Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
                Codec::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(buffered)
                        .map_err(|e| bad(format!("zstd data is corrupt ({e})")))?,
                ),
                Codec::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buffered)),
                Codec::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(buffered)),
            };
            Box::new(BufReader::with_capacity(1 << 20, Labelled { inner, codec }))
        }
    };
    if source.encoding == encoding_rs::UTF_8 {
        return Ok(decoded);
    }
    Ok(Box::new(
        encoding_rs_io::DecodeReaderBytesBuilder::new()
            .encoding(Some(source.encoding))
            .build(decoded),
    ))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::{Format, TableSchema};

    const TEXT: &str = "id,name\r\n1,Müller\r\n2,\"Jo\nSmith\"\r\n";

    fn source(compression: Compression, encoding: &'static encoding_rs::Encoding) -> SourcePlan {
        SourcePlan {
            name: "s".into(),
            location: "x".into(),
            format: Format::Csv,
            schema_file: "s.json".into(),
            schema: TableSchema::parse(r#"{"fields":[{"name":"id"},{"name":"name"}]}"#, Path::new("s.json")).unwrap(),
            delimiter: b',',
            error_budget: 0.0,
            compression,
            encoding,
            incremental: false,
        }
    }

    fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
        match codec {
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::Zstd => zstd::encode_all(data, 3).unwrap(),
            Codec::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
        }
    }

    fn read(source: &SourcePlan, path: &Path) -> Result<String, String> {
        let input = LocalInput::local(path).map_err(|e| e.to_string())?;
        let mut text = String::new();
        open_text(source, &input)
            .map_err(|e| e.to_string())?
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        Ok(text)
    }

    #[test]
    fn every_codec_is_read_by_extension_and_by_sniffing_and_truncation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for (codec, ext) in [
            (Codec::Gzip, "gz"),
            (Codec::Zstd, "zst"),
            (Codec::Bzip2, "bz2"),
            (Codec::Xz, "xz"),
        ] {
            let data = compress(codec, TEXT.as_bytes());
            let named = dir.path().join(format!("a.csv.{ext}"));
            let unnamed = dir.path().join(format!("{ext}.csv"));
            std::fs::write(&named, &data).unwrap();
            std::fs::write(&unnamed, &data).unwrap();
            let auto = source(Compression::Auto, encoding_rs::UTF_8);
            assert_eq!(read(&auto, &named).unwrap(), TEXT, "{codec:?} by extension");
            assert_eq!(read(&auto, &unnamed).unwrap(), TEXT, "{codec:?} by magic bytes");
            let truncated = dir.path().join(format!("cut.csv.{ext}"));
            std::fs::write(&truncated, &data[..data.len() * 2 / 3]).unwrap();
            let err = read(&auto, &truncated).unwrap_err();
            assert!(err.contains(codec.label()), "{codec:?}: {err}");
        }
        let plain = dir.path().join("plain.csv");
        std::fs::write(&plain, TEXT).unwrap();
        assert_eq!(
            read(&source(Compression::Auto, encoding_rs::UTF_8), &plain).unwrap(),
            TEXT
        );
        // Declared compression wins over a misleading name.
        let gz = dir.path().join("looks_plain.txt");
        std::fs::write(&gz, compress(Codec::Gzip, TEXT.as_bytes())).unwrap();
        assert_eq!(read(&source(Compression::Gzip, encoding_rs::UTF_8), &gz).unwrap(), TEXT);
    }

    #[test]
    fn windows_1252_text_is_transcoded_to_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode("id,name\n1,Müller €5\n");
        assert!(std::str::from_utf8(&bytes).is_err(), "the test file must not be UTF-8");
        let path = dir.path().join("latin.csv");
        std::fs::write(&path, &bytes).unwrap();
        let text = read(&source(Compression::Auto, encoding_rs::WINDOWS_1252), &path).unwrap();
        assert_eq!(text, "id,name\n1,Müller €5\n");
    }

    #[test]
    fn codecs_are_known_by_extension_and_by_magic_bytes() {
        assert_eq!(Codec::from_extension("s3://b/sales.CSV.GZ"), Some(Codec::Gzip));
        assert_eq!(Codec::from_extension("a.ndjson.zst"), Some(Codec::Zstd));
        assert_eq!(Codec::from_extension("a.csv.bz2"), Some(Codec::Bzip2));
        assert_eq!(Codec::from_extension("a.csv.xz"), Some(Codec::Xz));
        assert_eq!(Codec::from_extension("a.csv"), None);
        assert_eq!(Codec::sniff(&[0x1f, 0x8b, 8, 0]), Some(Codec::Gzip));
        assert_eq!(Codec::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]), Some(Codec::Zstd));
        assert_eq!(Codec::sniff(b"BZh91A"), Some(Codec::Bzip2));
        assert_eq!(Codec::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Some(Codec::Xz));
        assert_eq!(Codec::sniff(b"id,na"), None);
        assert_eq!(Codec::sniff(b""), None);
    }

    #[test]
    fn glob_start_finds_the_first_wildcard() {
        assert_eq!(glob_start("sales/date=2026-11-*/part-*.csv"), Some(19));
        assert_eq!(glob_start("sales/a.csv"), None);
    }
}
