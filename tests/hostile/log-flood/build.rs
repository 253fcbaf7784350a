//! Prints 100 MiB, then fails so that cargo shows all of it.

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
    let line = "hostile flood ".repeat(73) + "\n";
    let mut out = std::io::stderr().lock();
    let mut written = 0;
    while written < 100 << 20 {
        let _ = std::io::Write::write_all(&mut out, line.as_bytes());
        written += line.len();
    }
    keep("");
    panic!("hostile: flooded");
}
