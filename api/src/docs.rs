//! API documentation served by the node itself, with no outside calls at run time:
//! Swagger UI at `/docs/` for `/openapi.json` (the vendored Swagger UI bundled into
//! the binary, its online validator turned off), and the WebSocket protocol at
//! `/docs/websocket`, rendered from `docs/websocket.md` (the one source of that
//! protocol's documentation, embedded at compile time).
//!
//! These routes are public, like the dashboard's.

use std::sync::OnceLock;

use axum::Router;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::web::StaticFile;

/// The WebSocket protocol document (Markdown).
pub const WEBSOCKET_MD: &str = include_str!("../../docs/websocket.md");

/// Where the rendered protocol page is served.
pub const WEBSOCKET_PATH: &str = "/docs/websocket";

/// Renders Markdown (with tables) to an HTML fragment.
fn markdown_html(text: &str) -> String {
    let parser = pulldown_cmark::Parser::new_ext(text, pulldown_cmark::Options::ENABLE_TABLES);
    let mut html = String::with_capacity(text.len() * 2);
    pulldown_cmark::html::push_html(&mut html, parser);
    html
}

/// The protocol page: the rendered document in a small, self-contained page that
/// links back to Swagger UI and the dashboard.
pub fn websocket_page() -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Tidegate · WebSocket protocol</title>
<link rel="icon" href="/ui/favicon.svg" type="image/svg+xml">
<style>
:root {{ --fg:#1d2430; --muted:#5b6576; --bg:#f7f8fa; --card:#fff; --line:#e2e6ec; --accent:#0a7ea4; --code:#eef1f5; }}
@media (prefers-color-scheme: dark) {{
  :root {{ --fg:#e4e8ee; --muted:#9aa4b2; --bg:#11151b; --card:#181d25; --line:#2a313c; --accent:#4cc3e6; --code:#222934; }}
}}
body {{ margin:0; font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }}
header {{ display:flex; gap:1.2rem; align-items:center; flex-wrap:wrap; padding:.8rem 1.2rem; background:var(--card); border-bottom:1px solid var(--line); }}
header strong {{ font-size:1.05rem; }}
header a {{ color:var(--accent); text-decoration:none; }}
main {{ max-width:920px; margin:0 auto; padding:1rem 1.2rem 3rem; }}
h1,h2 {{ line-height:1.25; }} h2 {{ margin-top:2rem; border-bottom:1px solid var(--line); padding-bottom:.3rem; }}
code {{ font:13px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; background:var(--code); padding:.1em .3em; border-radius:4px; }}
pre {{ background:var(--code); padding:.8rem 1rem; border-radius:8px; overflow-x:auto; }}
pre code {{ padding:0; background:none; }}
table {{ border-collapse:collapse; width:100%; display:block; overflow-x:auto; }}
th,td {{ border:1px solid var(--line); padding:.4rem .6rem; text-align:left; vertical-align:top; }}
th {{ background:var(--code); }}
a {{ color:var(--accent); }}
</style>
</head>
<body>
<header><strong>Tidegate API</strong><a href="/docs/">REST (OpenAPI)</a><a href="{WEBSOCKET_PATH}">WebSocket protocol</a><a href="/openapi.json">openapi.json</a><a href="/">Dashboard</a></header>
<main>
{}
</main>
</body>
</html>
"#,
        markdown_html(WEBSOCKET_MD)
    )
}

async fn websocket(request: HeaderMap) -> Response {
    static PAGE: OnceLock<StaticFile> = OnceLock::new();
    PAGE.get_or_init(|| StaticFile::new("text/html; charset=utf-8", websocket_page().into_bytes()).with_csp())
        .respond(&request)
}

/// `/docs` (redirects to `/docs/`), Swagger UI below it, and the protocol page.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // Only the existing /openapi.json is named, so Swagger UI adds no route of its own
    // for the document; "none" turns off the call to swagger.io's online validator.
    let config = Config::new(["/openapi.json"]).validator_url("none").use_base_layout();
    Router::from(SwaggerUi::new("/docs").config(config)).route(WEBSOCKET_PATH, get(websocket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_page_renders_every_section_and_table() {
        let page = websocket_page();
        for heading in ["Query parameters", "Server → client", "Client → server", "Close codes", "Flow control"] {
            assert!(page.contains(&format!("<h2>{heading}</h2>")), "section {heading:?} missing");
        }
        assert!(page.contains("<table>") && page.contains("<td><code>group</code></td>"), "tables render");
        assert!(!page.contains("src=\"http"), "the page loads nothing from outside the node");
    }
}
