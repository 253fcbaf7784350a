use super::*;
use kiln_testkit::archive::{gzip_bomb, gzip_tar, tar_entry, tar_gz_modes, zip_modes};

fn limits() -> ArchiveLimits {
    ArchiveLimits::default()
}

fn tar_of(entries: &[Vec<u8>]) -> Vec<u8> {
    gzip_tar(&entries.concat())
}

fn good_tar() -> Vec<u8> {
    tar_gz_modes(
        &[
            ("Cargo.toml", &b"[package]\n"[..], 0o644),
            ("src/lib.rs", b"fn f() {}\n", 0o644),
            ("run.sh", b"#!/bin/sh\n", 0o4755),
        ],
        flate2::Compression::default(),
    )
}

fn zip_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    zip_modes(files)
}

fn unpack_fresh(
    bytes: &[u8],
    limits: &ArchiveLimits,
) -> (tempfile::TempDir, Result<ArchiveSummary, ArchiveError>) {
    let dir = tempfile::tempdir().unwrap();
    let result = unpack(bytes, dir.path(), limits);
    (dir, result)
}

#[test]
fn a_good_tar_gz_unpacks_identically_without_setuid() {
    let bytes = good_tar();
    assert_eq!(inspect(&bytes, &limits()).unwrap().entries, 3);
    let (dir, result) = unpack_fresh(&bytes, &limits());
    let summary = result.unwrap();
    assert_eq!((summary.kind, summary.entries), (ArchiveKind::TarGz, 3));
    assert_eq!(
        fs::read(dir.path().join("src/lib.rs")).unwrap(),
        b"fn f() {}\n"
    );
    let mode = fs::metadata(dir.path().join("run.sh"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755, "exec bit kept, setuid dropped");
    let mode = fs::metadata(dir.path().join("Cargo.toml"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o644);
}

#[test]
fn the_root_entry_of_tar_c_dot_is_accepted() {
    // `tar -czf x.tar.gz -C dir .` starts with a "./" directory entry.
    let bytes = tar_of(&[
        tar_entry("./", b'5', "", b""),
        tar_entry("./Cargo.toml", b'0', "", b"[package]\n"),
        tar_entry("./src/", b'5', "", b""),
    ]);
    let (dir, result) = unpack_fresh(&bytes, &limits());
    assert_eq!(result.unwrap().entries, 3);
    assert_eq!(
        fs::read(dir.path().join("Cargo.toml")).unwrap(),
        b"[package]\n"
    );
    let file_as_root = tar_of(&[tar_entry("./", b'0', "", b"x")]);
    assert!(inspect(&file_as_root, &limits()).is_err());
}

#[test]
fn a_good_zip_unpacks_identically() {
    let bytes = zip_of(&[
        ("Cargo.toml", b"[package]\n", 0o644),
        ("bin/tool", b"x", 0o755),
    ]);
    let (dir, result) = unpack_fresh(&bytes, &limits());
    assert_eq!(result.unwrap().kind, ArchiveKind::Zip);
    assert_eq!(
        fs::read(dir.path().join("Cargo.toml")).unwrap(),
        b"[package]\n"
    );
    let mode = fs::metadata(dir.path().join("bin/tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
}

#[test]
fn paths_must_stay_inside() {
    for (name, expected) in [
        ("/tmp/kiln-abs", "absolute"),
        ("../escape.txt", ".."),
        ("a/../../b", ".."),
        ("./ok/../../x", ".."),
    ] {
        let bytes = tar_of(&[tar_entry(name, b'0', "", b"x")]);
        let err = inspect(&bytes, &limits()).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
        let (dir, result) = unpack_fresh(&bytes, &limits());
        assert!(result.is_err());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written for {name}"
        );
    }
    assert!(!Path::new("/tmp/kiln-abs").exists());
    let bytes = zip_of(&[("../zip-escape", b"x", 0o644)]);
    assert!(matches!(
        inspect(&bytes, &limits()),
        Err(ArchiveError::ParentTraversal { .. })
    ));
    let bytes = zip_of(&[("C:/windows", b"x", 0o644)]);
    assert!(matches!(
        inspect(&bytes, &limits()),
        Err(ArchiveError::AbsolutePath { .. })
    ));
}

#[test]
fn links_may_not_leave_the_tree_nor_be_written_through() {
    let escape = tar_of(&[
        tar_entry("link", b'2', "/tmp", b""),
        tar_entry("link/escaped", b'0', "", b"x"),
    ]);
    assert!(matches!(
        inspect(&escape, &limits()),
        Err(ArchiveError::LinkEscapes { .. })
    ));
    let up = tar_of(&[tar_entry("a/link", b'2', "../../etc", b"")]);
    assert!(matches!(
        inspect(&up, &limits()),
        Err(ArchiveError::LinkEscapes { .. })
    ));

    // A link inside the tree is fine, but nothing is written through it.
    let inside = tar_of(&[
        tar_entry("real/", b'5', "", b""),
        tar_entry("alias", b'2', "real", b""),
    ]);
    let (dir, result) = unpack_fresh(&inside, &limits());
    result.unwrap();
    assert!(
        fs::symlink_metadata(dir.path().join("alias"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let through = tar_of(&[
        tar_entry("real/", b'5', "", b""),
        tar_entry("alias", b'2', "real", b""),
        tar_entry("alias/x", b'0', "", b"x"),
    ]);
    let (dir, result) = unpack_fresh(&through, &limits());
    assert!(
        matches!(result, Err(ArchiveError::ThroughLink { .. })),
        "{result:?}"
    );
    assert!(!dir.path().join("real/x").exists());
    // A file over an existing link is a duplicate, never a write through it.
    let over = tar_of(&[
        tar_entry("f", b'2', "g", b""),
        tar_entry("f", b'0', "", b"x"),
    ]);
    let (dir, result) = unpack_fresh(&over, &limits());
    assert!(result.is_err());
    assert!(!dir.path().join("g").exists());
}

#[test]
fn hard_links_devices_and_fifos_are_refused() {
    for (kind, entry) in [
        ("hard link", b'1'),
        ("char device", b'3'),
        ("block device", b'4'),
        ("fifo", b'6'),
    ] {
        let bytes = tar_of(&[
            tar_entry("f", b'0', "", b"x"),
            tar_entry("g", entry, "f", b""),
        ]);
        let err = inspect(&bytes, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::HardLink { .. } | ArchiveError::SpecialFile { .. }
            ),
            "{kind}: {err}"
        );
    }
}

#[test]
fn duplicates_are_refused() {
    let bytes = tar_of(&[
        tar_entry("f", b'0', "", b"1"),
        tar_entry("f", b'0', "", b"2"),
    ]);
    let (dir, result) = unpack_fresh(&bytes, &limits());
    assert!(matches!(result, Err(ArchiveError::Duplicate { .. })));
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"1");
}

#[test]
fn a_gzip_bomb_is_refused_early() {
    let bomb = gzip_bomb(300 << 20);
    assert!(bomb.len() < 1 << 20, "the bomb is small: {}", bomb.len());
    let err = inspect(&bomb, &limits()).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::FileTooLarge { .. } | ArchiveError::RatioExceeded { .. }
        ),
        "{err}"
    );
    let generous = ArchiveLimits {
        max_file_bytes: u64::MAX,
        max_unpacked_bytes: u64::MAX,
        ..limits()
    };
    assert!(matches!(
        inspect(&bomb, &generous),
        Err(ArchiveError::RatioExceeded { .. })
    ));
    let (dir, result) = unpack_fresh(&bomb, &limits());
    assert!(result.is_err());
    assert!(
        fs::metadata(dir.path().join("zeros")).map_or(0, |m| m.len())
            <= DEFAULT_MAX_FILE_BYTES + (64 << 10)
    );
}

#[test]
fn a_zip_bomb_is_refused() {
    let zeros = vec![0u8; 64 << 20];
    let bomb = zip_of(&[("zeros", &zeros, 0o644)]);
    let err = inspect(&bomb, &limits()).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::FileTooLarge { .. } | ArchiveError::RatioExceeded { .. }
        ),
        "{err}"
    );
}

#[test]
fn totals_and_counts_are_limited() {
    let small = ArchiveLimits {
        max_entries: 3,
        ..limits()
    };
    let many: Vec<_> = (0..5)
        .map(|i| tar_entry(&format!("f{i}"), b'0', "", b"x"))
        .collect();
    assert!(matches!(
        inspect(&tar_of(&many), &small),
        Err(ArchiveError::TooManyEntries { .. })
    ));
    let tiny = ArchiveLimits {
        max_unpacked_bytes: 10,
        ..limits()
    };
    let big = tar_of(&[
        tar_entry("a", b'0', "", &[1u8; 8]),
        tar_entry("b", b'0', "", &[2u8; 8]),
    ]);
    assert!(matches!(
        inspect(&big, &tiny),
        Err(ArchiveError::TooLarge { .. })
    ));
    let upload = ArchiveLimits {
        max_upload_bytes: 10,
        ..limits()
    };
    assert!(matches!(
        inspect(&big, &upload),
        Err(ArchiveError::UploadTooLarge { .. })
    ));
}

#[test]
fn what_is_not_an_archive_says_so() {
    assert!(matches!(
        inspect(b"#!/bin/sh\n", &limits()),
        Err(ArchiveError::NotAnArchive)
    ));
    assert_eq!(detect(b"#!/bin/sh"), None);
    let truncated = &good_tar()[..30];
    assert!(matches!(
        inspect(truncated, &limits()),
        Err(ArchiveError::Corrupt(_))
    ));
    assert!(matches!(
        inspect(b"PK\x03\x04garbage", &limits()),
        Err(ArchiveError::Corrupt(_))
    ));
}
