//! The OpenAPI description, generated from the handlers' annotations.

use crate::error::ErrorBody;
use crate::routes::{
    applications, builds, channels, content, internal, ops, registry, trial, versions,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The OpenAPI document of every route, served at `/openapi.json`.
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
    components(schemas(ErrorBody, crate::routes::registry::RegistryErrors, kiln_domain::Channel, kiln_domain::ChannelChange, kiln_domain::ChannelTarget, kiln_domain::ChannelAction, kiln_domain::BuildState, kiln_domain::Phase, kiln_domain::Language)),
    modifiers(&Security, &ErrorResponses, &Constraints),
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

/// The error answers every operation can give, each with its JSON error
/// body (the distribution spec's `{"errors": […]}` under `/v2/`): 401
/// where a token is needed, 404 where a path names a resource, 400 where
/// a query, a header or a body is read, 415 where a JSON body is, 422
/// where any input is taken, and 500 and 503 (a store is down) wherever
/// the stores are used.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let body = if path.starts_with("/v2/") {
                "RegistryErrors"
            } else {
                "ErrorBody"
            };
            let liveness = matches!(path.as_str(), "/healthz" | "/openapi.json" | "/signing-key");
            let operations = [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
                item.head.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                add_error_responses(operation, body, liveness);
            }
        }
    }
}

fn add_error_responses(
    operation: &mut utoipa::openapi::path::Operation,
    body: &str,
    liveness: bool,
) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{Content, Ref, ResponseBuilder};
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let takes = |place: fn(&ParameterIn) -> bool| parameters.iter().any(|p| place(&p.parameter_in));
    let names_resource = takes(|p| matches!(p, ParameterIn::Path));
    let reads_request = takes(|p| matches!(p, ParameterIn::Query | ParameterIn::Header))
        || operation.request_body.is_some();
    let json_body = operation
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("application/json"));
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let takes_input = reads_request || names_resource;

    let mut errors = Vec::new();
    if secured {
        errors.push(("401", "no token, or one this operation does not take"));
    }
    if names_resource {
        errors.push(("404", "nothing with this id, or nothing the token may read"));
    }
    if reads_request {
        errors.push(("400", "a query, header or body that cannot be read"));
    }
    if json_body {
        errors.push(("415", "the body is not application/json"));
    }
    if takes_input {
        errors.push((
            "422",
            "a value is not valid (invalid_input, with what is wrong)",
        ));
    }
    if !liveness {
        errors.push(("500", "kiln's own failure; the server log has the details"));
        errors.push((
            "503",
            "the database or the blob store is unavailable; see Retry-After",
        ));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in errors {
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name(body))),
            )
            .build();
        responses
            .entry(status.to_owned())
            .or_insert_with(|| response.into());
    }
}

/// The constraints the domain's validations put on fields, written into
/// their schemas from the domain itself: a value the document allows is
/// one the server takes.
struct Constraints;

/// One constraint on one field of one schema.
enum Rule {
    Pattern(String),
    /// The domain counts bytes; JSON Schema counts characters, which is
    /// the same for the ASCII a limit is usually met with.
    MaxLength(usize),
}

impl Modify for Constraints {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use kiln_domain::{MAX_CONF_BYTES, MAX_NOTES_BYTES, patterns};
        use utoipa::openapi::{RefOr, Schema};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let rules = [
            ("CreateApplication", "name", Rule::Pattern(patterns::name())),
            (
                "CreateApplication",
                "notes",
                Rule::MaxLength(MAX_NOTES_BYTES),
            ),
            ("UpdateApplication", "name", Rule::Pattern(patterns::name())),
            (
                "UpdateApplication",
                "notes",
                Rule::MaxLength(MAX_NOTES_BYTES),
            ),
            (
                "UpdateVersion",
                "version",
                Rule::Pattern(patterns::version()),
            ),
            ("UpdateVersion", "conf", Rule::MaxLength(MAX_CONF_BYTES)),
            ("UpdateVersion", "notes", Rule::MaxLength(MAX_NOTES_BYTES)),
            ("UploadForm", "version", Rule::Pattern(patterns::version())),
            (
                "UploadForm",
                "phases",
                Rule::Pattern(patterns::phases_json()),
            ),
            (
                "UploadForm",
                "options",
                Rule::Pattern(patterns::options_json()),
            ),
            ("UploadForm", "conf", Rule::MaxLength(MAX_CONF_BYTES)),
            ("UploadForm", "notes", Rule::MaxLength(MAX_NOTES_BYTES)),
        ];
        for (schema, property, rule) in rules {
            let field = match components.schemas.get_mut(schema) {
                Some(RefOr::T(Schema::Object(object))) => object.properties.get_mut(property),
                _ => None,
            };
            let Some(RefOr::T(Schema::Object(field))) = field else {
                debug_assert!(false, "the document has no field {schema}.{property}");
                continue;
            };
            match rule {
                Rule::Pattern(pattern) => field.pattern = Some(pattern),
                Rule::MaxLength(length) => field.max_length = Some(length),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constraint_finds_its_field() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &document["components"]["schemas"];
        let name = &schemas["CreateApplication"]["properties"]["name"];
        assert_eq!(name["pattern"], kiln_domain::patterns::name());
        let phases = &schemas["UploadForm"]["properties"]["phases"];
        assert_eq!(phases["pattern"], kiln_domain::patterns::phases_json());
    }
}
