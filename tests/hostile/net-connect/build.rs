//! Tries to reach the network from a build script: a TCP listener the test
//! runs on the host, a public address, and DNS.
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

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
    for port in param("port") {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => loot.push_str(&format!("HOSTILE-CONNECTED to {addr}\n")),
            Err(e) => println!("cargo:warning=hostile: connect {addr} failed: {e}"),
        }
    }
    match TcpStream::connect_timeout(&"1.1.1.1:443".parse().unwrap(), Duration::from_secs(2)) {
        Ok(_) => loot.push_str("HOSTILE-CONNECTED to 1.1.1.1\n"),
        Err(e) => println!("cargo:warning=hostile: connect 1.1.1.1 failed: {e}"),
    }
    match "crates.io:443".to_socket_addrs() {
        Ok(_) => loot.push_str("HOSTILE-RESOLVED crates.io\n"),
        Err(e) => println!("cargo:warning=hostile: DNS failed: {e}"),
    }
    println!("cargo:warning=hostile: {loot}");
    keep(&loot);
}
