//! `tidegate topics list|create|describe|alter|delete`.

use std::str::FromStr;

use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Connection;
use super::error::{ClientError, Exit};
use super::http::Gateway;
use super::output::{Align, Table, bytes, count, fields, limit, millis, print_json, utc};

/// A retention limit on the command line: a number, or `none` for unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

impl FromStr for Limit {
    type Err = String;
    fn from_str(s: &str) -> Result<Limit, String> {
        if s == "none" {
            return Ok(Limit(None));
        }
        s.parse().map(|n| Limit(Some(n))).map_err(|_| format!("{s:?} is not a number or `none`"))
    }
}

/// `tidegate topics ...`.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// List topics: partitions, records, size, retention.
    List,
    /// Create a topic.
    Create {
        /// Topic name: `[A-Za-z0-9._-]{1,249}`.
        name: String,
        /// Number of partitions (default: the server's `default_partitions`).
        #[arg(long)]
        partitions: Option<u32>,
        /// Time retention in ms, or `none` to keep records forever (default: the server's).
        #[arg(long)]
        retention_ms: Option<Limit>,
        /// Size retention per partition in bytes, or `none` (default: the server's).
        #[arg(long)]
        retention_bytes: Option<Limit>,
        /// Succeed when the topic already exists (nothing is changed).
        #[arg(long)]
        if_not_exists: bool,
    },
    /// Describe a topic: settings and per-partition offsets and sizes.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change a topic's retention and/or grow its partition count.
    Alter {
        /// Topic name.
        name: String,
        /// New time retention in ms, or `none`.
        #[arg(long)]
        retention_ms: Option<Limit>,
        /// New size retention per partition in bytes, or `none`.
        #[arg(long)]
        retention_bytes: Option<Limit>,
        /// New (larger) total number of partitions.
        #[arg(long)]
        partitions: Option<u32>,
    },
    /// Delete a topic and all its records.
    Delete {
        /// Topic name.
        name: String,
        /// Succeed when the topic does not exist.
        #[arg(long)]
        if_exists: bool,
    },
}

/// One partition of a topic description (the fields the tables show).
#[derive(Debug, Deserialize)]
struct PartitionView {
    partition: u32,
    start_offset: u64,
    end_offset: u64,
    bytes: u64,
    disk_bytes: u64,
}

/// A topic description (the fields the tables show).
#[derive(Debug, Deserialize)]
struct TopicView {
    name: String,
    partition_count: u32,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    created_ms: i64,
    records: u64,
    bytes: u64,
    partitions: Vec<PartitionView>,
}

fn view<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, ClientError> {
    T::deserialize(value).map_err(|e| ClientError::Protocol(format!("unexpected topic description: {e}")))
}

/// Runs a topics subcommand.
pub async fn run(conn: &Connection, cmd: TopicsCommand) -> Result<Exit, ClientError> {
    let gw = conn.gateway()?;
    match cmd {
        TopicsCommand::List => {
            let list: Value = gw.get(&["v1", "topics"]).await?;
            if conn.json {
                print_json(&list);
            } else {
                let topics: Vec<TopicView> = view(&list["topics"])?;
                print!("{}", list_table(&topics));
            }
        }
        TopicsCommand::Create { name, partitions, retention_ms, retention_bytes, if_not_exists } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            if let Some(p) = partitions {
                body.insert("partitions".into(), json!(p));
            }
            if let Some(Limit(ms)) = retention_ms {
                body.insert("retention_ms".into(), json!(ms));
            }
            if let Some(Limit(b)) = retention_bytes {
                body.insert("retention_bytes".into(), json!(b));
            }
            let created = gw.json::<Value>(gw.request(Method::POST, &["v1", "topics"]).json(&body)).await;
            let (topic, verb) = match created {
                Ok(t) => (t, "created"),
                Err(e) if if_not_exists && e.code() == Some("topic_exists") => (describe(&gw, &name).await?, "exists"),
                Err(e) => return Err(e),
            };
            show(conn.json, &topic, Some(verb))?;
        }
        TopicsCommand::Describe { name } => show(conn.json, &describe(&gw, &name).await?, None)?,
        TopicsCommand::Alter { name, retention_ms, retention_bytes, partitions } => {
            if retention_ms.is_none() && retention_bytes.is_none() && partitions.is_none() {
                return Err(ClientError::Usage(
                    "nothing to change: give --retention-ms, --retention-bytes and/or --partitions".into(),
                ));
            }
            // With a retention change too, a count that cannot grow the topic is refused
            // before anything changes, so the retention part is not applied alone.
            let retention = retention_ms.is_some() || retention_bytes.is_some();
            if let (true, Some(count)) = (retention, partitions) {
                let current = view::<TopicView>(&describe(&gw, &name).await?)?.partition_count;
                if count <= current {
                    return Err(ClientError::Input(format!(
                        "--partitions {count}: topic {name} has {current} partitions and can only grow; nothing \
                         was changed"
                    )));
                }
            }
            let mut topic = Value::Null;
            if retention {
                let mut body = Map::new();
                if let Some(Limit(ms)) = retention_ms {
                    body.insert("retention_ms".into(), json!(ms));
                }
                if let Some(Limit(b)) = retention_bytes {
                    body.insert("retention_bytes".into(), json!(b));
                }
                topic = gw.json(gw.request(Method::PATCH, &["v1", "topics", &name]).json(&body)).await?;
            }
            if let Some(count) = partitions {
                let rb =
                    gw.request(Method::POST, &["v1", "topics", &name, "partitions"]).json(&json!({"count": count}));
                topic = gw.json(rb).await.inspect_err(|_| {
                    if retention {
                        eprintln!("note: the retention change was applied; the partition count was not");
                    }
                })?;
            }
            show(conn.json, &topic, Some("altered"))?;
        }
        TopicsCommand::Delete { name, if_exists } => {
            let deleted = gw.send(gw.request(Method::DELETE, &["v1", "topics", &name])).await;
            let existed = match deleted {
                Ok(_) => true,
                Err(e) if if_exists && matches!(e.code(), Some("topic_not_found" | "topic_deleted")) => false,
                Err(e) => return Err(e),
            };
            if conn.json {
                print_json(&json!({"topic": name, "deleted": existed}));
            } else if existed {
                println!("deleted topic {name}");
            } else {
                println!("topic {name} does not exist");
            }
        }
    }
    Ok(Exit::Ok)
}

async fn describe(gw: &Gateway, name: &str) -> Result<Value, ClientError> {
    gw.get(&["v1", "topics", name]).await
}

fn list_table(topics: &[TopicView]) -> String {
    let mut t = Table::new(&[
        ("TOPIC", Align::Left),
        ("PARTITIONS", Align::Right),
        ("RECORDS", Align::Right),
        ("SIZE", Align::Right),
        ("RETENTION", Align::Left),
        ("RETENTION/PARTITION", Align::Left),
    ]);
    for topic in topics {
        t.row(vec![
            topic.name.clone(),
            topic.partition_count.to_string(),
            count(topic.records),
            bytes(topic.bytes),
            limit(topic.retention_ms, millis),
            limit(topic.retention_bytes, bytes),
        ]);
    }
    t.render()
}

/// Prints a topic description: JSON as the API gave it, or a summary and a table.
fn show(json: bool, topic: &Value, verb: Option<&str>) -> Result<(), ClientError> {
    if json {
        print_json(topic);
        return Ok(());
    }
    let t: TopicView = view(topic)?;
    if let Some(verb) = verb {
        println!("{verb} topic {}\n", t.name);
    }
    print!(
        "{}",
        fields(&[
            ("topic", t.name.clone()),
            ("partitions", t.partition_count.to_string()),
            ("records", count(t.records)),
            ("size", bytes(t.bytes)),
            ("retention", limit(t.retention_ms, millis)),
            ("retention/partition", limit(t.retention_bytes, bytes)),
            ("created", utc(t.created_ms)),
        ])
    );
    let mut table = Table::new(&[
        ("PARTITION", Align::Right),
        ("START", Align::Right),
        ("END", Align::Right),
        ("RECORDS", Align::Right),
        ("SIZE", Align::Right),
        ("DISK", Align::Right),
    ]);
    for p in &t.partitions {
        table.row(vec![
            p.partition.to_string(),
            p.start_offset.to_string(),
            p.end_offset.to_string(),
            count(p.end_offset - p.start_offset.min(p.end_offset)),
            bytes(p.bytes),
            bytes(p.disk_bytes),
        ]);
    }
    println!();
    print!("{}", table.render());
    Ok(())
}
