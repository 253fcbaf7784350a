//! What Envoy reads. The bootstrap listens on one address, routes every
//! request to the origin, and takes its one wasm HTTP filter through
//! extension config discovery from a file (`path_config_source`): when the
//! agent moves a new file over it, Envoy loads the new filter, and requests
//! already running finish on the old one.

use super::files::FILTER_CONFIG;
use crate::cli::EnvoyConfigArgs;
use anyhow::Context;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;

/// The filter's config type, as extension config discovery names it.
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

fn socket_address(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

fn socket(addr: SocketAddr) -> Value {
    socket_address(&addr.ip().to_string(), addr.port())
}

/// `HOST:PORT` of the origin, and whether HOST is an IP address.
fn parse_origin(origin: &str) -> anyhow::Result<(String, u16, bool)> {
    if let Ok(addr) = origin.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port(), true));
    }
    let (host, port) = origin
        .rsplit_once(':')
        .context("--origin must be HOST:PORT, e.g. 127.0.0.1:8000")?;
    let port = port
        .parse()
        .with_context(|| format!("--origin: {port:?} is not a port"))?;
    anyhow::ensure!(
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')),
        "--origin: {host:?} is not a host name"
    );
    Ok((host.to_owned(), port, false))
}

/// The bootstrap, as JSON (which Envoy reads as YAML too).
pub fn bootstrap(
    dir: &Path,
    listen: SocketAddr,
    origin: &str,
    admin: SocketAddr,
    filter_name: &str,
) -> anyhow::Result<Value> {
    let (host, port, is_ip) = parse_origin(origin)?;
    let filter_file = dir.join(FILTER_CONFIG);
    let http_connection_manager = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "kiln",
        "route_config": {
            "name": "origin",
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "origin" } }]
            }]
        },
        "http_filters": [
            {
                "name": filter_name,
                "config_discovery": {
                    "config_source": {
                        "path_config_source": { "path": filter_file.to_string_lossy() },
                        "resource_api_version": "V3"
                    },
                    "type_urls": [WASM_TYPE_URL]
                }
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
            }
        ]
    });
    Ok(json!({
        "node": { "id": "kiln-edge", "cluster": "kiln-edge" },
        "admin": { "address": socket(admin) },
        "static_resources": {
            "listeners": [{
                "name": "kiln",
                "address": socket(listen),
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": http_connection_manager
                }]}]
            }],
            "clusters": [{
                "name": "origin",
                "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": "origin",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(&host, port) } }] }]
                }
            }]
        }
    }))
}

pub fn print_bootstrap(args: &EnvoyConfigArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let config = bootstrap(
        &dir,
        args.listen,
        &args.origin,
        args.admin,
        &args.filter_name,
    )?;
    if !dir.join(FILTER_CONFIG).exists() {
        eprintln!(
            "note: {} does not exist yet, and Envoy refuses to start without it: start `kiln edge --dir {}` first, and Envoy once the agent has written it",
            dir.join(FILTER_CONFIG).display(),
            dir.display()
        );
    }
    println!("{}", serde_json::to_string_pretty(&config)?);
    Ok(())
}

/// What the agent deploys: the extension config naming the local module
/// and the version's configuration, as a discovery response with one
/// resource named like the filter.
pub fn filter_config(
    filter_name: &str,
    module: &Path,
    sha256: &str,
    conf: &str,
    version_info: &str,
) -> Value {
    json!({
        "version_info": version_info,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": filter_name,
            "typed_config": {
                "@type": WASM_TYPE_URL,
                "config": {
                    "name": filter_name,
                    "vm_config": {
                        "vm_id": format!("kiln-{}", &sha256[..12.min(sha256.len())]),
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": module.to_string_lossy() } }
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": conf
                    }
                }
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_addresses_or_host_names() {
        assert_eq!(
            parse_origin("127.0.0.1:80").unwrap(),
            ("127.0.0.1".into(), 80, true)
        );
        assert_eq!(
            parse_origin("origin.internal:8080").unwrap(),
            ("origin.internal".into(), 8080, false)
        );
        for bad in ["nohost", ":80", "a b:80", "host:port"] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bootstrap_takes_its_filter_from_the_agents_file() {
        let config = bootstrap(
            Path::new("/srv/edge"),
            "127.0.0.1:10000".parse().unwrap(),
            "127.0.0.1:8000",
            "127.0.0.1:9901".parse().unwrap(),
            "kiln",
        )
        .unwrap();
        let hcm = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let filter = &hcm["http_filters"][0];
        assert_eq!(filter["name"], "kiln");
        assert_eq!(
            filter["config_discovery"]["config_source"]["path_config_source"]["path"],
            "/srv/edge/filter.json"
        );
        assert_eq!(hcm["http_filters"][1]["name"], "envoy.filters.http.router");
    }
}
