//! The dashboard's files, embedded in the binary at build time (`crates/skein-control/ui/`),
//! and the headers every `/ui/` response carries.
//!
//! The pages are hand-written HTML, CSS and JavaScript modules, with no build step, so
//! the Rust build needs no JavaScript toolchain (docs/ARCHITECTURE.md, "The dashboard").
//! Every response says: load nothing from another host, run no inline script, be framed
//! by no page (`Content-Security-Policy`), guess no content type, send a referrer only to
//! this origin (`same-origin`: with `no-referrer`, browsers send a form's `Origin` as
//! `null`, and the login form could not show where it came from).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The login page; `<!--error-->` is where a refusal goes.
pub const LOGIN_HTML: &str = include_str!("../../ui/login.html");
/// The dashboard's one page.
pub const INDEX_HTML: &str = include_str!("../../ui/index.html");

/// Every file under `/ui/assets/` (and the login page's stylesheet): name, content type,
/// bytes. The vendored libraries (`ui/vendor/`, where their README says where each came
/// from and its licence) are served under the same flat names.
const FILES: &[(&str, &str, &str)] = &[
    ("login.css", CSS, include_str!("../../ui/login.css")),
    ("app.css", CSS, include_str!("../../ui/app.css")),
    ("app.js", JS, include_str!("../../ui/app.js")),
    ("common.js", JS, include_str!("../../ui/common.js")),
    ("overview.js", JS, include_str!("../../ui/overview.js")),
    ("map.js", JS, include_str!("../../ui/map.js")),
    ("canaries.js", JS, include_str!("../../ui/canaries.js")),
    ("tap.js", JS, include_str!("../../ui/tap.js")),
    ("traces.js", JS, include_str!("../../ui/traces.js")),
    ("service.js", JS, include_str!("../../ui/service.js")),
    ("policies.js", JS, include_str!("../../ui/policies.js")),
    ("dagre.js", JS, include_str!("../../ui/vendor/dagre.js")),
    ("uplot.js", JS, include_str!("../../ui/vendor/uplot.js")),
    ("uplot.css", CSS, include_str!("../../ui/vendor/uplot.css")),
];

const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// What the browser may load and run for a `/ui/` page: only this origin's files.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `response` with the headers every `/ui/` response carries.
pub fn harden(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// An HTML page.
pub fn html(status: StatusCode, body: String) -> Response {
    harden(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

/// The embedded file `name`, or 404 saying which exist.
pub fn serve(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => {
            harden((StatusCode::OK, [(header::CONTENT_TYPE, *kind)], *body).into_response())
        }
        None => harden(
            (
                StatusCode::NOT_FOUND,
                format!(
                    "no dashboard file {name:?}; the dashboard has: {}\n",
                    FILES
                        .iter()
                        .map(|(n, _, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
                .into_response(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files copied from other projects, whose text is theirs.
    const VENDORED: &[&str] = &["dagre.js", "uplot.js", "uplot.css"];

    #[test]
    fn pages_load_only_this_origins_files() {
        for page in [LOGIN_HTML, INDEX_HTML] {
            assert!(
                !page.contains("http://") && !page.contains("https://"),
                "no other host"
            );
            assert!(
                !page.contains("<script>"),
                "no inline script (the CSP refuses it)"
            );
            assert!(
                !page.contains("style="),
                "no inline style (the CSP refuses it)"
            );
        }
        // Our own files name no other host (the SVG namespace is a name, not a place);
        // the vendored ones carry links in comments only, and the CSP would refuse any
        // request they made.
        for (name, _, body) in FILES.iter().filter(|(n, _, _)| !VENDORED.contains(n)) {
            let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{name} names another host"
            );
        }
        // Every module a page imports is served.
        for (name, _, body) in FILES {
            for import in body.split("from \"./").skip(1) {
                let file = import.split('"').next().unwrap();
                assert!(
                    FILES.iter().any(|(n, _, _)| *n == file),
                    "{name} imports {file}, which is not served"
                );
            }
        }
        let r = serve("app.js");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let missing = serve("../Cargo.toml");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
