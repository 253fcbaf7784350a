//! Tries to read host secrets (files the test names, the worker and admin
//! tokens, /etc/shadow, process environments) and prints and embeds
//! whatever it gets, so a leak would show in the log and the binary.

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
    let mut loot = String::new();
    let mut paths = param("read");
    paths.extend(["/etc/shadow", "/proc/1/environ", "/proc/self/environ", "/root/.bash_history"].map(String::from));
    for path in paths {
        match std::fs::read(&path) {
            Ok(bytes) => loot.push_str(&format!("READ {path}: {}\n", String::from_utf8_lossy(&bytes))),
            Err(e) => println!("cargo:warning=hostile: read {path} failed: {e}"),
        }
    }
    for (key, value) in std::env::vars() {
        loot.push_str(&format!("ENV {key}={value}\n"));
    }
    println!("cargo:warning=hostile: {}", loot.replace('\n', " | "));
    eprintln!("{loot}");
    keep(&loot);
}
