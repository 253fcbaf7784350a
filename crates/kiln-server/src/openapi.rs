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
    modifiers(&Security),
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
