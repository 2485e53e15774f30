//! `tidegate status`: is the gateway up and ready, and what does it hold.

use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

use super::Connection;
use super::error::{ClientError, Exit};
use super::http::Gateway;
use super::output::{bytes, count, fields, print_json};

/// What `status` reports (`--json` prints it as is).
#[derive(Debug, Serialize)]
struct Status {
    url: String,
    healthy: bool,
    ready: bool,
    /// Why it is not ready: the `code` of `/readyz`'s problem (`not_ready`,
    /// `storage_failing`, `insufficient_storage`); `null` when ready.
    not_ready: Option<String>,
    #[serde(flatten)]
    totals: Totals,
}

/// What the node holds; `null` counts where a node that is not ready did not tell.
#[derive(Debug, Default, Serialize)]
struct Totals {
    topics: Option<u64>,
    partitions: Option<u64>,
    records: Option<u64>,
    bytes: Option<u64>,
    groups: Option<u64>,
    /// The counts cover only the topics and groups the token may see: it lacks `admin`
    /// on every topic, which `/v1/status` (the node's own totals) needs.
    filtered: bool,
}

/// Runs `status`: exit 0 when the gateway is ready, 4 when it answers but is not
/// ready (starting, shutting down, its last write to storage failed, or its disk is
/// below `min_free_disk_bytes`), 3 when it cannot be reached.
pub async fn run(conn: &Connection) -> Result<Exit, ClientError> {
    let gw = conn.gateway()?;
    let _: Value = gw.get(&["healthz"]).await?;
    let not_ready = match gw.send(gw.request(Method::GET, &["readyz"])).await {
        Ok(_) => None,
        Err(ClientError::Problem { status: 503, problem }) => {
            Some(problem["code"].as_str().unwrap_or("not_ready").to_string())
        }
        Err(e) => return Err(e),
    };
    let ready = not_ready.is_none();
    let status =
        Status { url: gw.base().to_string(), healthy: true, ready, not_ready, totals: totals(&gw, ready).await? };
    show(conn, &status);
    Ok(if ready { Exit::Ok } else { Exit::ServerError })
}

/// The node's own totals when the token may read them, else the sums of the topics
/// and groups it may list. A node that is not ready may not answer; the readiness is
/// the news then (no counts).
async fn totals(gw: &Gateway, ready: bool) -> Result<Totals, ClientError> {
    match gw.get::<Value>(&["v1", "status"]).await {
        Ok(node) => {
            let field = |key: &str| node[key].as_u64();
            return Ok(Totals {
                topics: field("topics"),
                partitions: field("partitions"),
                records: field("records"),
                bytes: field("bytes"),
                groups: field("groups"),
                filtered: false,
            });
        }
        Err(ClientError::Problem { status: 403, .. }) => {}
        Err(_) if !ready => {}
        Err(e) => return Err(e),
    }
    let (topics, groups) = match (gw.get::<Value>(&["v1", "topics"]).await, gw.get::<Value>(&["v1", "groups"]).await) {
        (Ok(t), Ok(g)) => (t, g),
        (Err(_), _) | (_, Err(_)) if !ready => return Ok(Totals::default()),
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    let topics = topics["topics"].as_array();
    let sum = |field: &str| topics.map(|ts| ts.iter().map(|t| t[field].as_u64().unwrap_or(0)).sum::<u64>());
    Ok(Totals {
        topics: topics.map(|t| t.len() as u64),
        partitions: sum("partition_count"),
        records: sum("records"),
        bytes: sum("bytes"),
        groups: groups["groups"].as_array().map(|g| g.len() as u64),
        filtered: true,
    })
}

/// Prints `status` as JSON or as aligned fields.
fn show(conn: &Connection, status: &Status) {
    if conn.json {
        print_json(status);
    } else {
        let scope = if status.totals.filtered { " (only what this token may see)" } else { "" };
        let show =
            |v: Option<u64>, f: fn(u64) -> String| v.map_or_else(|| "-".to_string(), |v| format!("{}{scope}", f(v)));
        print!(
            "{}",
            fields(&[
                ("url", status.url.clone()),
                ("health", "ok".into()),
                (
                    "ready",
                    match status.not_ready.as_deref() {
                        None => "yes".into(),
                        Some("storage_failing") => "no (the last write to storage failed: see the server log)".into(),
                        Some("insufficient_storage") => "no (free disk space is below min_free_disk_bytes)".into(),
                        Some(_) => "no (starting or shutting down)".into(),
                    },
                ),
                ("topics", show(status.totals.topics, count)),
                ("partitions", show(status.totals.partitions, count)),
                ("records", show(status.totals.records, count)),
                ("size", show(status.totals.bytes, bytes)),
                ("groups", show(status.totals.groups, count)),
            ])
        );
    }
}
