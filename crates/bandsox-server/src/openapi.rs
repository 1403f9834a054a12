//! The OpenAPI 3.1 description of the REST API, generated from the handlers' annotations and
//! the request/response types. Served at `/api/openapi.json`; a copy is checked in at
//! `spec/openapi.json` and a test fails when the two drift apart.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Spec, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{auth, routes};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bandsox",
        description = "Self-hosted microVM sandboxes: BandSox-compatible REST API plus extensions. \
                       Errors are RFC 9457 problem+json with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    paths(
        routes::vms::version, routes::vms::list, routes::vms::create, routes::vms::get,
        routes::vms::exec, routes::vms::stop, routes::vms::pause, routes::vms::resume,
        routes::vms::start, routes::vms::restart, routes::vms::rename, routes::vms::set_metadata,
        routes::vms::set_timeout, routes::vms::extend, routes::vms::delete,
        routes::health::healthz, routes::health::readyz, routes::health::stats,
        crate::observe::metrics,
        routes::snapshots::create, routes::snapshots::list, routes::snapshots::get,
        routes::snapshots::restore, routes::snapshots::delete, routes::snapshots::rename,
        routes::snapshots::set_metadata,
        routes::templates::list, routes::templates::build, routes::templates::get,
        routes::templates::delete, routes::templates::fork, routes::templates::list_pools,
        routes::templates::set_pool,
        routes::files::read_file, routes::files::write_file, routes::files::append_file,
        routes::files::file_info, routes::files::list, routes::files::stat, routes::files::mkdir,
        routes::files::remove, routes::files::rename, routes::files::edit,
        routes::files::write_batch, routes::files::upload, routes::files::download,
        routes::files::exec_python,
        routes::proxy::http, routes::proxy::proxy,
        routes::commands::start, routes::commands::list, routes::commands::get,
        routes::commands::logs, routes::commands::wait, routes::commands::kill,
        routes::commands::stdin,
        routes::images::list, routes::images::pull, routes::images::import,
        routes::images::inspect, routes::images::delete,
        routes::build::from_dockerfile, routes::build::build_image,
        routes::ws::terminal, routes::ws::exec_stream, routes::socket::socket,
        auth::login, auth::logout, auth::check_route, auth::list_keys, auth::create_key,
        auth::revoke_key, auth::change_password, routes::events::events,
        routes::cluster::nodes,
    ),
    components(schemas(bandsox_api::Problem)),
    modifiers(&Conventions),
    security(("api_key" = []), ("session" = [])),
)]
struct ApiDoc;

/// Paths anyone may call, also with auth on.
const PUBLIC_PATHS: &[&str] = &[
    "/healthz",
    "/readyz",
    "/api/auth/login",
    "/api/auth/logout",
    "/api/auth/check",
    "/api/openapi.json",
];

/// What every operation shares: the problem+json error response and the two ways to
/// authenticate (API key as a bearer token, or the browser's session cookie).
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, spec: &mut Spec) {
        let components = spec.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("bsx_...")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(auth::SESSION_COOKIE))),
        );
        let problem = ResponseBuilder::new()
            .description("An RFC 9457 problem: `code` is stable, `detail` explains.")
            .content(
                bandsox_api::PROBLEM_CONTENT_TYPE,
                ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "Problem",
                    ))))
                    .build(),
            )
            .build();
        let with = |description: &str| {
            let mut r = problem.clone();
            r.description = description.to_owned();
            RefOr::T(r)
        };
        for (path, item) in spec.paths.paths.iter_mut() {
            let ops = [
                (false, &mut item.get),
                (true, &mut item.post),
                (true, &mut item.put),
                (true, &mut item.delete),
                (true, &mut item.patch),
                (false, &mut item.head),
                (false, &mut item.options),
            ];
            for (write, op) in ops {
                let Some(op) = op.as_mut() else { continue };
                let has_body = op.request_body.is_some();
                let has_query = op.parameters.as_ref().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == utoipa::openapi::path::ParameterIn::Query))
                });
                let websocket = path.ends_with("/terminal")
                    || path.ends_with("/exec-stream")
                    || path.ends_with("/socket");
                let mut errors: Vec<(&str, &str)> = Vec::new();
                if !PUBLIC_PATHS.contains(&path.as_str()) {
                    errors.push((
                        "401",
                        "`unauthorized`: auth is on and no valid API key or session was sent",
                    ));
                }
                if write || websocket {
                    errors.push(("403", "`cross_origin` (a browser request from another origin) or `forbidden_host` (a non-loopback Host without auth)"));
                }
                if path.contains('{') {
                    errors.push(("404", "`vm_not_found`, `not_found`, `image_not_found`, `command_not_found`: nothing by that id"));
                }
                if has_body {
                    errors.push((
                        "413",
                        "`too_large`: the body is larger than this route takes",
                    ));
                    errors.push((
                        "415",
                        "`unsupported_media_type`: a body type this route does not take",
                    ));
                }
                if has_body || has_query {
                    errors.push((
                        "422",
                        "`invalid_input`, `invalid_body`: a value is not acceptable",
                    ));
                }
                if path.starts_with("/api/vms/{id}/") {
                    errors.push((
                        "409",
                        "`conflict`: the VM is not in a state that allows this",
                    ));
                    errors.push(("429", "`too_many_operations`: the VM already runs `--max-ops-per-vm` operations (`Retry-After`)"));
                }
                for (status, description) in errors {
                    op.responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| with(description));
                }
                op.responses
                    .responses
                    .entry("default".into())
                    .or_insert_with(|| RefOr::T(problem.clone()));
            }
        }
    }
}

/// The spec as a value (what `/api/openapi.json` serves and `spec/openapi.json` holds).
pub fn spec() -> Spec {
    ApiDoc::openapi()
}

/// `GET /api/openapi.json`.
pub async fn serve_spec() -> Json<Spec> {
    Json(spec())
}
