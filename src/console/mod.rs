//! The web console (docs/console.md): a static page, its script and its style sheet,
//! embedded in the binary and served by the admin server at `/`. Everything it shows and
//! changes goes through the admin API (`/v1/`), signed in with a session cookie
//! ([`crate::admin`]'s `POST /v1/session`); it has no endpoint of its own.
//!
//! The page runs under a strict Content-Security-Policy: its own script and style only (no
//! inline code, nothing from elsewhere), no framing, no form posted off the origin. The
//! script builds the page from API data with text nodes only, so a host, path or policy
//! name a workload chose is never read as markup.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/index.html"),
};

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/app.css"),
    },
];

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// `/` and `/console/{file}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { serve(&INDEX) }))
        .route("/console/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => serve(asset),
        None => (StatusCode::NOT_FOUND, "no such console file\n").into_response(),
    }
}

fn serve(asset: &Asset) -> Response {
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    let mut set = |name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(header::CONTENT_TYPE, asset.content_type);
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "no-referrer");
    // The assets change with the binary: always revalidate, never serve a stale script.
    set(header::CACHE_CONTROL, "no-cache");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        // No inline script or style (the CSP forbids them) and nothing from another origin.
        let page = INDEX.body;
        assert!(!page.contains("<script>"), "inline script");
        assert!(!page.contains("<style"), "inline style");
        assert!(!page.contains(" style="), "inline style attribute");
        let handler = page.match_indices(" on").any(|(at, _)| {
            let rest = &page[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        // Nothing is loaded from elsewhere (an example URL in a placeholder is only text).
        for asset in std::iter::once(&INDEX).chain(ASSETS) {
            for load in [
                "src=\"http",
                "href=\"http",
                "fetch(\"http",
                "fetch(`http",
                "url(http",
                "import \"http",
            ] {
                assert!(!asset.body.contains(load), "{} loads {load}…", asset.name);
            }
        }
        assert!(page.contains("/console/app.js") && page.contains("/console/app.css"));
    }

    #[test]
    fn the_script_never_parses_api_data_as_markup() {
        let script = ASSETS.iter().find(|a| a.name == "app.js").unwrap().body;
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "app.js uses {sink}");
        }
    }
}
