//! `.zip`: stored and deflated entries only; encrypted ones are refused.

use super::path::{check_link_target, safe_relative_path};
use super::{ArchiveError, Budget, Sink, copy_file};
use std::io::{Cursor, Read};

/// Longest symlink target read from an entry.
const MAX_LINK_TARGET: u64 = 4096;
const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

pub(super) fn walk(
    bytes: &[u8],
    budget: &mut Budget<'_>,
    sink: &mut dyn Sink,
) -> Result<(), ArchiveError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(corrupt)?;
    if archive.len() as u64 > budget.limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            limit: budget.limits.max_entries,
        });
    }
    for index in 0..archive.len() {
        let mut file = match archive.by_index(index) {
            Ok(file) => file,
            Err(zip::result::ZipError::UnsupportedArchive(m))
                if m.contains("assword") || m.contains("ncrypt") =>
            {
                return Err(ArchiveError::Encrypted {
                    path: format!("entry {index}"),
                });
            }
            Err(e) => return Err(corrupt(e)),
        };
        budget.entry()?;
        let raw = file.name().map_err(corrupt)?.into_owned();
        if file.encrypted() {
            return Err(ArchiveError::Encrypted { path: raw });
        }
        let path = safe_relative_path(&raw)?;
        if path.as_os_str().is_empty() {
            if file.is_dir() {
                continue;
            }
            return Err(ArchiveError::InvalidPath { path: raw });
        }
        let mode = file.unix_mode().unwrap_or(0);
        match mode & S_IFMT {
            _ if file.is_dir() => sink.dir(&path, &raw)?,
            S_IFLNK => {
                let mut target = String::new();
                (&mut file)
                    .take(MAX_LINK_TARGET)
                    .read_to_string(&mut target)
                    .map_err(|e| corrupt(e.into()))?;
                let target = check_link_target(&path, &raw, &target)?;
                sink.symlink(&path, &raw, &target)?;
            }
            0 | S_IFREG => {
                let mut out = sink.file(&path, &raw, mode & 0o111 != 0)?;
                copy_file(&raw, &mut file, budget, &mut out)?;
            }
            S_IFDIR => sink.dir(&path, &raw)?,
            _ => {
                return Err(ArchiveError::SpecialFile {
                    path: raw,
                    kind: "special file",
                });
            }
        }
    }
    Ok(())
}

fn corrupt(e: zip::result::ZipError) -> ArchiveError {
    match e {
        zip::result::ZipError::UnsupportedArchive(m) => {
            ArchiveError::Corrupt(format!("unsupported zip feature: {m}"))
        }
        e => ArchiveError::Corrupt(e.to_string()),
    }
}
