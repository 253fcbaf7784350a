//! `.tar.gz`: entries are written by kiln itself (never `unpack_in`), so
//! every rule of the module applies.

use super::path::{check_link_target, safe_relative_path};
use super::{ArchiveError, Budget, Sink, copy_file};
use flate2::read::MultiGzDecoder;
use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;
use tar::EntryType;

/// Counts every byte the gzip stream expands to, tar headers included.
struct Counting<R> {
    inner: R,
    total: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total.set(self.total.get() + n as u64);
        Ok(n)
    }
}

pub(super) fn walk(
    bytes: &[u8],
    budget: &mut Budget<'_>,
    sink: &mut dyn Sink,
) -> Result<(), ArchiveError> {
    let total = Rc::new(Cell::new(0));
    let reader = Counting {
        inner: MultiGzDecoder::new(bytes),
        total: total.clone(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(corrupt)?;
    for entry in entries {
        let mut entry = entry.map_err(corrupt)?;
        budget.check_ratio(total.get())?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            continue;
        }
        budget.entry()?;
        let raw = String::from_utf8(entry.path_bytes().into_owned()).map_err(|_| {
            ArchiveError::InvalidPath {
                path: "<not UTF-8>".into(),
            }
        })?;
        let path = safe_relative_path(&raw)?;
        if path.as_os_str().is_empty() {
            // The archive root: nothing to create, and nothing else may be it.
            if kind == EntryType::Directory {
                continue;
            }
            return Err(ArchiveError::InvalidPath { path: raw });
        }
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let executable = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
                let mut out = sink.file(&path, &raw, executable)?;
                copy_file(&raw, &mut entry, budget, &mut out)?;
            }
            EntryType::Directory => sink.dir(&path, &raw)?,
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let target = check_link_target(&path, &raw, &target)?;
                sink.symlink(&path, &raw, &target)?;
            }
            EntryType::Link => return Err(ArchiveError::HardLink { path: raw }),
            other => {
                return Err(ArchiveError::SpecialFile {
                    path: raw,
                    kind: describe(other),
                });
            }
        }
        budget.check_ratio(total.get())?;
    }
    Ok(())
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        EntryType::GNUSparse => "sparse file",
        _ => "special entry",
    }
}

fn corrupt(e: std::io::Error) -> ArchiveError {
    ArchiveError::Corrupt(e.to_string())
}
