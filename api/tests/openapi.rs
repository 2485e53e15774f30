//! The checked-in `openapi/openapi.json` must equal what the code generates.
//! Regenerate with `scripts/update-generated` (or `UPDATE_OPENAPI=1 cargo nextest run --workspace --test openapi`)
//! (or `tidegate openapi --write openapi/openapi.json`).

#[test]
fn checked_in_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let generated = tidegate::routes::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write openapi/openapi.json");
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo nextest run --workspace --test openapi` and commit it"
    );
}

#[test]
fn every_route_has_problem_responses_documented() {
    let doc: serde_json::Value = serde_json::from_str(&tidegate::routes::openapi_json()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/topics",
        "/v1/topics/{topic}",
        "/v1/topics/{topic}/events",
        "/v1/topics/{topic}/offsets",
        "/v1/topics/{topic}/partitions",
        "/v1/topics/{topic}/partitions/{partition}/records",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }
    let produce = &paths["/v1/topics/{topic}/events"]["post"]["responses"];
    for status in ["200", "202", "400", "404", "413", "415", "500", "503"] {
        assert!(produce.get(status).is_some(), "ingest response {status} undocumented");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}
