//! Middleware: the VM or snapshot reference in a path (`/api/vms/{ref}/...`,
//! `/api/snapshots/{ref}/...`) — a full id, a name or a unique id prefix — is replaced by the
//! full id before routing, so every route accepts them alike. An ambiguous reference is a
//! 409 `ambiguous_reference` naming the candidates; one that matches nothing is passed on
//! unchanged and the handler answers 404 as before.

use axum::extract::{Request, State};
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bandsox_core::Manager;

use crate::error::ApiError;
use crate::routes::AppState;

pub async fn references(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    match rewrite(&s.manager, req.uri()) {
        Ok(Some(uri)) => *req.uri_mut() = uri,
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    next.run(req).await
}

/// [`references`] for requests the API guard will let through; others go on unchanged and
/// are refused by the guard, so nobody learns which names exist without credentials.
pub async fn references_when_authenticated(
    State(s): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    // The credential check is kept in the request for the guard, which does not repeat it.
    if reference_of(req.uri().path()).is_none() || crate::auth::check_once(&s, &mut req) {
        references(State(s), req, next).await
    } else {
        next.run(req).await
    }
}

/// The reference in a path that names one (not a full id), as
/// `(route prefix, reference segment, rest after it, whether it is a VM)`.
fn reference_of(path: &str) -> Option<(&'static str, &str, Option<&str>, bool)> {
    let (prefix, rest, vm) = if let Some(r) = path.strip_prefix("/api/vms/") {
        ("/api/vms/", r, true)
    } else if let Some(r) = path.strip_prefix("/api/snapshots/") {
        ("/api/snapshots/", r, false)
    } else {
        return None;
    };
    let (segment, tail) = match rest.split_once('/') {
        Some((s, t)) => (s, Some(t)),
        None => (rest, None),
    };
    let plain = segment.is_empty()
        || is_full_id(segment)
        || (vm && segment == "from-dockerfile" && tail.is_none());
    (!plain).then_some((prefix, segment, tail, vm))
}

/// The request's URI with its reference replaced by a full id, when it needs replacing.
fn rewrite(m: &Manager, uri: &Uri) -> Result<Option<Uri>, ApiError> {
    let Some((prefix, segment, tail, vm)) = reference_of(uri.path()) else {
        return Ok(None);
    };
    let reference = crate::util::percent_decode_lossy(segment);
    let resolved = if vm {
        m.resolve_vm(&reference)
    } else {
        m.resolve_snapshot(&reference)
    };
    let id = match resolved {
        Ok(id) => id,
        Err(e) if e.code() == "ambiguous_reference" => return Err(e.into()),
        Err(_) => return Ok(None),
    };
    let mut out = format!("{prefix}{id}");
    if let Some(t) = tail {
        out.push('/');
        out.push_str(t);
    }
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    Ok(out.parse().ok())
}

/// A canonical id (lowercase UUID): looked up as it is, without listing anything.
fn is_full_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

#[cfg(test)]
mod tests {
    use super::is_full_id;

    #[test]
    fn full_ids_are_recognised() {
        assert!(is_full_id("d842e856-1234-4abc-8def-0123456789ab"));
        assert!(!is_full_id("d842e856"));
        assert!(!is_full_id("D842E856-1234-4ABC-8DEF-0123456789AB"));
        assert!(!is_full_id("d842e856x1234-4abc-8def-0123456789ab"));
    }
}
