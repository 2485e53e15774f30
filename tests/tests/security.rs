//! Security through the real interfaces: JWT checks (every algorithm, expiry, audience,
//! issuer, wrong keys, `alg: none`, HS/RS key confusion, JWKS reload), permissions per
//! topic and action over HTTP, WebSocket and SSE, write keys, CORS, rate limits,
//! trusted proxies, token expiry during a subscription, the non-loopback bind refusal,
//! TLS, and refusals counted in `/metrics` and logged without secrets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tidegate_tests::{
    Api, ProcessServer, STARTUP_DEADLINE, SelfSigned, TestServer, TlsGateway, assert_problem, eventually,
    read_until_closed,
};

const SECRET: &str = "test-hmac-secret-that-is-long-enough-32+";
const WAIT: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/keys")).join(name)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture key")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims valid for an hour with `permissions`.
fn claims(permissions: Value) -> Value {
    json!({"sub": "tester", "exp": now() + 3600, "permissions": permissions})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec_private.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed_private.pem")).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, None, claims)
}

fn admin_token() -> String {
    hs(&claims(json!(["admin"])))
}

/// An unsigned token (`alg: none`).
fn unsigned(claims: &Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(claims))
}

/// Every key kind at once: HS256 secret, RS256, ES256 and EdDSA public key files.
fn all_keys() -> String {
    json!([
        {"alg": "HS256", "secret": SECRET},
        {"alg": "RS256", "public_key_file": fixture("rsa_public.pem")},
        {"alg": "ES256", "public_key_file": fixture("ec_public.pem")},
        {"alg": "EdDSA", "public_key_file": fixture("ed_public.pem")},
    ])
    .to_string()
}

async fn secured(tweak: impl FnOnce(&mut tidegate_tests::Config)) -> TestServer {
    TestServer::start(|c| {
        c.jwt_keys = all_keys().parse().unwrap();
        tweak(c);
    })
    .await
}

async fn get_with(api: &Api, path: &str, token: &str) -> reqwest::Response {
    api.get(path).bearer_auth(token).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_every_algorithm_are_verified_and_bad_ones_refused() {
    let server = secured(|c| c.jwt_leeway_s = 5).await;
    let admin = server.api().with_token(&admin_token());
    admin.create_topic("web.clicks", 1).await;
    let perms = json!(["produce:web.*", "consume:web.*"]);
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let api = server.api().with_token(&sign(alg, None, &claims(perms.clone())));
        let offsets = api.produce("web.clicks", &json!({"alg": format!("{alg:?}")})).await;
        assert_eq!(offsets.len(), 1, "{alg:?}");
        let read = api.fetch("web.clicks", 0, offsets[0].1, 1).await;
        assert_eq!(read["records"][0]["value"]["alg"], format!("{alg:?}"));
    }
    let path = "/v1/topics/web.clicks/partitions/0/records?offset=0";

    let resp = server.get(path).send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_problem(resp, 401, "unauthorized").await;

    let resp = get_with(&server, path, "not-a-jwt").await;
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert_problem(resp, 401, "invalid_token").await;

    // Two Authorization (or X-Write-Key) headers: neither is taken, even when one is good.
    let good = format!("Bearer {}", hs(&claims(perms.clone())));
    for (name, first, second) in
        [("authorization", good.as_str(), "Bearer not-a-jwt"), ("x-write-key", "pk_shop", "pk_shop")]
    {
        let resp = server.get(path).header(name, first).header(name, second).send().await.unwrap();
        let p = assert_problem(resp, 401, "invalid_token").await;
        assert!(p["detail"].as_str().unwrap().contains("not several"), "{p}");
    }
    let resp =
        server.get(path).header("authorization", reqwest::header::HeaderValue::from_bytes(b"Bearer \xff").unwrap());
    assert_problem(resp.send().await.unwrap(), 401, "invalid_token").await;

    let expired = json!({"exp": now() - 60, "permissions": perms});
    assert_problem(get_with(&server, path, &hs(&expired)).await, 401, "token_expired").await;
    let early = json!({"exp": now() + 3600, "nbf": now() + 600, "permissions": perms});
    assert_problem(get_with(&server, path, &hs(&early)).await, 401, "token_not_yet_valid").await;
    let no_exp = json!({"permissions": perms});
    let p = assert_problem(get_with(&server, path, &hs(&no_exp)).await, 401, "invalid_token").await;
    assert!(p["detail"].as_str().unwrap().contains("exp"), "{p}");

    let other_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(perms.clone()),
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-too!"),
    )
    .unwrap();
    assert_problem(get_with(&server, path, &other_secret).await, 401, "invalid_token").await;
    assert_problem(get_with(&server, path, &unsigned(&claims(perms.clone()))).await, 401, "invalid_token").await;
    // A token for an algorithm that has no key (RS384) is refused before any check.
    let mut wrong_alg = sign(Algorithm::RS256, None, &claims(perms.clone()));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let rest = wrong_alg.split_once('.').unwrap().1.to_string();
    wrong_alg = format!("{}.{rest}", b64.encode(json!({"alg": "RS384", "typ": "JWT"}).to_string()));
    assert_problem(get_with(&server, path, &wrong_alg).await, 401, "invalid_token").await;

    // Query-string tokens are for WebSocket and SSE; WebSocket refusals are problems too.
    server.subscribe_refused("web.clicks", "", 401, "unauthorized").await;
    server.subscribe_refused("web.clicks", &format!("access_token={}", hs(&expired)), 401, "token_expired").await;
    let sse = server.get("/v1/topics/web.clicks/stream").send().await.unwrap();
    assert_problem(sse, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_issuer_and_key_confusion() {
    let server = TestServer::start(|c| {
        c.jwt_keys =
            json!([{"alg": "RS256", "public_key_file": fixture("rsa_public.pem")}]).to_string().parse().unwrap();
        c.jwt_audience = "tidegate".parse().unwrap();
        c.jwt_issuer = "https://auth.example".parse().unwrap();
    })
    .await;
    let base = |extra: Value| {
        let mut c = json!({"exp": now() + 600, "permissions": ["consume:*"]});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let good = sign(Algorithm::RS256, None, &base(json!({"aud": "tidegate", "iss": "https://auth.example"})));
    let resp = get_with(&server, "/v1/topics", &good).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let wrong_aud = sign(Algorithm::RS256, None, &base(json!({"aud": "other", "iss": "https://auth.example"})));
    assert_problem(get_with(&server, "/v1/topics", &wrong_aud).await, 401, "invalid_audience").await;
    let no_aud = sign(Algorithm::RS256, None, &base(json!({"iss": "https://auth.example"})));
    assert_problem(get_with(&server, "/v1/topics", &no_aud).await, 401, "invalid_token").await;
    let wrong_iss = sign(Algorithm::RS256, None, &base(json!({"aud": "tidegate", "iss": "https://evil.example"})));
    assert_problem(get_with(&server, "/v1/topics", &wrong_iss).await, 401, "invalid_issuer").await;
    let no_iss = sign(Algorithm::RS256, None, &base(json!({"aud": "tidegate"})));
    let p = assert_problem(get_with(&server, "/v1/topics", &no_iss).await, 401, "invalid_token").await;
    assert!(p["detail"].as_str().unwrap().contains("iss"), "{p}");
    // The same checks hold for subscriptions, whose token comes in the query.
    server.subscribe_refused("t", &format!("access_token={wrong_aud}"), 401, "invalid_audience").await;
    let sse = server.get(&format!("/v1/topics/t/stream?access_token={no_iss}")).send().await.unwrap();
    assert_problem(sse, 401, "invalid_token").await;

    // HS256 "signed" with the RSA public key as the HMAC secret: the classic confusion.
    let public = pem("rsa_public.pem");
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &base(json!({"aud": "tidegate", "iss": "https://auth.example"})),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_problem(get_with(&server, "/v1/topics", &confused).await, 401, "invalid_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_is_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let jwk = |alg: Algorithm, private: &str, kid: &str| {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem(private)).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem(private)).unwrap(),
        };
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        json!({"keys": [jwk]}).to_string()
    };
    std::fs::write(&jwks, jwk(Algorithm::RS256, "rsa_private.pem", "k1")).unwrap();
    let server = TestServer::start(|c| {
        c.jwks_file = jwks.clone();
        c.jwks_reload_interval_ms = 50;
    })
    .await;
    let perms = claims(json!(["consume:*"]));
    let rs = sign(Algorithm::RS256, Some("k1"), &perms);
    let es = sign(Algorithm::ES256, Some("k2"), &perms);
    assert_eq!(get_with(&server, "/v1/topics", &rs).await.status(), 200);
    assert_problem(get_with(&server, "/v1/topics", &es).await, 401, "invalid_token").await;

    std::fs::write(&jwks, jwk(Algorithm::ES256, "ec_private.pem", "k2")).unwrap();
    eventually("the new JWKS key to be accepted", WAIT, || async {
        (get_with(&server, "/v1/topics", &es).await.status() == 200).then_some(())
    })
    .await;
    assert_problem(get_with(&server, "/v1/topics", &rs).await, 401, "invalid_token").await;

    // A broken file keeps the keys that were loaded.
    std::fs::write(&jwks, "{not json").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_with(&server, "/v1/topics", &es).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_checked_per_topic_and_action() {
    let server = secured(|_| {}).await;
    let admin = server.api().with_token(&admin_token());
    admin.create_topic("web.clicks", 2).await;
    admin.create_topic("orders", 2).await;
    let producer = server.api().with_token(&hs(&claims(json!(["produce:web.*"]))));
    let consumer = server.api().with_token(&hs(&claims(json!({"consume": ["orders"]}))));
    let web_reader = server.api().with_token(&hs(&claims(json!({"consume": ["web.*"]}))));

    // produce only where granted
    producer.produce("web.clicks", &json!({"n": 1})).await;
    let resp = producer.post("/v1/topics/orders/events").json(&json!({"n": 1})).send().await.unwrap();
    assert_problem(resp, 403, "forbidden").await;
    let resp = consumer.post("/v1/topics/orders/events").json(&json!({"n": 1})).send().await.unwrap();
    assert_problem(resp, 403, "forbidden").await;
    admin.produce("orders", &json!({"n": 1})).await;

    // consume only where granted: HTTP, WebSocket and SSE
    let resp = producer.get("/v1/topics/web.clicks/partitions/0/records?offset=0").send().await.unwrap();
    assert_problem(resp, 403, "forbidden").await;
    producer.subscribe_refused("web.clicks", "", 403, "forbidden").await;
    assert_problem(producer.get("/v1/topics/web.clicks/stream").send().await.unwrap(), 403, "forbidden").await;
    assert_eq!(consumer.get("/v1/topics/orders/partitions/0/records?offset=0").send().await.unwrap().status(), 200);
    assert_eq!(consumer.get("/v1/topics/orders/offsets").send().await.unwrap().status(), 200);
    consumer.subscribe_refused("orders", "topics=web.clicks", 403, "forbidden").await;

    // admin actions
    let resp = producer.post("/v1/topics").json(&json!({"name": "web.new", "partitions": 1})).send().await.unwrap();
    assert_problem(resp, 403, "forbidden").await;
    let resp = consumer.http.delete(consumer.url("/v1/topics/orders")).send().await.unwrap();
    assert_problem(resp, 403, "forbidden").await;
    let resp = consumer.http.patch(consumer.url("/v1/topics/orders")).json(&json!({"retention_ms": 1000})).send().await;
    assert_problem(resp.unwrap(), 403, "forbidden").await;
    assert_problem(consumer.get("/metrics").send().await.unwrap(), 403, "forbidden").await;
    let scoped_admin = server.api().with_token(&hs(&claims(json!(["admin:web.*"]))));
    let resp = scoped_admin.post("/v1/topics").json(&json!({"name": "web.new", "partitions": 1})).send().await;
    assert_eq!(resp.unwrap().status(), 201);
    // Growing a topic is admin work on it; so is naming (maybe creating) a dead-letter topic.
    let grow = |topic: &str| scoped_admin.post(&format!("/v1/topics/{topic}/partitions")).json(&json!({"count": 3}));
    assert_problem(grow("orders").send().await.unwrap(), 403, "forbidden").await;
    assert_eq!(grow("web.new").send().await.unwrap().status(), 200);
    let schema = json!({"type": "object", "required": ["n"]});
    let dead_lettered =
        json!({"name": "web.strict", "partitions": 1, "schema": schema, "dead_letter_topic": "orders.dead"});
    assert_problem(scoped_admin.post("/v1/topics").json(&dead_lettered).send().await.unwrap(), 403, "forbidden").await;
    let resp = scoped_admin
        .http
        .patch(scoped_admin.url("/v1/topics/web.new"))
        .json(&json!({"schema": schema, "dead_letter_topic": "orders.dead"}));
    assert_problem(resp.send().await.unwrap(), 403, "forbidden").await;
    assert!(
        admin.get_json("/v1/topics/web.new").await["dead_letter_topic"].is_null(),
        "the refused change left no trace"
    );
    // Segment calls need produce on the topic each event maps to (segment.track here).
    let track = json!({"userId": "u", "event": "Clicked"});
    assert_problem(producer.post("/v1/track").json(&track).send().await.unwrap(), 403, "forbidden").await;
    let segment_writer = server.api().with_token(&hs(&claims(json!(["produce:segment.*"]))));
    assert_eq!(segment_writer.post("/v1/track").json(&track).send().await.unwrap().status(), 200);
    assert_problem(scoped_admin.get("/metrics").send().await.unwrap(), 403, "forbidden").await;
    // Node status covers every topic and names host paths: admin on `*` only.
    for caller in [&consumer, &producer, &scoped_admin] {
        assert_problem(caller.get("/v1/status").send().await.unwrap(), 403, "forbidden").await;
    }
    assert_eq!(admin.get_json("/v1/status").await["topics"], 4);
    // A token in the URL is taken only by subscriptions (WebSocket and SSE); elsewhere
    // it is refused, not ignored, so the caller learns to send the header.
    let resp = server.get(&format!("/v1/topics?access_token={}", admin_token())).send().await.unwrap();
    let p = assert_problem(resp, 401, "invalid_token").await;
    assert!(p["detail"].as_str().unwrap().contains("Authorization: Bearer"), "{p}");
    for page in ["/", "/docs/", "/docs/websocket"] {
        let resp = server.get(&format!("{page}?access_token={}", admin_token())).send().await.unwrap();
        assert_problem(resp, 401, "invalid_token").await;
        assert_eq!(server.get(page).send().await.unwrap().status(), 200, "{page} is public");
    }
    let resp = server.get(&format!("/v1/topics/orders/stream?access_token={}", admin_token())).send().await.unwrap();
    assert_eq!(resp.status(), 200, "SSE takes the query token");
    drop(resp);

    // listings show what the caller may see
    let names = |v: Value| -> Vec<String> {
        v["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(consumer.get_json("/v1/topics").await), vec!["orders"]);
    assert_eq!(
        names(admin.get_json("/v1/topics").await),
        vec!["orders", "segment.track", "web.clicks", "web.new"],
        "refused requests created no topic (web.strict, orders.dead)"
    );
    assert_problem(consumer.get("/v1/topics/web.clicks").send().await.unwrap(), 403, "forbidden").await;

    // groups: consume on the group's topics
    let mut member = consumer.subscribe("orders", "group=billing&from=earliest").await;
    let assignment = member.next_frame(WAIT).await;
    assert_eq!(assignment["type"], "assignment", "{assignment}");
    assert_eq!(consumer.get_json("/v1/groups/billing").await["group"], "billing");
    let listed = |v: Value| v["groups"].as_array().unwrap().iter().any(|g| g["group"] == "billing");
    assert!(listed(consumer.get_json("/v1/groups").await));
    assert!(!listed(web_reader.get_json("/v1/groups").await));
    // A group the caller may not see does not exist for it (no leak of group names).
    assert_problem(web_reader.get("/v1/groups/billing").send().await.unwrap(), 404, "group_not_found").await;
    let reset = json!({"topic": "orders", "to": "earliest", "force": true});
    let resp = web_reader.post("/v1/groups/billing/reset").json(&reset).send().await.unwrap();
    assert_problem(resp, 404, "group_not_found").await;
    // The same answer for a group that does not exist: a reset cannot probe names.
    let resp = web_reader.post("/v1/groups/no-such-group/reset").json(&reset).send().await.unwrap();
    assert_problem(resp, 404, "group_not_found").await;
    // Nor can it add a topic it may read to the group (which would lock the group's
    // own members out: they may not consume that topic).
    let hijack = json!({"topic": "web.clicks", "to": "earliest", "force": true});
    let resp = web_reader.post("/v1/groups/billing/reset").json(&hijack).send().await.unwrap();
    assert_problem(resp, 404, "group_not_found").await;
    assert_eq!(consumer.get_json("/v1/groups/billing").await["group"], "billing", "the members still see their group");
    let resp = web_reader.http.delete(web_reader.url("/v1/groups/billing?force=true")).send().await.unwrap();
    assert_problem(resp, 404, "group_not_found").await;
    // Nor can it join the group through a topic it may read: the group holds `orders`.
    web_reader.subscribe_refused("web.clicks", "group=billing&member=m1", 404, "group_not_found").await;
    while let Some(tidegate_tests::WsEvent::Frame(f)) = member.recv(Duration::from_millis(300)).await {
        // (The first assignment of generation 1 may come in two frames: the generation,
        // then its partitions.)
        let rebalanced = f["type"] == "revoked" || (f["type"] == "assignment" && f["generation"] != json!(1));
        assert!(!rebalanced, "no rebalance happened: {f}");
    }
    assert_eq!(consumer.post("/v1/groups/billing/reset").json(&reset).send().await.unwrap().status(), 200);
    member.close().await;

    // public endpoints stay public; everything else needs credentials
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(server.get(path).send().await.unwrap().status(), 200, "{path}");
    }
    assert_problem(server.get("/v1/topics").send().await.unwrap(), 401, "unauthorized").await;
    assert_problem(server.get("/v1/groups").send().await.unwrap(), 401, "unauthorized").await;
    assert_problem(server.get("/metrics").send().await.unwrap(), 401, "unauthorized").await;
    let metrics = admin.get("/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tidegate_auth_refused_total{reason=\"forbidden\"}"), "{metrics}");
    // The label is the answer's code, and the refusals are counted by route.
    assert!(metrics.contains("tidegate_auth_refused_total{reason=\"unauthorized\"}"), "{metrics}");
    let refused = tidegate_tests::has_request_series(&metrics, "/v1/topics", "GET", 401);
    assert!(refused, "the 401s above are counted:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_serves_metrics_to_anyone_and_nothing_else() {
    let server = secured(|c| c.public_metrics = true).await;
    let resp = server.get("/metrics").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("tidegate_request_memory_limit_bytes"));
    assert_problem(server.get("/v1/topics").send().await.unwrap(), 401, "unauthorized").await;
    assert_problem(server.get("/v1/status").send().await.unwrap(), 401, "unauthorized").await;
    let closed = secured(|_| {}).await;
    assert_problem(closed.get("/metrics").send().await.unwrap(), 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_route_refuses_callers_without_credentials() {
    let server = secured(|_| {}).await;
    let doc: Value = server.get_json("/openapi.json").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let concrete = path
                .replace("{topic}", "t")
                .replace("{group}", "g")
                .replace("{partition}", "0")
                .replace("{call}", "track")
                .replace("{write_key}", "pk_unknown");
            let req = match method.as_str() {
                "get" => server.get(&concrete),
                "post" if path == "/v1/{call}" => {
                    server.post(&concrete).json(&json!({"type": "track", "event": "e", "userId": "u"}))
                }
                "post" => server.post(&concrete).json(&json!({"name": "t", "topic": "t", "count": 2})),
                "put" => server.http.put(server.url(&concrete)).json(&json!({})),
                "patch" => server.http.patch(server.url(&concrete)).json(&json!({})),
                "delete" => server.http.delete(server.url(&concrete)),
                _ => continue,
            };
            let status = req.send().await.unwrap().status().as_u16();
            if op.get("security").is_some() {
                assert_eq!(status, 401, "{method} {path} answered {status} without credentials");
                checked += 1;
            } else {
                assert_ne!(status, 401, "{method} {path} is documented as public");
            }
        }
    }
    assert!(checked >= 15, "only {checked} protected operations found");
}

fn write_keys() -> String {
    json!([
        {"key": "pk_shop", "topics": ["web.*"], "origins": ["https://shop.example", "https://*.shop.example"]},
        {"key": "pk_server", "topics": ["server.events"]},
    ])
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_produce_only_to_their_topics_from_their_origins() {
    let server = secured(|c| c.write_keys = write_keys().parse().unwrap()).await;
    let admin = server.api().with_token(&admin_token());
    for t in ["web.clicks", "orders", "server.events"] {
        admin.create_topic(t, 1).await;
    }
    let post = |path: &str, origin: Option<&str>| {
        let mut req = server.post(path).header("content-type", "text/plain").body(r#"{"page":"/"}"#);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req
    };
    let shop = Some("https://shop.example");
    let mut accepted = 0;
    for req in [
        post("/v1/topics/web.clicks/events?key=pk_shop", shop),
        post("/v1/topics/web.clicks/events", Some("https://m.shop.example")).header("x-write-key", "pk_shop"),
        post("/v1/topics/web.clicks/events", shop).basic_auth("pk_shop", None::<&str>),
        server
            .post("/v1/topics/web.clicks/events")
            .header("origin", "https://shop.example")
            .header("content-type", "text/plain")
            .body(r#"{"writeKey":"pk_shop","page":"/body"}"#),
        server
            .post("/v1/topics/web.clicks/events")
            .header("origin", "https://shop.example")
            .json(&json!({"writeKey": "pk_shop", "records": [{"value": {"page": "/env"}}]})),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        accepted += 1;
    }
    let refused = [
        (post("/v1/topics/web.clicks/events?key=pk_shop", Some("https://evil.example")), 403, "origin_not_allowed"),
        (
            post("/v1/topics/web.clicks/events?key=pk_shop", Some("https://shop.example.evil.net")),
            403,
            "origin_not_allowed",
        ),
        (post("/v1/topics/web.clicks/events?key=pk_shop", None), 403, "origin_not_allowed"),
        (post("/v1/topics/orders/events?key=pk_shop", shop), 403, "forbidden"),
        (post("/v1/topics/web.clicks/events?key=pk_nope", shop), 401, "invalid_write_key"),
        (post("/v1/topics/web.clicks/events", shop), 401, "unauthorized"),
        (
            server
                .get("/v1/topics/web.clicks/partitions/0/records?offset=0&key=pk_shop")
                .header("origin", "https://shop.example"),
            403,
            "forbidden",
        ),
        (server.get("/v1/topics?key=pk_shop"), 403, "forbidden"),
        // analytics.js settings exist only for configured keys while authentication is on.
        (server.get("/v1/projects/pk_nope/settings"), 404, "write_key_not_found"),
    ];
    for (req, status, code) in refused {
        assert_problem(req.send().await.unwrap(), status, code).await;
    }
    let settings = server.get("/v1/projects/pk_shop/settings").send().await.unwrap();
    assert_eq!(settings.status(), 200);
    // A key without origins works from servers (no Origin header).
    let resp = post("/v1/topics/server.events/events?key=pk_server", None).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Exactly the accepted events were stored.
    let stored = admin.read_all("web.clicks", 0).await;
    assert_eq!(stored.len(), accepted, "{stored:?}");
    let pages: Vec<&str> = stored.iter().filter_map(|r| r["value"]["page"].as_str()).collect();
    assert!(pages.contains(&"/body") && pages.contains(&"/env"), "{pages:?}");
    // The key in the body is the request's credential, not a field of the event, also
    // for the topic's schema (which may forbid other fields).
    let from_body = stored.iter().find(|r| r["value"]["page"] == "/body").unwrap();
    assert_eq!(from_body["value"], json!({"page": "/body"}), "{from_body}");
    let closed = json!({"schema": {"additionalProperties": false, "properties": {"page": {}}}});
    let resp = admin.http.patch(admin.url("/v1/topics/web.clicks")).json(&closed).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = server
        .post("/v1/topics/web.clicks/events")
        .header("origin", "https://shop.example")
        .header("content-type", "text/plain")
        .body(r#"{"writeKey":"pk_shop","page":"/closed"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_allowed_origins_and_never_echoes_others() {
    let server = secured(|c| {
        c.cors_origins = "https://dash.example, https://*.apps.example".parse().unwrap();
        c.cors_max_age_s = 123;
        c.write_keys = write_keys().parse().unwrap();
    })
    .await;
    let preflight = |origin: &str| {
        server
            .http
            .request(reqwest::Method::OPTIONS, server.url("/v1/topics/web.clicks/events"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,authorization")
            .send()
    };
    for origin in ["https://dash.example", "https://x.apps.example", "https://a.b.apps.example", "https://shop.example"]
    {
        let resp = preflight(origin).await.unwrap();
        assert!(resp.status().is_success(), "{origin}: {}", resp.status());
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert_eq!(h["access-control-max-age"], "123");
        assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
        let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
        assert!(h.get("access-control-allow-credentials").is_none());
    }
    for origin in ["https://evil.example", "https://apps.example", "https://x.apps.example.evil.com", "null"] {
        let resp = preflight(origin).await.unwrap();
        let cors: Vec<_> = resp.headers().keys().filter(|n| n.as_str().starts_with("access-control-")).collect();
        assert!(cors.is_empty(), "{origin} learns nothing of the policy: {cors:?}");
    }
    // Simple requests: allowed origins get the header (with Vary), others nothing.
    let resp = server.get("/healthz").header("origin", "https://dash.example").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://dash.example");
    assert!(resp.headers()["vary"].to_str().unwrap().to_ascii_lowercase().contains("origin"));
    // Every answer names what CORS depends on, once, also without an Origin (caches must
    // not serve it to a page) and on preflights.
    for resp in [server.get("/healthz").send().await.unwrap(), preflight("https://dash.example").await.unwrap()] {
        let vary: Vec<_> = resp.headers().get_all("vary").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(vary, ["origin, access-control-request-method, access-control-request-headers"]);
    }
    let resp = server.get("/v1/topics").header("origin", "https://dash.example").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://dash.example", "refusals carry CORS too");
    let resp = server.get("/healthz").header("origin", "https://evil.example").send().await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    let with_credentials = TestServer::start(|c| {
        c.cors_origins = "https://dash.example".parse().unwrap();
        c.cors_allow_credentials = true;
    })
    .await;
    let resp = with_credentials.get("/healthz").header("origin", "https://dash.example").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    let resp = with_credentials.get("/healthz").header("origin", "https://evil.example").send().await.unwrap();
    assert!(resp.headers().get("access-control-allow-credentials").is_none(), "not for a refused origin");
    // No origins configured at all: no CORS headers.
    let plain = TestServer::with_defaults().await;
    let resp = plain.get("/healthz").header("origin", "https://dash.example").send().await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()["retry-after"].to_str().unwrap().parse().expect("Retry-After is whole seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_and_recover() {
    let server = TestServer::start(|c| {
        c.rate_limit_ip_per_s = 1;
        c.rate_limit_ip_burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(server.get("/v1/topics").send().await.unwrap().status(), 200);
    }
    let resp = server.get("/v1/topics").send().await.unwrap();
    let wait = retry_after(&resp);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let problem = assert_problem(resp, 429, "rate_limited").await;
    assert!(problem["detail"].as_str().unwrap().contains("ip"), "{problem}");
    assert_eq!(server.get("/healthz").send().await.unwrap().status(), 200, "probes are not limited");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(server.get("/v1/topics").send().await.unwrap().status(), 200, "recovered after Retry-After");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.metric("tidegate_rate_limited_total{scope=\"ip\"}").await, Some(1.0));
    // A 429 is answered before routing: it counts as route `unmatched` (one token later).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let limited = "tidegate_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"429\"}";
    assert_eq!(server.metric(limited).await, Some(1.0));

    // Per write key.
    let keyed = secured(|c| {
        c.write_keys = json!([{"key": "pk_burst", "topics": ["*"], "rate_limit_per_s": 1, "rate_limit_burst": 2}])
            .to_string()
            .parse()
            .unwrap();
    })
    .await;
    keyed.api().with_token(&admin_token()).create_topic("web.clicks", 1).await;
    let post = || keyed.post("/v1/topics/web.clicks/events?key=pk_burst").json(&json!({"n": 1})).send();
    assert_eq!(post().await.unwrap().status(), 200);
    assert_eq!(post().await.unwrap().status(), 200);
    let resp = post().await.unwrap();
    let wait = retry_after(&resp);
    assert_problem(resp, 429, "rate_limited").await;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(post().await.unwrap().status(), 200);
    // A Segment batch writing to three topics is one request: one token, not three.
    let wait = retry_after(&post().await.unwrap());
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let batch = json!({"batch": [
        {"type": "track", "event": "Bought", "userId": "u1"},
        {"type": "page", "name": "Home", "userId": "u1"},
        {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
    ]});
    let resp = keyed.post("/v1/batch").basic_auth("pk_burst", Some("")).json(&batch).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let admin = keyed.api().with_token(&admin_token());
    for topic in ["segment.track", "segment.page", "segment.identify"] {
        let ends = admin.end_offsets(topic).await;
        assert_eq!(ends.iter().sum::<u64>(), 1, "{topic}: {ends:?}");
    }
    let resp = keyed.post("/v1/batch").basic_auth("pk_burst", Some("")).json(&batch).send().await.unwrap();
    assert_problem(resp, 429, "rate_limited").await;
    let metrics = keyed.get("/metrics").bearer_auth(admin_token()).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tidegate_rate_limited_total{scope=\"key\"} 3"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let behind_proxy = TestServer::start(|c| {
        c.trusted_proxies = "127.0.0.1/32".parse().unwrap();
        c.rate_limit_ip_per_s = 1;
        c.rate_limit_ip_burst = 1;
    })
    .await;
    let xff = |server: &TestServer, ip: &str| server.get("/v1/topics").header("x-forwarded-for", ip).send();
    assert_eq!(xff(&behind_proxy, "203.0.113.1").await.unwrap().status(), 200);
    assert_problem(xff(&behind_proxy, "203.0.113.1").await.unwrap(), 429, "rate_limited").await;
    assert_eq!(xff(&behind_proxy, "203.0.113.2").await.unwrap().status(), 200, "another client, another bucket");
    // Proxies that add the client's port: still the client's own bucket.
    assert_eq!(xff(&behind_proxy, "203.0.113.3:51234").await.unwrap().status(), 200);
    assert_problem(xff(&behind_proxy, "203.0.113.3:40000").await.unwrap(), 429, "rate_limited").await;
    assert_eq!(xff(&behind_proxy, "[2001:db8::1]:443").await.unwrap().status(), 200, "not the proxy's bucket");
    // The client address of ingested events follows too.
    let spoof = "198.51.100.7";
    let stored_ip = |server: TestServer| async move {
        server.create_topic("ips", 1).await;
        let resp = server.post("/v1/topics/ips/events").header("x-forwarded-for", spoof).json(&json!({"n": 1}));
        assert_eq!(resp.send().await.unwrap().status(), 200);
        let record = server.record_at("ips", 0, 0).await;
        record["headers"]["client-ip"].as_str().unwrap().to_string()
    };
    let trusted = TestServer::start(|c| c.trusted_proxies = "127.0.0.1".parse().unwrap()).await;
    assert_eq!(stored_ip(trusted).await, spoof);
    assert_eq!(stored_ip(TestServer::with_defaults().await).await, "127.0.0.1", "untrusted peers cannot spoof");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_websocket_and_sse_subscriptions() {
    let server = secured(|c| c.jwt_leeway_s = 0).await;
    server.api().with_token(&admin_token()).create_topic("live", 1).await;
    let short = hs(&json!({"exp": now() + 2, "permissions": ["consume:live"]}));
    let api = server.api().with_token(&short);
    let mut sub = api.subscribe("live", "").await;
    assert_eq!(sub.next_frame(WAIT).await["type"], "assignment");
    let (code, reason, frames) = sub.closed(WAIT).await;
    assert_eq!(code, Some(4003), "{reason} {frames:?}");
    assert!(frames.iter().any(|f| f["code"] == "token_expired"), "{frames:?}");

    let short = hs(&json!({"exp": now() + 2, "permissions": ["consume:live"]}));
    let resp = server.get(&format!("/v1/topics/live/stream?access_token={short}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(WAIT, resp.text()).await.expect("the stream ends").unwrap();
    assert!(body.contains("event: error") && body.contains("token_expired"), "{body}");
}

/// Runs `tidegate serve` with `args` in a fresh data directory until it exits or
/// `/readyz` answers on `port`.
async fn run_binary(args: &[&str], port: u16) -> Result<String, (Option<i32>, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_serve(dir.path(), args, std::process::Stdio::piped);
    let api = Api::new(([127, 0, 0, 1], port).into());
    let until = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().await.unwrap();
            return Err((status.code(), String::from_utf8_lossy(&out.stderr).to_string()));
        }
        if let Ok(r) = api.get("/readyz").send().await
            && r.status() == 200
        {
            child.kill().await.unwrap();
            return Ok("ready".into());
        }
        assert!(Instant::now() < until, "neither ready nor exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `tidegate serve --data-dir <data> <args>` with stdout and stderr from `output`.
fn spawn_serve(data: &std::path::Path, args: &[&str], output: fn() -> std::process::Stdio) -> tokio::process::Child {
    tokio::process::Command::new(ProcessServer::binary())
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("TIDEGATE_ADDR")
        .stderr(output())
        .stdout(output())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_bind_without_authentication_is_refused() {
    let port = free_port();
    let addr = format!("0.0.0.0:{port}");
    let (code, stderr) = run_binary(&["--addr", &addr], port).await.expect_err("must refuse to start");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refusing to serve") && stderr.contains("--insecure"), "{stderr}");

    let port = free_port();
    run_binary(&["--addr", &format!("0.0.0.0:{port}"), "--insecure"], port).await.expect("--insecure starts");
    let port = free_port();
    let keys = json!([{"alg": "HS256", "secret": SECRET}]).to_string();
    run_binary(&["--addr", &format!("0.0.0.0:{port}"), "--jwt-keys", &keys], port).await.expect("starts with auth on");

    // The library refuses too.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = tidegate_tests::Config { data_dir: dir.path().into(), ..Default::default() };
    let err = tidegate::serve(config, listener, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("refusing to serve"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_and_logged_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let keys = json!([{"alg": "HS256", "secret": SECRET}]).to_string();
    let server = ProcessServer::start_with_env(dir.path(), &[], &[("TIDEGATE_JWT_KEYS", &keys)]).await;
    let leaked = "eyJhbGciOiJIUzI1NiJ9.eyJzZWNyZXQiOiJsZWFrZWQifQ.c2lnbmF0dXJlLXNob3VsZC1ub3QtbGVhaw";
    let expired = hs(&json!({"exp": now() - 3600, "permissions": ["admin"]}));
    assert_problem(get_with(&server, "/v1/topics", leaked).await, 401, "invalid_token").await;
    assert_problem(get_with(&server, "/v1/topics", &expired).await, 401, "token_expired").await;
    let metrics = get_with(&server, "/metrics", &admin_token()).await.text().await.unwrap();
    assert!(metrics.contains("tidegate_auth_refused_total{reason=\"token_expired\"} 1"), "{metrics}");
    assert!(metrics.contains("tidegate_auth_refused_total{reason=\"invalid_token\"} 1"), "{metrics}");
    let log = server.log();
    assert!(log.contains("request refused"), "{log}");
    for secret in [leaked, expired.as_str(), SECRET] {
        assert!(!log.contains(secret), "the log contains a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_wss_only() {
    let gateway = TlsGateway::start().await;
    let answer = https_readyz(gateway.addr, gateway.cert_der.clone()).await;
    assert!(answer.contains("\"ok\""), "{answer}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = Api::new(gateway.addr).get("/healthz").timeout(Duration::from_secs(5)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    gateway.stop().await;
}

/// Polls `GET /readyz` over TLS (trusting only `cert`) until it answers 200; returns
/// the whole answer.
async fn https_readyz(addr: std::net::SocketAddr, cert: rustls_pki_types::CertificateDer<'static>) -> String {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut client = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Offered as curl and browsers do: the server, which speaks only HTTP/1.1, must
    // not pick h2.
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let https_get = || {
        let connector = connector.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.ok()?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN picked HTTP/1.1");
            tls.write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.ok()?;
            let mut out = String::new();
            tls.read_to_string(&mut out).await.ok()?;
            Some(out)
        }
    };
    eventually("the HTTPS server to answer", STARTUP_DEADLINE, || async {
        https_get().await.filter(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_https_with_the_tls_flags() {
    let files = tempfile::tempdir().unwrap();
    let SelfSigned { cert_path, key_path, cert_der } = SelfSigned::write(files.path());
    let (cert_arg, key_arg) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());

    // One without the other refuses to start.
    let port = free_port();
    let (code, stderr) = run_binary(&["--addr", &format!("127.0.0.1:{port}"), "--tls-cert-file", cert_arg], port)
        .await
        .expect_err("a certificate without its key must refuse to start");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tls_cert_file"), "{stderr}");

    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let addr_arg = format!("127.0.0.1:{port}");
    let tls = ["--addr", &addr_arg, "--tls-cert-file", cert_arg, "--tls-key-file", key_arg];
    let mut child = spawn_serve(data.path(), &tls, std::process::Stdio::null);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let answer = https_readyz(addr, cert_der).await;
    assert!(answer.contains("\"ok\""), "{answer}");
    let plain = Api::new(addr).get("/healthz").timeout(Duration::from_secs(5)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200, "plain HTTP is not served next to HTTPS");
    assert!(child.try_wait().unwrap().is_none(), "the server is still running");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_by_the_cli_are_accepted() {
    let server = secured(|_| {}).await;
    let mint = |args: &[&str]| {
        let out = std::process::Command::new(ProcessServer::binary()).arg("token").args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let hs_admin = mint(&["-p", "admin", "--secret", SECRET]);
    let admin = server.api().with_token(&hs_admin);
    admin.create_topic("cli.tokens", 1).await;
    let rsa = fixture("rsa_private.pem");
    let producer = mint(&["-p", "produce:cli.*", "--alg", "RS256", "--private-key-file", rsa.to_str().unwrap()]);
    server.api().with_token(&producer).produce("cli.tokens", &json!({"n": 1})).await;
    let resp = server.get("/v1/topics/cli.tokens/offsets").bearer_auth(&producer).send().await.unwrap();
    assert_problem(resp, 403, "forbidden").await;
    let out = std::process::Command::new(ProcessServer::binary()).args(["token", "-p", "admin"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an HMAC token without a secret is refused");
    let out = std::process::Command::new(ProcessServer::binary())
        .args(["token", "-p", "admin", "--secret", "short"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a secret the gateway would refuse is refused here too");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"), "{}", String::from_utf8_lossy(&out.stderr));
    // A permission the gateway would read as granting nothing is a mistake, not a token.
    for (permission, says) in [
        ("produc:cli.*", "unknown action"),
        ("produce:", "pattern is empty"),
        ("produce:cli events", "matches no topic"),
    ] {
        let out = std::process::Command::new(ProcessServer::binary())
            .args(["token", "-p", permission, "--secret", SECRET])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!((out.status.code(), stderr.contains(says)), (Some(2), true), "{permission}: {stderr}");
        assert!(out.stdout.is_empty(), "no token is printed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(|c| {
        c.http_header_timeout_ms = 300;
        c.http_body_timeout_ms = 300;
        c.http_body_total_timeout_ms = 1_000;
    })
    .await;
    server.create_topic("t", 1).await;

    // A request head that never ends: the connection is closed, with nothing answered.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed, "a slow request head holds its connection open");
    assert!(!answer.contains("200 OK"), "{answer}");

    // A body that stalls: 408 request_timeout, and nothing is written.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"POST /v1/topics/t/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[1,2")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json") && answer.contains("\"request_timeout\""), "{answer}");
    assert_eq!(server.end_offsets("t").await, vec![0], "a stalled request wrote nothing");

    // A body that never stalls for 300 ms but trickles a byte every 100 ms: cut off once
    // the server has waited 1 s for it in all.
    let mut trickling = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    trickling
        .write_all(b"POST /v1/topics/t/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[")
        .await
        .unwrap();
    let began = Instant::now();
    let mut answer = String::new();
    for _ in 0..50 {
        if trickling.write_all(b" ").await.is_err() {
            break;
        }
        let (got, closed) = read_until_closed(&mut trickling, Duration::from_millis(100)).await;
        answer.push_str(&got);
        if closed || !answer.is_empty() {
            break;
        }
    }
    let took = began.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("http_body_total_timeout_ms"), "{answer}");
    assert!(took >= Duration::from_millis(1_000) && took < Duration::from_secs(4), "cut off after {took:?}");
    assert_eq!(server.end_offsets("t").await, vec![0], "a trickling request wrote nothing");

    // At most max_connections are served: the next client waits until one closes.
    // (The test client's own pooled connection may hold a slot too.)
    let limited = TestServer::start(|c| c.max_connections = 3).await;
    let mut served = Vec::new();
    let mut waiting = None;
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(limited.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_millis(700), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => served.push(tcp),
            Ok(other) => panic!("a connection was closed unanswered: {other:?}"),
            Err(_) => {
                waiting = Some(tcp);
                break;
            }
        }
    }
    let mut waiting = waiting.expect("every one of 4 connections was served with max_connections = 3");
    assert!((2..=3).contains(&served.len()), "{} served before one had to wait", served.len());
    drop(served.pop());
    let (answer, _) = {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), waiting.read(&mut buf)).await.expect("served").unwrap();
        (String::from_utf8_lossy(&buf[..n]).to_string(), ())
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "served once a connection closed: {answer}");
}

/// Without authentication (loopback only), web pages of other sites and DNS-rebound host
/// names are refused: WebSocket upgrades are not subject to CORS and a text/plain POST
/// needs no preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_gateway_refuses_foreign_pages_and_host_names() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::start(|c| c.cors_origins = "https://shop.example".parse().unwrap()).await;
    server.create_topic("t", 1).await;
    let post = |origin: &str| {
        server
            .post("/v1/topics/t/events")
            .header("content-type", "text/plain")
            .header("origin", origin)
            .body(r#"{"a":1}"#)
            .send()
    };
    for origin in ["https://evil.example", "null", "http://localhost.evil.example"] {
        assert_problem(post(origin).await.unwrap(), 403, "origin_not_allowed").await;
    }
    assert_eq!(server.end_offsets("t").await, vec![0], "a refused page wrote nothing");
    for origin in ["https://shop.example", "http://localhost:3000", &format!("http://{}", server.addr)] {
        assert_eq!(post(origin).await.unwrap().status(), 200, "{origin}");
    }
    let rebound = server.get("/v1/topics").header("host", "attacker.example:8080").send().await.unwrap();
    assert_problem(rebound, 403, "host_not_allowed").await;
    let local = server.get("/v1/topics").header("host", "localhost:8080").send().await.unwrap();
    assert_eq!(local.status(), 200);

    // An <img> or <iframe> of another site: a GET with no Origin, marked cross-site by
    // the browser. Reading a group's stream would commit its offsets.
    server.post("/v1/topics/t/events").json(&serde_json::json!({"b": 2})).send().await.unwrap();
    let stream =
        |site: &str| server.get("/v1/topics/t/stream?group=g&from=earliest").header("sec-fetch-site", site).send();
    assert_problem(stream("cross-site").await.unwrap(), 403, "origin_not_allowed").await;
    assert_eq!(server.try_get_json("/v1/groups/g").await, None, "the refused stream joined no group");
    for site in ["same-site", "same-origin", "none"] {
        assert_eq!(stream(site).await.unwrap().status(), 200, "{site}");
    }

    // A WebSocket subscription opened by a foreign page.
    let mut request =
        format!("ws://{}/v1/topics/t/subscribe?from=earliest", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("a foreign page's subscription must be refused: {:?}", other.map(|(_, r)| r.status())),
    }
    assert!(server.metric("tidegate_auth_refused_total{reason=\"host_not_allowed\"}").await >= Some(1.0));

    // --insecure turns the guard off (a proxy forwarding a public host name).
    let insecure = TestServer::start(|c| c.insecure = true).await;
    let proxied = insecure.get("/v1/topics").header("host", "events.example.com").send().await.unwrap();
    assert_eq!(proxied.status(), 200);
}

/// A public write key cannot create topics (anyone could make any number matching its
/// patterns), even with auto_create_topics on, nor can a token with produce alone; a
/// token that may administer the topic can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_never_create_topics() {
    let server = secured(|c| {
        c.write_keys = write_keys().parse().unwrap();
        c.auto_create_topics = true;
    })
    .await;
    let by_key = server
        .post("/v1/topics/web.new/events?key=pk_shop")
        .header("origin", "https://shop.example")
        .header("content-type", "text/plain")
        .body(r#"{"a":1}"#);
    assert_problem(by_key.send().await.unwrap(), 404, "topic_not_found").await;
    let in_body = server
        .post("/v1/topics/web.other/events")
        .header("origin", "https://shop.example")
        .header("content-type", "application/json")
        .body(r#"{"records":[{"value":1}],"writeKey":"pk_shop"}"#);
    assert_problem(in_body.send().await.unwrap(), 404, "topic_not_found").await;
    // Creating is administration (Kafka's Create ACL): a token that may only produce
    // gets 404 too; one that may also administer the topic creates it.
    let producer = server.api().with_token(&hs(&claims(json!(["produce:web.*"]))));
    let resp = producer.post_events("web.new", "", "application/json", r#"{"a":1}"#).await;
    assert_problem(resp, 404, "topic_not_found").await;
    let owner = server.api().with_token(&hs(&claims(json!(["produce:web.*", "admin:web.*"]))));
    assert_eq!(owner.post_events("web.new", "", "application/json", r#"{"a":1}"#).await.status(), 200);
    let admin = server.api().with_token(&admin_token());
    let topics = admin.get_json("/v1/topics").await;
    assert_eq!(topics["topics"].as_array().unwrap().len(), 1, "{topics}");
}

/// A token in the URL is refused outside the subscription routes, also next to a
/// header token and on public routes (URLs end up in logs and Referer headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_urls_are_refused_outside_subscriptions() {
    let server = secured(|_| {}).await;
    let token = admin_token();
    let both = server.get(&format!("/v1/topics?access_token={token}")).bearer_auth(&token).send().await.unwrap();
    assert_problem(both, 401, "invalid_token").await;
    let public = server.get(&format!("/healthz?access_token={token}")).send().await.unwrap();
    assert_problem(public, 401, "invalid_token").await;
    assert_eq!(server.get("/healthz").send().await.unwrap().status(), 200);
}
