//! The public API as a person's client sees it: one bearer token, the
//! server's sentence on a refusal, and the live log as Server-Sent Events.

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Most bytes of a refusal's sentence printed.
const MAX_MESSAGE_BYTES: usize = 500;
/// How often following a log reconnects after the connection dropped.
const FOLLOW_RETRIES: u32 = 10;

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    pub base: String,
    token: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The server's refusal, as one line: its JSON `message`, or the status
/// and the start of a body that was not kiln's.
pub async fn refusal(response: Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = match serde_json::from_str::<Value>(&body) {
        Ok(v) if v["message"].is_string() => v["message"].as_str().unwrap_or_default().to_owned(),
        _ if body.trim().is_empty() => format!("the server answered {status}"),
        _ => format!("the server answered {status}: {}", body.trim()),
    };
    anyhow!(
        "{}",
        one_line(kiln_domain::text::cap(&message, MAX_MESSAGE_BYTES))
    )
}

/// `text` with its line breaks and other control characters as spaces.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a stream of bytes into events; keeps a partial event for the next
/// bytes.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end.0).collect();
            self.buf.drain(..end.1);
            if let Some(event) = parse_block(&String::from_utf8_lossy(&block)) {
                events.push(event);
            }
        }
        events
    }
}

/// Where the first blank line is: the block's length and the separator's.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
    }
    None
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent {
        event: "message".into(),
        ..SseEvent::default()
    };
    let mut data = Vec::new();
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = value.to_owned(),
            "id" => event.id = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() && event.id.is_none() {
        return None;
    }
    event.data = data.join("\n");
    Some(event)
}

impl Api {
    pub fn new(base: &str, token: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("starting the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends `request`; a refusal becomes the server's sentence.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {}: {}", self.base, one_line(&e.to_string())))?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        Ok(response)
    }

    /// Sends `request` and reads its JSON answer (`null` for 204).
    pub async fn json(&self, request: RequestBuilder) -> Result<Value> {
        let response = self.send(request.timeout(Duration::from_secs(120))).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response
            .json()
            .await
            .map_err(|e| anyhow!("the server's answer was not JSON: {e}"))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json(self.request(Method::GET, path)).await
    }

    /// Follows build `id`'s log from the start: `on_text` gets each piece
    /// as it arrives; returns the `end` event's data (`state`, `error`,
    /// `build`). Reconnects with `Last-Event-ID` when the connection drops.
    pub async fn follow(&self, id: &str, mut on_text: impl FnMut(&str)) -> Result<Value> {
        let mut last_id: Option<String> = None;
        let mut retries = 0;
        loop {
            let mut request = self
                .request(
                    Method::GET,
                    &format!("/version_build/{id}/logs?follow=true"),
                )
                .header(reqwest::header::ACCEPT, "text/event-stream");
            if let Some(last) = &last_id {
                request = request.header("last-event-id", last);
            }
            let dropped = match self.send(request).await {
                Ok(mut response) => {
                    let mut parser = SseParser::default();
                    loop {
                        match response.chunk().await {
                            Ok(Some(bytes)) => {
                                for event in parser.push(&bytes) {
                                    if event.id.is_some() {
                                        last_id = event.id.clone();
                                    }
                                    let data: Value =
                                        serde_json::from_str(&event.data).unwrap_or(Value::Null);
                                    match event.event.as_str() {
                                        "log" => on_text(data["text"].as_str().unwrap_or_default()),
                                        "end" => return Ok(data),
                                        _ => {}
                                    }
                                    retries = 0;
                                }
                            }
                            Ok(None) => break anyhow!("the server closed the log stream"),
                            Err(e) => break anyhow!("the log stream broke: {e}"),
                        }
                    }
                }
                // A refusal (404, 401) is final; a network error is not.
                Err(e) if e.to_string().starts_with("cannot reach") => e,
                Err(e) => return Err(e),
            };
            retries += 1;
            if retries > FOLLOW_RETRIES {
                bail!("{dropped}; gave up after {FOLLOW_RETRIES} reconnections");
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(retries.min(4)))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_pieces_are_parsed_whole() {
        let mut parser = SseParser::default();
        let stream = "event: log\nid: 5\ndata: {\"text\":\"héllo\"}\n\n: keep-alive\n\nevent: end\ndata: {}\n\n";
        let bytes = stream.as_bytes();
        let mut events = Vec::new();
        for piece in bytes.chunks(3) {
            events.extend(parser.push(piece));
        }
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "log");
        assert_eq!(events[0].id.as_deref(), Some("5"));
        assert_eq!(events[0].data, "{\"text\":\"héllo\"}");
        assert_eq!(events[1].event, "end");
    }

    #[test]
    fn a_refusal_is_one_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }
}
