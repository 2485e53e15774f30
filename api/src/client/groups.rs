//! `tidegate groups list|describe|reset|delete`.

use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Connection;
use super::error::{ClientError, Exit};
use super::output::{Align, Table, count, fields, print_json};
use super::position::Position;

/// `tidegate groups ...`.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups: state and members.
    List,
    /// Describe a group: members, assignment, committed offsets and lag.
    Describe {
        /// Group name.
        group: String,
    },
    /// Reset a group's committed offsets for a topic.
    Reset {
        /// Group name.
        group: String,
        /// Topic whose partitions are reset.
        #[arg(long)]
        topic: String,
        /// New position: earliest, latest, an offset (42), timestamp:<ms>, or a time
        /// ago (-15m, -2h, -7d).
        #[arg(long, allow_hyphen_values = true)]
        to: Position,
        /// Only these partitions (repeat or comma-separate; default: all).
        #[arg(long, value_delimiter = ',')]
        partition: Vec<u32>,
        /// Reset even while the group has members (they keep reading from where they are).
        #[arg(long)]
        force: bool,
    },
    /// Delete a group's committed offsets.
    Delete {
        /// Group name.
        group: String,
        /// Delete even while the group has members.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Deserialize)]
struct GroupSummary {
    group: String,
    state: String,
    members: usize,
}

#[derive(Debug, Deserialize)]
struct Assigned {
    topic: String,
    partition: u32,
}

#[derive(Debug, Deserialize)]
struct Member {
    member: String,
    client: String,
    connected: bool,
    is_static: bool,
    partitions: Vec<Assigned>,
}

#[derive(Debug, Deserialize)]
struct Lag {
    topic: String,
    partition: u32,
    committed: Option<u64>,
    end_offset: u64,
    lag: u64,
    owner: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Description {
    group: String,
    state: String,
    generation: u64,
    members: Vec<Member>,
    partitions: Vec<Lag>,
    lag: u64,
}

fn view<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, ClientError> {
    T::deserialize(value).map_err(|e| ClientError::Protocol(format!("unexpected group answer: {e}")))
}

/// Runs a groups subcommand.
pub async fn run(conn: &Connection, cmd: GroupsCommand) -> Result<Exit, ClientError> {
    let gw = conn.gateway()?;
    match cmd {
        GroupsCommand::List => {
            let list: Value = gw.get(&["v1", "groups"]).await?;
            if conn.json {
                print_json(&list);
            } else {
                let groups: Vec<GroupSummary> = view(&list["groups"])?;
                let mut t = Table::new(&[("GROUP", Align::Left), ("STATE", Align::Left), ("MEMBERS", Align::Right)]);
                for g in groups {
                    t.row(vec![g.group, g.state, g.members.to_string()]);
                }
                print!("{}", t.render());
            }
        }
        GroupsCommand::Describe { group } => {
            let d: Value = gw.get(&["v1", "groups", &group]).await?;
            if conn.json {
                print_json(&d);
            } else {
                print_description(&view(&d)?);
            }
        }
        GroupsCommand::Reset { group, topic, to, partition, force } => {
            let mut body = Map::new();
            body.insert("topic".into(), json!(topic));
            match to {
                Position::Earliest => body.insert("to".into(), json!("earliest")),
                Position::Latest => body.insert("to".into(), json!("latest")),
                Position::Offset(o) => body.insert("offset".into(), json!(o)),
                Position::Timestamp(ms) => body.insert("timestamp".into(), json!(ms)),
            };
            if !partition.is_empty() {
                body.insert("partitions".into(), json!(partition));
            }
            body.insert("force".into(), json!(force));
            let rb = gw.request(Method::POST, &["v1", "groups", &group, "reset"]).json(&body);
            let result: Value = gw.json(rb).await?;
            if conn.json {
                print_json(&result);
            } else {
                let rows: Vec<Lag> = view(&result["offsets"])?;
                println!("reset group {group} on topic {topic}\n");
                print!("{}", lag_table(&rows));
            }
        }
        GroupsCommand::Delete { group, force } => {
            let rb = gw.request(Method::DELETE, &["v1", "groups", &group]).query(&[("force", force)]);
            gw.send(rb).await?;
            if conn.json {
                print_json(&json!({"group": group, "deleted": true}));
            } else {
                println!("deleted group {group}");
            }
        }
    }
    Ok(Exit::Ok)
}

fn lag_table(rows: &[Lag]) -> String {
    let mut t = Table::new(&[
        ("TOPIC", Align::Left),
        ("PARTITION", Align::Right),
        ("COMMITTED", Align::Right),
        ("END", Align::Right),
        ("LAG", Align::Right),
        ("OWNER", Align::Left),
    ]);
    for r in rows {
        t.row(vec![
            r.topic.clone(),
            r.partition.to_string(),
            r.committed.map_or_else(|| "-".into(), |c| c.to_string()),
            r.end_offset.to_string(),
            count(r.lag),
            r.owner.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

fn print_description(d: &Description) {
    print!(
        "{}",
        fields(&[
            ("group", d.group.clone()),
            ("state", d.state.clone()),
            ("generation", d.generation.to_string()),
            ("members", d.members.len().to_string()),
            ("lag", count(d.lag)),
        ])
    );
    if !d.members.is_empty() {
        let mut t = Table::new(&[
            ("MEMBER", Align::Left),
            ("CLIENT", Align::Left),
            ("CONNECTED", Align::Left),
            ("STATIC", Align::Left),
            ("PARTITIONS", Align::Left),
        ]);
        for m in &d.members {
            let parts: Vec<String> = m.partitions.iter().map(|p| format!("{}/{}", p.topic, p.partition)).collect();
            let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
            t.row(vec![m.member.clone(), m.client.clone(), yes_no(m.connected), yes_no(m.is_static), parts.join(",")]);
        }
        println!();
        print!("{}", t.render());
    }
    if !d.partitions.is_empty() {
        println!();
        print!("{}", lag_table(&d.partitions));
    }
}
