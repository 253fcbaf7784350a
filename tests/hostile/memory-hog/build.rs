//! Touches 10 GiB of memory, page by page.

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
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for gib in 0..10 * 4 {
        let mut block = vec![0u8; 256 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        blocks.push(block);
        eprintln!("hostile: touched {} MiB", (gib + 1) * 256);
    }
    keep("");
    panic!("hostile: touched 10 GiB without being stopped");
}
