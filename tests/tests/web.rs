//! Ops surfaces over plain HTTP: the embedded dashboard files (content types, ETags,
//! gzip), Swagger UI and the protocol page under /docs, and `GET /v1/status`.

use std::io::Read;
use std::time::Duration;

use reqwest::header;
use serde_json::json;
use tidegate_tests::{TestServer, WsEvent, assert_problem, eventually};

/// A client that leaves compression to the test (reqwest would decode gzip itself).
fn raw_client() -> reqwest::Client {
    tidegate::tls::client_builder().no_proxy().no_gzip().no_brotli().no_deflate().build().expect("client")
}

fn header_of(resp: &reqwest::Response, name: header::HeaderName) -> String {
    resp.headers().get(&name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_files_are_served_with_types_etags_and_gzip() {
    let server = TestServer::start(|_| {}).await;
    let http = raw_client();

    let index = http.get(server.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(header_of(&index, header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header_of(&index, header::CACHE_CONTROL), "no-cache");
    assert!(header_of(&index, header::CONTENT_SECURITY_POLICY).contains("default-src 'self'"));
    let etag = header_of(&index, header::ETAG);
    assert!(etag.starts_with('"') && etag.ends_with('"'), "strong ETag: {etag}");
    let html = index.text().await.unwrap();
    assert!(html.contains("<script type=\"module\" src=\"/ui/js/app.js\">"), "index.html loads the app");
    assert!(!html.contains("https://") && !html.contains("http://"), "index.html names no outside URL");

    let again = http.get(server.url("/")).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(again.status(), 304, "an unchanged file is not sent again");
    assert_eq!(header_of(&again, header::ETAG), etag);
    assert!(again.bytes().await.unwrap().is_empty());

    for (path, content_type) in [
        ("/ui/js/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
        ("/ui/vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    ] {
        let plain = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(plain.status(), 200, "{path}");
        assert_eq!(header_of(&plain, header::CONTENT_TYPE), content_type, "{path}");
        assert_eq!(header_of(&plain, header::CONTENT_ENCODING), "", "{path} is plain without Accept-Encoding");
        let plain = plain.bytes().await.unwrap();

        let zipped = http.get(server.url(path)).header(header::ACCEPT_ENCODING, "gzip, br").send().await.unwrap();
        assert_eq!(header_of(&zipped, header::CONTENT_ENCODING), "gzip", "{path} is sent gzip");
        assert_eq!(header_of(&zipped, header::VARY), "accept-encoding", "{path}");
        let zipped = zipped.bytes().await.unwrap();
        assert!(zipped.len() < plain.len(), "{path}: gzip is smaller");
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..]).read_to_end(&mut decoded).expect("valid gzip");
        assert_eq!(decoded, plain, "{path}: gzip decodes to the file");
    }

    let missing = http.get(server.url("/ui/nope.js")).send().await.unwrap();
    assert_problem(missing, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_serve_swagger_ui_and_the_protocol_page_without_outside_calls() {
    let server = TestServer::start(|_| {}).await;
    let http = tidegate::tls::client_builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    let redirect = http.get(server.url("/docs")).send().await.unwrap();
    assert_eq!(redirect.status(), 303);
    assert_eq!(header_of(&redirect, header::LOCATION), "/docs/");

    let page = http.get(server.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(header_of(&page, header::CONTENT_TYPE).starts_with("text/html"));
    let page = page.text().await.unwrap();
    assert!(page.contains("swagger-ui-bundle.js"), "Swagger UI's page");
    assert!(!page.contains("https://"), "Swagger UI's page loads nothing from outside");

    let init = http.get(server.url("/docs/swagger-initializer.js")).send().await.unwrap().text().await.unwrap();
    assert!(init.contains(r#""url": "/openapi.json""#), "Swagger UI shows this node's document: {init}");
    assert!(init.contains(r#""validatorUrl": "none""#), "the online validator is off: {init}");

    let bundle = http.get(server.url("/docs/swagger-ui-bundle.js")).send().await.unwrap();
    assert_eq!(bundle.status(), 200, "Swagger UI's JavaScript is served from the binary");

    let doc = server.get_json("/openapi.json").await;
    let description = doc["info"]["description"].as_str().unwrap();
    assert!(description.contains("[/docs/websocket](/docs/websocket)"), "the OpenAPI description links the protocol");

    let protocol = http.get(server.url("/docs/websocket")).send().await.unwrap();
    assert_eq!(protocol.status(), 200);
    assert_eq!(header_of(&protocol, header::CONTENT_TYPE), "text/html; charset=utf-8");
    let protocol = protocol.text().await.unwrap();
    assert!(protocol.contains("<h1>WebSocket subscription protocol</h1>"));
    assert!(protocol.contains("<td>4001</td>"), "close codes table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_this_node() {
    let server = TestServer::start(|_| {}).await;
    server.create_topic("a", 2).await;
    server.create_topic("b", 3).await;
    server.produce("a", &json!([{"n": 1}, {"n": 2}, {"n": 3}])).await;
    let mut sub = server.subscribe("a", "from=earliest").await;
    let mut delivered = 0;
    while delivered < 3 {
        match sub.recv(Duration::from_secs(20)).await {
            Some(WsEvent::Frame(f)) if f["type"] == "records" => delivered += f["records"].as_array().unwrap().len(),
            Some(WsEvent::Frame(_)) => {}
            other => panic!("no records: {other:?}"),
        }
    }

    let status = server.get_json("/v1/status").await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["addr"], server.addr.to_string(), "the real address, not port 0");
    assert_eq!(status["ready"], true);
    assert_eq!(status["topics"], 2);
    assert_eq!(status["partitions"], 5);
    assert_eq!(status["records"], 3);
    assert!(status["bytes"].as_u64().unwrap() > 0);
    assert_eq!(status["subscriptions"], 1);
    assert_eq!(status["max_subscriptions"], 10_000);
    assert_eq!(status["groups"], 0);
    assert_eq!(status["fsync"], "always");
    assert!(status["uptime_ms"].is_u64() && status["started_ms"].as_i64().unwrap() > 1_600_000_000_000);

    // The dashboard's consume rate: delivered records, per topic. The session counts a
    // round once the socket took it, which may be just after the client read it.
    eventually("3 records counted as delivered to topic a", Duration::from_secs(10), || async {
        let count = server.metric("tidegate_records_delivered_total{topic=\"a\"}").await?;
        (count >= 3.0).then_some(())
    })
    .await;
    sub.close().await;
}
