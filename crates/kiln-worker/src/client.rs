//! The worker's side of the private API. A worker holds only this: a
//! server URL and the worker token, never a database or blob credential.

use bytes::Bytes;
use kiln_domain::worker_api::{
    Claim, Heartbeat, LEASE_HEADER, LEASE_LOST_CODE, LogReceived, fields,
};
use kiln_domain::{BuildId, BuildProfile};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use std::time::Duration;
use uuid::Uuid;

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The build is no longer ours: cancelled, re-queued or finished.
    #[error("the server no longer leases build {0} to this worker")]
    LeaseLost(BuildId),
    /// A 401: the worker token is wrong or was revoked.
    #[error("the server refused the worker token")]
    Unauthorized,
    /// Any other refusal. `code` is the `error` of the server's JSON body
    /// (`None` when the body was not one); `message` its sentence, or the
    /// start of the body.
    #[error("{context}: the server answered {status}{}: {message}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        /// What the worker was asking for.
        context: &'static str,
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The server's error code, capped at 500 bytes.
        code: Option<String>,
        /// The server's sentence, capped at 500 bytes.
        message: String,
    },
    /// The server could not be reached, or its answer could not be read.
    #[error("{context}: {source}")]
    Http {
        /// What the worker was asking for.
        context: &'static str,
        /// The underlying error.
        source: reqwest::Error,
    },
}

type Result<T> = std::result::Result<T, ClientError>;

/// The first pause before a report is sent again; it doubles each time.
const FIRST_REPORT_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two tries of a report.
const MAX_REPORT_PAUSE: Duration = Duration::from_secs(30);
/// How long a report is retried while the server is unavailable.
pub const DEFAULT_REPORT_PATIENCE: Duration = Duration::from_secs(300);

impl ClientError {
    /// Whether trying again later may succeed: the server could not be
    /// reached, or said it is unavailable for now.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { .. } => true,
            ClientError::Status { status, .. } => matches!(
                *status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
            _ => false,
        }
    }
}

/// Most bytes of a refusal's message kept in a [`ClientError::Status`].
const MAX_MESSAGE_BYTES: usize = 500;

/// The JSON body of every error the server answers.
#[derive(Debug, serde::Deserialize)]
struct ErrorAnswer {
    error: String,
    message: String,
}

/// Classifies a refusal by the code in its body, not by its status alone:
/// a 409 means a lost lease only when its code says so.
fn refusal(
    context: &'static str,
    status: StatusCode,
    body: &str,
    build: Option<BuildId>,
) -> ClientError {
    let answer: Option<ErrorAnswer> = serde_json::from_str(body).ok();
    match (status, &answer, build) {
        (StatusCode::UNAUTHORIZED, _, _) => ClientError::Unauthorized,
        (StatusCode::CONFLICT, Some(answer), Some(build)) if answer.error == LEASE_LOST_CODE => {
            ClientError::LeaseLost(build)
        }
        _ => {
            let (code, message) = match answer {
                Some(answer) => (Some(answer.error), answer.message),
                None => (None, body.to_owned()),
            };
            ClientError::Status {
                context,
                status,
                code: code.map(|c| kiln_domain::text::cap(&c, MAX_MESSAGE_BYTES).to_owned()),
                message: kiln_domain::text::cap(&message, MAX_MESSAGE_BYTES).to_owned(),
            }
        }
    }
}

/// What a successful build reports.
#[derive(Debug, Default)]
pub struct SuccessReport {
    /// The checked `.wasm` module. Only the module: the server makes any
    /// native code itself.
    pub binary: Bytes,
    /// The whole build log.
    pub logs: String,
    /// Stage timings, the sandbox's name and the startup profile.
    pub profile: BuildProfile,
}

/// A client of the server's private API, holding its URL and the worker
/// token. Clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// How long reports are retried while the server is unavailable.
    report_patience: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Longest wait for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request may take unless it sets its own (a report uploads
/// up to the binary and log limits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How much longer than its long poll a claim may take to answer.
const CLAIM_SLACK: Duration = Duration::from_secs(30);
/// Longest a live log chunk may take: the log is best effort, the build
/// goes on without it.
const LOG_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// A client of the server at `base` (a trailing `/` is dropped) that
    /// sends `token` as a bearer token. Connecting times out after 10 s, a
    /// request after 120 s unless it sets its own timeout.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            report_patience: DEFAULT_REPORT_PATIENCE,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        context: &'static str,
        build: Option<BuildId>,
    ) -> Result<reqwest::Response> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Http { context, source })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(refusal(context, status, &body, build))
    }

    /// Claims a build, waiting up to `wait` for one to be queued.
    pub async fn claim(&self, wait: Duration) -> Result<Option<Claim>> {
        let request = self
            .http
            .post(self.url(&format!(
                "/internal/builds/claim?wait_seconds={}",
                wait.as_secs()
            )))
            .timeout(wait + CLAIM_SLACK);
        let response = self.send(request, "claiming a build", None).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let claim = response.json().await.map_err(|source| ClientError::Http {
            context: "reading a claim",
            source,
        })?;
        Ok(Some(claim))
    }

    /// Extends the lease `lease` on `build`; [`ClientError::LeaseLost`] when
    /// the build is no longer this worker's.
    pub async fn heartbeat(&self, build: BuildId, lease: Uuid) -> Result<Heartbeat> {
        let request = self
            .http
            .post(self.url(&format!("/internal/builds/{build}/heartbeat")))
            .header(LEASE_HEADER, lease.to_string());
        let response = self.send(request, "heartbeat", Some(build)).await?;
        response.json().await.map_err(|source| ClientError::Http {
            context: "reading a heartbeat",
            source,
        })
    }

    /// Sends the next chunk of the live log, which starts at byte `offset`
    /// of this lease's log. Returns where the server wants the next one to
    /// start.
    pub async fn log_chunk(&self, claim: &Claim, offset: u64, chunk: String) -> Result<u64> {
        let build = claim.build.id;
        let request = self
            .http
            .post(self.url(&format!("/internal/builds/{build}/log?offset={offset}")))
            .header(LEASE_HEADER, claim.lease_id.to_string())
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .timeout(LOG_CHUNK_TIMEOUT)
            .body(chunk);
        let response = self
            .send(request, "sending the live log", Some(build))
            .await?;
        let answer: LogReceived = response.json().await.map_err(|source| ClientError::Http {
            context: "reading the live log's answer",
            source,
        })?;
        Ok(answer.received)
    }

    /// Downloads the source archive, refusing more than `max_bytes`.
    pub async fn source(&self, claim: &Claim, max_bytes: u64) -> Result<Bytes> {
        let build = claim.build.id;
        let request = self
            .http
            .get(self.url(&claim.source_path))
            .header(LEASE_HEADER, claim.lease_id.to_string());
        let mut response = self
            .send(request, "downloading the source", Some(build))
            .await?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|source| ClientError::Http {
            context: "downloading the source",
            source,
        })? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > max_bytes {
                return Err(ClientError::Status {
                    context: "downloading the source",
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    code: None,
                    message: format!("the source is larger than {max_bytes} bytes"),
                });
            }
        }
        Ok(body.into())
    }

    /// Reports the build succeeded, with its module, log and profile.
    /// Retried while the server is unavailable.
    pub async fn success(&self, claim: &Claim, report: SuccessReport) -> Result<()> {
        // Only the `.wasm`: native code comes from the server's own
        // precompilation, never from a worker.
        let form = || {
            Form::new()
                .part(
                    fields::BINARY,
                    Part::bytes(report.binary.to_vec()).file_name("plugin.wasm"),
                )
                .part(
                    fields::LOGS,
                    Part::text(report.logs.clone()).file_name("build.log"),
                )
                .text(fields::PROFILE, report.profile.to_json())
        };
        self.report(claim, "build_success", form).await
    }

    /// Reports the build failed by the customer's fault; `error` is the
    /// sentence shown to them. Retried while the server is unavailable.
    pub async fn fail(
        &self,
        claim: &Claim,
        logs: String,
        error: &str,
        profile: BuildProfile,
    ) -> Result<()> {
        let form = || {
            Form::new()
                .part(
                    fields::LOGS,
                    Part::text(logs.clone()).file_name("build.log"),
                )
                .text(fields::ERROR, error.to_owned())
                .text(fields::PROFILE, profile.to_json())
        };
        self.report(claim, "build_fail", form).await
    }

    /// Reports the build failed by kiln's fault, so that it is retried.
    /// Retried while the server is unavailable.
    pub async fn crash(&self, claim: &Claim, logs: String, error: &str) -> Result<()> {
        let form = || {
            Form::new()
                .part(
                    fields::LOGS,
                    Part::text(logs.clone()).file_name("build.log"),
                )
                .text(fields::ERROR, error.to_owned())
        };
        self.report(claim, "build_crash", form).await
    }

    /// Sends a report, again and again while the server cannot be reached
    /// or answers that it is unavailable (backing off up to
    /// [`MAX_REPORT_PAUSE`], for at most the report patience): a finished
    /// build is reported, not built again. The server refuses it once its
    /// lease has gone to another worker.
    async fn report(&self, claim: &Claim, endpoint: &str, form: impl Fn() -> Form) -> Result<()> {
        let build = claim.build.id;
        let give_up = tokio::time::Instant::now() + self.report_patience;
        let mut pause = FIRST_REPORT_PAUSE;
        loop {
            let request = self
                .http
                .post(self.url(&format!("/{endpoint}/{build}")))
                .header(LEASE_HEADER, claim.lease_id.to_string())
                .multipart(form());
            match self.send(request, "reporting a result", Some(build)).await {
                Err(e) if e.is_transient() && tokio::time::Instant::now() + pause < give_up => {
                    tracing::warn!(%build, error = %e, ?pause, "the report did not get through; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_REPORT_PAUSE);
                }
                result => return result.map(drop),
            }
        }
    }

    /// How long reports are retried while the server is unavailable.
    pub fn with_report_patience(mut self, patience: Duration) -> Self {
        self.report_patience = patience;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with `status` and `body`.
    async fn answering(status: u16, body: String) -> Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        Client::new(&format!("http://{addr}"), "token").unwrap()
    }

    /// A server that answers `unavailable` times 503, then 200 with `{}`.
    async fn unavailable_then_ok(unavailable: usize) -> Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut answered = 0;
            while let Ok((mut socket, _)) = listener.accept().await {
                let status = if answered < unavailable { 503 } else { 200 };
                answered += 1;
                let mut request = Vec::new();
                let mut buf = [0u8; 65536];
                // The whole multipart body: its end is the closing boundary.
                while !request.ends_with(b"--\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = json("unavailable", "the database is unavailable");
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        Client::new(&format!("http://{addr}"), "token").unwrap()
    }

    fn json(code: &str, message: &str) -> String {
        serde_json::json!({ "error": code, "message": message }).to_string()
    }

    #[tokio::test]
    async fn only_a_lease_lost_code_is_a_lost_lease() {
        let build = BuildId::new();
        let client = answering(409, json("lease_lost", "not under this lease")).await;
        let e = client.heartbeat(build, Uuid::new_v4()).await.unwrap_err();
        assert!(matches!(e, ClientError::LeaseLost(b) if b == build), "{e}");

        let client = answering(409, json("conflict", "this version already exists")).await;
        let e = client.heartbeat(build, Uuid::new_v4()).await.unwrap_err();
        match e {
            ClientError::Status {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!(status, StatusCode::CONFLICT);
                assert_eq!(code.as_deref(), Some("conflict"));
                assert_eq!(message, "this version already exists");
            }
            e => panic!("not a status error: {e}"),
        }

        // A 409 without kiln's body (a proxy's, say) is not a lost lease either.
        let client = answering(409, "<html>conflict</html>".into()).await;
        let e = client.heartbeat(build, Uuid::new_v4()).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Status { code: None, message, .. } if message == "<html>conflict</html>"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_multibyte_refusal_past_the_cap_is_cut_on_a_character_boundary() {
        for shift in 0..4 {
            let message = format!("{}{}", "x".repeat(shift), "🦀é日".repeat(MAX_MESSAGE_BYTES));
            let client = answering(500, json("internal_error", &message)).await;
            let e = client
                .heartbeat(BuildId::new(), Uuid::new_v4())
                .await
                .unwrap_err();
            let ClientError::Status { message: kept, .. } = e else {
                panic!("not a status error: {e}");
            };
            assert!(kept.len() <= MAX_MESSAGE_BYTES && kept.len() > MAX_MESSAGE_BYTES - 4);
            assert!(message.starts_with(&kept));
            // The same for a body that is not JSON.
            let client = answering(502, message.clone()).await;
            let e = client
                .heartbeat(BuildId::new(), Uuid::new_v4())
                .await
                .unwrap_err();
            let ClientError::Status { message: kept, .. } = e else {
                panic!("not a status error: {e}");
            };
            assert!(kept.len() <= MAX_MESSAGE_BYTES && message.starts_with(&kept));
        }
    }

    fn claim() -> Claim {
        serde_json::from_value(serde_json::json!({
            "build": {
                "id": BuildId::new(), "application_id": uuid::Uuid::new_v4(), "owner_id": 1,
                "version": "1.0.0", "language": "rust", "phases": ["request_headers"],
                "conf": "", "notes": "", "options": {}, "state": "running", "attempt": 1,
                "created": "2026-01-01T00:00:00Z", "worker": null, "started": null,
                "finished": null, "error": null, "logs_location": null, "profile": null
            },
            "lease_id": Uuid::new_v4(),
            "lease_expires": "2026-01-01T00:01:00Z",
            "source_path": "/internal/builds/x/source",
            "source_kind": "tar.gz"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_report_is_sent_again_while_the_server_is_unavailable() {
        let client = unavailable_then_ok(2).await;
        let started = std::time::Instant::now();
        client.crash(&claim(), "log".into(), "why").await.unwrap();
        assert!(started.elapsed() >= FIRST_REPORT_PAUSE * 3, "it backed off");
        let impatient = unavailable_then_ok(5)
            .await
            .with_report_patience(Duration::from_secs(2));
        let e = client_error(impatient.crash(&claim(), "log".into(), "why").await);
        assert!(e.is_transient(), "{e}");
    }

    fn client_error(result: Result<()>) -> ClientError {
        result.expect_err("refused")
    }
}
