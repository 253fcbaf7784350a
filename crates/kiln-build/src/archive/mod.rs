//! Safe unpacking of uploaded `.tar.gz` and `.zip` archives. The upload is
//! hostile: every limit is checked on the bytes actually decompressed, paths
//! must be relative and stay inside the tree, links may not leave it, and
//! nothing is ever written through a link.

mod path;
mod tar_gz;
mod zip_file;

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use path::safe_relative_path;

/// Default largest archive accepted: 20 MiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 20 * 1024 * 1024;
/// Default cap on all unpacked files together: 200 MiB.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 200 * 1024 * 1024;
/// Default cap on entries (files, directories and links).
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// Default cap on one unpacked file: 50 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 50 * 1024 * 1024;
/// Default cap on unpacked bytes per compressed byte, against compression bombs.
pub const DEFAULT_MAX_RATIO: u64 = 200;

/// Limits on one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Size of the archive itself.
    pub max_upload_bytes: u64,
    /// Total bytes of all unpacked files.
    pub max_unpacked_bytes: u64,
    /// Files, directories and links.
    pub max_entries: u64,
    /// Bytes of any one file.
    pub max_file_bytes: u64,
    /// Unpacked bytes per compressed byte.
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_ratio: DEFAULT_MAX_RATIO,
        }
    }
}

/// The format of an archive: [`kiln_domain::SourceKind`], which names it
/// in a stored source's key and in a worker's claim.
pub use kiln_domain::SourceKind as ArchiveKind;

/// What an archive held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// The format, recognised by its first bytes.
    pub kind: ArchiveKind,
    /// Files, directories and links, as counted against
    /// [`ArchiveLimits::max_entries`].
    pub entries: u64,
    /// Total bytes of all files once unpacked.
    pub unpacked_bytes: u64,
}

/// Why an archive was refused. Each message is a sentence for the build log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The first bytes are neither gzip nor zip.
    #[error("the file is not a .tar.gz or .zip archive")]
    NotAnArchive,
    /// The archive cannot be read, or uses an unsupported feature.
    #[error("the archive is corrupt: {0}")]
    Corrupt(String),
    /// The archive is over [`ArchiveLimits::max_upload_bytes`].
    #[error("the archive is {size} bytes, over the limit of {limit} bytes")]
    UploadTooLarge {
        /// Size of the archive, in bytes.
        size: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The files together unpack past [`ArchiveLimits::max_unpacked_bytes`].
    #[error("the archive unpacks to more than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// More entries than [`ArchiveLimits::max_entries`].
    #[error("the archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit, in entries.
        limit: u64,
    },
    /// One file unpacks past [`ArchiveLimits::max_file_bytes`].
    #[error("{path} is larger than the limit of {limit} bytes for one file")]
    FileTooLarge {
        /// The entry's name in the archive.
        path: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The bytes decompressed so far exceed [`ArchiveLimits::max_ratio`]
    /// times the archive's size.
    #[error(
        "the archive expands more than {limit} times its compressed size (a compression bomb?)"
    )]
    RatioExceeded {
        /// The limit, in unpacked bytes per compressed byte.
        limit: u64,
    },
    /// An entry's name starts at a root or a drive (`/x`, `C:`).
    #[error("{path:?} is an absolute path; archive paths must be relative")]
    AbsolutePath {
        /// The entry's name in the archive.
        path: String,
    },
    /// An entry's name has a `..` component.
    #[error("{path:?} contains '..'; archive paths must stay inside the archive")]
    ParentTraversal {
        /// The entry's name in the archive.
        path: String,
    },
    /// An entry's name is empty, not UTF-8, or has a NUL or a backslash,
    /// or an entry other than a directory names the archive root.
    #[error("{path:?} is not a valid archive path")]
    InvalidPath {
        /// The entry's name in the archive.
        path: String,
    },
    /// A symlink is absolute or, judged lexically, resolves outside the tree.
    #[error("the link {path:?} points to {target:?}, outside the archive")]
    LinkEscapes {
        /// The link's name in the archive.
        path: String,
        /// What it points to, as written in the archive.
        target: String,
    },
    /// A tar hard link: refused, as it could alias any path.
    #[error("{path:?} is a hard link; hard links are not accepted")]
    HardLink {
        /// The entry's name in the archive.
        path: String,
    },
    /// A device, fifo, sparse file or other entry that is not a file,
    /// directory or symlink.
    #[error("{path:?} is a {kind}; only files, directories and symbolic links are accepted")]
    SpecialFile {
        /// The entry's name in the archive.
        path: String,
        /// What it is, for the message (`"fifo"`, `"block device"`...).
        kind: &'static str,
    },
    /// An entry lies under a symlink an earlier entry made: writing it
    /// would follow the link.
    #[error("{path:?} would be written through a link")]
    ThroughLink {
        /// The entry's name in the archive.
        path: String,
    },
    /// An entry's path is already taken by an earlier entry.
    #[error("{path:?} appears twice in the archive")]
    Duplicate {
        /// The entry's name in the archive.
        path: String,
    },
    /// A zip entry is encrypted.
    #[error("{path:?} is encrypted; encrypted archives are not accepted")]
    Encrypted {
        /// The entry's name, or `entry N` when it cannot be read.
        path: String,
    },
    /// Writing to the destination directory failed: kiln's side, not the
    /// archive's.
    #[error("writing {path:?}: {source}")]
    Io {
        /// The entry being written, by its name in the archive.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Recognises an archive by its first bytes, never by its name.
pub fn detect(bytes: &[u8]) -> Option<ArchiveKind> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveKind::TarGz)
    } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Some(ArchiveKind::Zip)
    } else {
        None
    }
}

/// Checks the whole archive against the limits and path rules without
/// writing anything.
pub fn inspect(bytes: &[u8], limits: &ArchiveLimits) -> Result<ArchiveSummary, ArchiveError> {
    walk(bytes, limits, &mut Discard)
}

/// Unpacks into `dest`, an existing empty directory. On error `dest` may
/// hold part of the archive; the caller discards it.
pub fn unpack(
    bytes: &[u8],
    dest: &Path,
    limits: &ArchiveLimits,
) -> Result<ArchiveSummary, ArchiveError> {
    walk(
        bytes,
        limits,
        &mut Writer {
            root: dest.to_path_buf(),
        },
    )
}

fn walk(
    bytes: &[u8],
    limits: &ArchiveLimits,
    sink: &mut dyn Sink,
) -> Result<ArchiveSummary, ArchiveError> {
    let size = bytes.len() as u64;
    if size > limits.max_upload_bytes {
        return Err(ArchiveError::UploadTooLarge {
            size,
            limit: limits.max_upload_bytes,
        });
    }
    let kind = detect(bytes).ok_or(ArchiveError::NotAnArchive)?;
    let mut budget = Budget::new(limits, size);
    match kind {
        ArchiveKind::TarGz => tar_gz::walk(bytes, &mut budget, sink)?,
        ArchiveKind::Zip => zip_file::walk(bytes, &mut budget, sink)?,
    }
    Ok(ArchiveSummary {
        kind,
        entries: budget.entries,
        unpacked_bytes: budget.unpacked,
    })
}

/// The limits, counted down as entries are read.
struct Budget<'a> {
    limits: &'a ArchiveLimits,
    compressed: u64,
    entries: u64,
    unpacked: u64,
}

impl<'a> Budget<'a> {
    fn new(limits: &'a ArchiveLimits, compressed: u64) -> Self {
        Self {
            limits,
            compressed: compressed.max(1),
            entries: 0,
            unpacked: 0,
        }
    }

    fn entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Accounts for `n` more unpacked bytes of `path`, whose size so far is `file`.
    fn bytes(&mut self, path: &str, file: u64, n: u64) -> Result<(), ArchiveError> {
        self.unpacked += n;
        if file > self.limits.max_file_bytes {
            return Err(ArchiveError::FileTooLarge {
                path: path.to_owned(),
                limit: self.limits.max_file_bytes,
            });
        }
        if self.unpacked > self.limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.limits.max_unpacked_bytes,
            });
        }
        self.check_ratio(self.unpacked)
    }

    fn check_ratio(&self, expanded: u64) -> Result<(), ArchiveError> {
        if expanded > self.compressed.saturating_mul(self.limits.max_ratio) {
            return Err(ArchiveError::RatioExceeded {
                limit: self.limits.max_ratio,
            });
        }
        Ok(())
    }
}

/// Streams one file's content into the sink, enforcing the limits on the
/// bytes actually read.
fn copy_file(
    path: &str,
    reader: &mut dyn Read,
    budget: &mut Budget<'_>,
    out: &mut dyn Write,
) -> Result<(), ArchiveError> {
    let mut buf = [0u8; 64 * 1024];
    let mut file = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ArchiveError::Corrupt(format!("{path}: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        file += n as u64;
        budget.bytes(path, file, n as u64)?;
        out.write_all(&buf[..n])
            .map_err(|source| ArchiveError::Io {
                path: path.to_owned(),
                source,
            })?;
    }
}

/// Where entries go: nowhere (inspect) or a directory (unpack).
trait Sink {
    fn dir(&mut self, path: &Path, display: &str) -> Result<(), ArchiveError>;
    fn file(
        &mut self,
        path: &Path,
        display: &str,
        executable: bool,
    ) -> Result<Box<dyn Write>, ArchiveError>;
    fn symlink(&mut self, path: &Path, display: &str, target: &Path) -> Result<(), ArchiveError>;
}

struct Discard;

impl Sink for Discard {
    fn dir(&mut self, _: &Path, _: &str) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn file(&mut self, _: &Path, _: &str, _: bool) -> Result<Box<dyn Write>, ArchiveError> {
        Ok(Box::new(io::sink()))
    }
    fn symlink(&mut self, _: &Path, _: &str, _: &Path) -> Result<(), ArchiveError> {
        Ok(())
    }
}

struct Writer {
    root: PathBuf,
}

impl Writer {
    /// Creates the parents of `rel`, refusing any that exists as anything
    /// but a real directory (a symlink above would redirect the write).
    fn parents(&self, rel: &Path, display: &str) -> Result<PathBuf, ArchiveError> {
        let mut at = self.root.clone();
        if let Some(parent) = rel.parent() {
            for component in parent.components() {
                at.push(component);
                self.real_dir(&at, display)?;
            }
        }
        Ok(self.root.join(rel))
    }

    fn real_dir(&self, at: &Path, display: &str) -> Result<(), ArchiveError> {
        match fs::symlink_metadata(at) {
            Ok(meta) if meta.file_type().is_dir() => Ok(()),
            Ok(meta) if meta.file_type().is_symlink() => Err(ArchiveError::ThroughLink {
                path: display.to_owned(),
            }),
            Ok(_) => Err(ArchiveError::Duplicate {
                path: display.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(at).map_err(|source| io_error(display, source))
            }
            Err(source) => Err(io_error(display, source)),
        }
    }
}

fn io_error(path: &str, source: io::Error) -> ArchiveError {
    ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Sink for Writer {
    fn dir(&mut self, path: &Path, display: &str) -> Result<(), ArchiveError> {
        let full = self.parents(path, display)?;
        self.real_dir(&full, display)
    }

    fn file(
        &mut self,
        path: &Path,
        display: &str,
        executable: bool,
    ) -> Result<Box<dyn Write>, ArchiveError> {
        let full = self.parents(path, display)?;
        let mode = if executable { 0o755 } else { 0o644 };
        // create_new + O_NOFOLLOW: never replaces an entry, never follows a link.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => ArchiveError::Duplicate {
                    path: display.to_owned(),
                },
                _ => io_error(display, e),
            })?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(display, e))?;
        Ok(Box::new(file))
    }

    fn symlink(&mut self, path: &Path, display: &str, target: &Path) -> Result<(), ArchiveError> {
        let full = self.parents(path, display)?;
        std::os::unix::fs::symlink(target, &full).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => ArchiveError::Duplicate {
                path: display.to_owned(),
            },
            _ => io_error(display, e),
        })
    }
}

#[cfg(test)]
mod tests;
