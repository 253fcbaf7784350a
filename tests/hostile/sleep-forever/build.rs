//! Sleeps for hours.

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
    std::thread::sleep(std::time::Duration::from_secs(4 * 3600));
    keep("");
}
