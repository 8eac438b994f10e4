//! The compressions an export file can come in, found from its name or its first bytes.
//! Kept apart from the reading code (it imports nothing) so that the configuration can
//! check a `compression` setting against a file name without importing extract.

/// A compression an input was found to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
    /// bzip2 (`.bz2`).
    Bzip2,
    /// xz / LZMA2 (`.xz`).
    Xz,
}

impl Codec {
    /// The codec's name, as errors give it.
    pub fn label(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
            Codec::Bzip2 => "bzip2",
            Codec::Xz => "xz",
        }
    }

    /// The codec a file name's extension names.
    pub fn from_extension(name: &str) -> Option<Codec> {
        let lower = name.to_ascii_lowercase();
        [
            (".gz", Codec::Gzip),
            (".gzip", Codec::Gzip),
            (".zst", Codec::Zstd),
            (".zstd", Codec::Zstd),
            (".bz2", Codec::Bzip2),
            (".xz", Codec::Xz),
        ]
        .into_iter()
        .find(|(ext, _)| lower.ends_with(ext))
        .map(|(_, c)| c)
    }

    /// The codec whose magic bytes start `head`.
    pub fn sniff(head: &[u8]) -> Option<Codec> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Codec::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Codec::Zstd)
        } else if head.starts_with(b"BZh") {
            Some(Codec::Bzip2)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Codec::Xz)
        } else {
            None
        }
    }
}
