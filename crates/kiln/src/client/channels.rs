//! `kiln promote`, `kiln rollback` and `kiln channels`: what is deployed.
//! A channel points at one succeeded version; promoting moves it, a
//! rollback returns it to the version before its latest change.

use super::api::Api;
use super::{ChannelsArgs, Conn, PromoteArgs, RollbackArgs, list, output, resolve_app, uuid_like};
use anyhow::{Result, bail};
use reqwest::Method;
use serde_json::{Value, json};

/// Points `channel` of application `app_id` at version `version_id`;
/// returns the channel.
pub async fn promote_version(
    api: &Api,
    app_id: &str,
    channel: &str,
    version_id: &str,
) -> Result<Value> {
    api.json(
        api.request(
            Method::PUT,
            &format!("/application/{app_id}/channels/{}", path_segment(channel)),
        )
        .json(&json!({"version_id": version_id})),
    )
    .await
}

/// A channel name as one path segment; the server refuses any name that
/// is not letters, digits, `.`, `_` and `-`, so only those pass unchanged.
fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub async fn promote(args: PromoteArgs) -> Result<()> {
    let api = args.conn.api()?;
    let version = if uuid_like(&args.version) {
        api.get(&format!("/version/{}", args.version)).await?
    } else {
        let Some(app) = &args.app else {
            bail!(
                "{:?} is not a version id: give the id, or the version with --app",
                args.version
            );
        };
        let app = resolve_app(&api, app, false).await?;
        let app_id = output::text(&app["id"]);
        let versions = api
            .get(&format!("/version?application_id={app_id}"))
            .await?;
        let found = list(&versions).find(|v| v["version"].as_str() == Some(args.version.as_str()));
        match found {
            Some(v) => v.clone(),
            None => bail!(
                "application {} has no succeeded version {} (kiln versions --app {} lists them)",
                output::text(&app["name"]),
                args.version,
                output::text(&app["name"])
            ),
        }
    };
    let app_id = output::text(&version["application_id"]);
    let id = output::text(&version["id"]);
    let channel = promote_version(&api, &app_id, &args.channel, &id).await?;
    show_channel(&args.conn, &channel);
    Ok(())
}

pub async fn rollback(args: RollbackArgs) -> Result<()> {
    let api = args.conn.api()?;
    let app = resolve_app(&api, &args.app, false).await?;
    let app_id = output::text(&app["id"]);
    let channel = api
        .json(api.request(
            Method::POST,
            &format!(
                "/application/{app_id}/channels/{}/rollback",
                path_segment(&args.channel)
            ),
        ))
        .await?;
    show_channel(&args.conn, &channel);
    Ok(())
}

pub async fn channels(args: ChannelsArgs) -> Result<()> {
    let api = args.conn.api()?;
    let app = resolve_app(&api, &args.app, false).await?;
    let channels = api
        .get(&format!(
            "/application/{}/channels",
            output::text(&app["id"])
        ))
        .await?;
    if args.conn.json {
        output::json(&channels);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list(&channels)
        .map(|c| {
            vec![
                output::text(&c["name"]),
                output::text(&c["version"]["version"]),
                output::text(&c["version"]["id"]),
                output::text(&c["revision"]),
                output::time(&c["updated"]),
                last_change(c),
            ]
        })
        .collect();
    output::table(
        &[
            "CHANNEL",
            "VERSION",
            "VERSION ID",
            "REVISION",
            "UPDATED",
            "LAST CHANGE",
        ],
        &rows,
    );
    Ok(())
}

/// `promote by owner 1, token 3f2a9c01b7e4`, from the newest history entry.
fn last_change(channel: &Value) -> String {
    match channel["history"].as_array().and_then(|h| h.first()) {
        Some(change) => format!(
            "{} by {}",
            output::text(&change["action"]),
            output::text(&change["by"])
        ),
        None => "-".to_owned(),
    }
}

pub fn show_channel(conn: &Conn, channel: &Value) {
    if conn.json {
        return output::json(channel);
    }
    output::fields(&[
        ("channel", output::text(&channel["name"])),
        ("version", output::text(&channel["version"]["version"])),
        ("id", output::text(&channel["version"]["id"])),
        ("sha256", output::text(&channel["version"]["binary_sha256"])),
        ("revision", output::text(&channel["revision"])),
        ("change", last_change(channel)),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_name_stays_one_path_segment() {
        assert_eq!(path_segment("production"), "production");
        assert_eq!(path_segment("a/../b c"), "a%2F..%2Fb%20c");
    }
}
