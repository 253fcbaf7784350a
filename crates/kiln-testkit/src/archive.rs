//! `.tar.gz` and `.zip` archives from (path, contents) lists, and raw tar
//! entries for the names, types and links the `tar` builder refuses.

use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

/// A `.tar.gz` of the files given as (path, contents), each mode 0644.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<(&str, &[u8], u32)> = files.iter().map(|(p, c)| (*p, *c, 0o644)).collect();
    tar_gz_modes(&entries, Compression::default())
}

/// A `.tar.gz` of the files given as (path, contents, mode), compressed
/// at `level`.
pub fn tar_gz_modes(files: &[(&str, &[u8], u32)], level: Compression) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), level));
    for (path, contents, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        builder.append_data(&mut header, path, *contents).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A `.tar.gz` of a directory on disk (an example filter), without its
/// `target/`.
pub fn tar_gz_dir(dir: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    add_dir(&mut builder, dir, Path::new(""));
    builder.into_inner().unwrap().finish().unwrap()
}

fn add_dir<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, prefix: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (path, rel) = (entry.path(), prefix.join(&name));
        if path.is_dir() {
            add_dir(builder, &path, &rel);
        } else {
            builder.append_path_with_name(&path, &rel).unwrap();
        }
    }
}

/// A `.zip` of the files given as (path, contents).
pub fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<(&str, &[u8], u32)> = files.iter().map(|(p, c)| (*p, *c, 0o644)).collect();
    zip_modes(&entries)
}

/// A `.zip` of the files given as (path, contents, unix mode).
pub fn zip_modes(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, contents, mode) in files {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        writer.start_file(*path, options).unwrap();
        writer.write_all(contents).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// One tar header (ustar, mode 0644) written byte by byte, so that any
/// name, type (`b'0'` file, `b'1'` hard link, `b'2'` symlink, `b'3'`
/// device …) and link target can be written, however hostile.
pub fn tar_header(name: &str, kind: u8, link: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// One raw tar entry: its header and its contents padded to a block.
pub fn tar_entry(name: &str, kind: u8, link: &str, contents: &[u8]) -> Vec<u8> {
    let mut out = tar_header(name, kind, link, contents.len() as u64).to_vec();
    out.extend_from_slice(contents);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A `.tar.gz` of raw entries given as (name, type, link, contents), with
/// the end-of-archive blocks.
pub fn raw_tar_gz(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let raw: Vec<Vec<u8>> = entries
        .iter()
        .map(|(name, kind, link, contents)| tar_entry(name, *kind, link, contents))
        .collect();
    gzip_tar(&raw.concat())
}

/// Raw tar blocks gzipped, with the end-of-archive blocks appended.
pub fn gzip_tar(raw: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(raw).unwrap();
    e.write_all(&[0u8; 1024]).unwrap();
    e.finish().unwrap()
}

/// A `.tar.gz` holding one file of `size` zeros, about a thousand times
/// smaller, written without holding it in memory.
pub fn gzip_bomb(size: u64) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(&tar_header("zeros", b'0', "", size)).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        e.write_all(&chunk).unwrap();
    }
    e.finish().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_entry_reads_back_as_the_tar_crate_writes_it() {
        let archive = raw_tar_gz(&[("a/b.txt", b'0', "", b"hello")]);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
        let mut entries = tar.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("a/b.txt"));
        let mut contents = String::new();
        std::io::Read::read_to_string(&mut entry, &mut contents).unwrap();
        assert_eq!(contents, "hello");
    }
}
