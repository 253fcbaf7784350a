//! Forks without bound, then fails the build.

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
    let _ = param("unused");
    let mut children = Vec::new();
    for _ in 0..100_000 {
        match std::process::Command::new("/bin/sh").arg("-c").arg(":(){ :|:& };:").spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                println!("cargo:warning=hostile: fork refused after {} children: {e}", children.len());
                break;
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(5));
    keep("");
    panic!("hostile: fork bomb done");
}
