//! The worker's side of the private API. A worker holds only this: a
//! server URL and the worker token, never a database or blob credential.

use bytes::Bytes;
use kiln_domain::BuildId;
use kiln_domain::worker_api::{Claim, Heartbeat, LEASE_HEADER, fields};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The build is no longer ours: cancelled, re-queued or finished.
    #[error("the server no longer leases build {0} to this worker")]
    LeaseLost(BuildId),
    #[error("the server refused the worker token")]
    Unauthorized,
    #[error("{context}: the server answered {status}: {body}")]
    Status {
        context: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("{context}: {source}")]
    Http {
        context: &'static str,
        source: reqwest::Error,
    },
}

type Result<T> = std::result::Result<T, ClientError>;

/// What a successful build reports.
#[derive(Debug, Default)]
pub struct SuccessReport {
    pub binary: Bytes,
    pub logs: String,
    pub profile: serde_json::Value,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
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
        match response.status() {
            s if s.is_success() => Ok(response),
            StatusCode::UNAUTHORIZED => Err(ClientError::Unauthorized),
            StatusCode::CONFLICT if build.is_some() => {
                Err(ClientError::LeaseLost(build.expect("checked above")))
            }
            status => {
                let body = response.text().await.unwrap_or_default();
                Err(ClientError::Status {
                    context,
                    status,
                    body: body.chars().take(500).collect(),
                })
            }
        }
    }

    /// Claims a build, waiting up to `wait` for one to be queued.
    pub async fn claim(&self, wait: Duration) -> Result<Option<Claim>> {
        let request = self
            .http
            .post(self.url(&format!(
                "/internal/builds/claim?wait_seconds={}",
                wait.as_secs()
            )))
            .timeout(wait + Duration::from_secs(30));
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
                    body: format!("the source is larger than {max_bytes} bytes"),
                });
            }
        }
        Ok(body.into())
    }

    pub async fn success(&self, claim: &Claim, report: SuccessReport) -> Result<()> {
        // Only the `.wasm`: native code comes from the server's own
        // precompilation, never from a worker.
        let form = Form::new()
            .part(
                fields::BINARY,
                Part::bytes(report.binary.to_vec()).file_name("plugin.wasm"),
            )
            .part(fields::LOGS, Part::text(report.logs).file_name("build.log"))
            .text(fields::PROFILE, report.profile.to_string());
        self.report(claim, "build_success", form).await
    }

    pub async fn fail(
        &self,
        claim: &Claim,
        logs: String,
        error: &str,
        profile: serde_json::Value,
    ) -> Result<()> {
        let form = Form::new()
            .part(fields::LOGS, Part::text(logs).file_name("build.log"))
            .text(fields::ERROR, error.to_owned())
            .text(fields::PROFILE, profile.to_string());
        self.report(claim, "build_fail", form).await
    }

    pub async fn crash(&self, claim: &Claim, logs: String, error: &str) -> Result<()> {
        let form = Form::new()
            .part(fields::LOGS, Part::text(logs).file_name("build.log"))
            .text(fields::ERROR, error.to_owned());
        self.report(claim, "build_crash", form).await
    }

    async fn report(&self, claim: &Claim, endpoint: &str, form: Form) -> Result<()> {
        let build = claim.build.id;
        let request = self
            .http
            .post(self.url(&format!("/{endpoint}/{build}")))
            .header(LEASE_HEADER, claim.lease_id.to_string())
            .multipart(form);
        self.send(request, "reporting a result", Some(build))
            .await?;
        Ok(())
    }
}
