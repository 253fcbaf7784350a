//! The OpenAPI description, generated from the handlers' annotations.

use crate::error::ErrorBody;
use crate::routes::{
    applications, builds, channels, content, internal, ops, registry, trial, versions,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "kiln", description = "kiln builds untrusted source into proxy-wasm plugins in a sandbox and keeps every version."),
    paths(
        applications::create, applications::list, applications::get, applications::update, applications::delete,
        versions::upload, versions::list, versions::get, versions::update, versions::delete,
        versions::binary, versions::source, versions::logs, trial::try_version,
        builds::list, builds::get, builds::logs, builds::cancel,
        channels::promote, channels::rollback, channels::list, channels::get, content::artifact,
        registry::base, registry::manifest, registry::blob, registry::tags,
        internal::claim, internal::heartbeat, internal::source, internal::log_chunk,
        internal::build_success, internal::build_fail, internal::build_crash,
        ops::signing_key, ops::healthz, ops::readyz, ops::metrics, ops::openapi_json,
    ),
    components(schemas(ErrorBody, kiln_domain::Channel, kiln_domain::ChannelChange, kiln_domain::ChannelTarget, kiln_domain::ChannelAction, kiln_domain::BuildState, kiln_domain::Phase, kiln_domain::Language)),
    modifiers(&Security, &ErrorResponses),
    tags(
        (name = "applications", description = "A customer's plugins"),
        (name = "versions", description = "Uploads and built versions"),
        (name = "builds", description = "Builds and their logs"),
        (name = "channels", description = "Deployments: channels that point at versions; edge tokens read them"),
        (name = "edge", description = "Artifacts by content address, for edge servers"),
        (name = "registry", description = "Channels as a read-only OCI registry (Istio's WasmPlugin pulls them); edge tokens read it"),
        (name = "worker", description = "Private: workers and the evaluator (the worker's own token, or the server's shared one)"),
        (name = "ops", description = "Health, metrics, the signing key and this document"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["bearer", "worker", "edge"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The error answers every operation can give, each with the JSON error
/// body: 401 where a token is needed, 400 and 415 where a JSON body is
/// read, 422 where any input is taken, and 500 and 503 (a store is down)
/// wherever the stores are used.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::HttpMethod;
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
                (HttpMethod::Patch, item.patch.as_mut()),
                (HttpMethod::Head, item.head.as_mut()),
            ];
            for (_, operation) in operations {
                let Some(operation) = operation else { continue };
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add("401", "no token, or one this operation does not take");
                }
                let json_body = operation
                    .request_body
                    .as_ref()
                    .is_some_and(|b| b.content.contains_key("application/json"));
                if json_body {
                    add("400", "the body is not valid JSON of this shape");
                    add("415", "the body is not application/json");
                }
                let takes_input = operation.request_body.is_some()
                    || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if takes_input {
                    add(
                        "422",
                        "a value is not valid (invalid_input, with what is wrong)",
                    );
                }
                let liveness =
                    matches!(path.as_str(), "/healthz" | "/openapi.json" | "/signing-key");
                if !liveness {
                    add("500", "kiln's own failure; the server log has the details");
                    add(
                        "503",
                        "the database or the blob store is unavailable; see Retry-After",
                    );
                }
            }
        }
    }
}
