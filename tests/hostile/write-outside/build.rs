//! Tries to write outside its directory: files the test names, system
//! directories, the dependency cache and the toolchain.

/// Reads `key=value` lines the test writes into kiln-hostile.txt.
fn param(key: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kiln-hostile.txt");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .collect()
}

/// Embeds whatever was obtained into the module, so a leak would show in the binary.
fn keep(loot: &str) {
    let out = std::env::var("OUT_DIR").unwrap();
    std::fs::write(format!("{out}/loot.rs"), format!("pub static LOOT: &str = {loot:?};")).unwrap();
}

fn main() {
    // Links in the build's directory to host paths, for the steps kiln runs
    // as root after this script: `plant=NAME=TARGET`.
    for plant in param("plant") {
        if let Some((name, target)) = plant.split_once('=') {
            let link = format!("/build/{name}");
            match std::os::unix::fs::symlink(target, &link) {
                Ok(()) => println!("cargo:warning=hostile: planted {link} -> {target}"),
                Err(e) => println!("cargo:warning=hostile: plant {link} failed: {e}"),
            }
        }
    }
    let mut paths = param("write");
    paths.extend(["/etc/kiln-escape", "/usr/kiln-escape", "/toolchain/kiln-escape", "/deps/kiln-escape", "/tmp/kiln-escape"].map(String::from));
    let mut loot = String::new();
    for path in paths {
        match std::fs::write(&path, "hostile") {
            Ok(()) => loot.push_str(&format!("WROTE {path}\n")),
            Err(e) => println!("cargo:warning=hostile: write {path} failed: {e}"),
        }
    }
    println!("cargo:warning=hostile: {loot}");
    keep(&loot);
}
