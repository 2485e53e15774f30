//! `tidegate consume --group`: one member of a consumer group over the WebSocket
//! protocol (docs/websocket.md), with `auto_commit=false`.
//!
//! Every records frame is printed and flushed first, then the position after the
//! last printed record is committed (with the generation, so a stale member's
//! commit is refused). Records cut by `--max` are not committed, so the group's next
//! member reads them. On the way out the client waits for the server to confirm its
//! commits, then closes normally (so its partitions move at once).
//!
//! Without `--follow` the member stops when every partition it owns has reached
//! the end the topic had when it started, and the group is stable with this
//! member's assignment known (a member that joins a busy group may first be given
//! nothing while partitions are handed over).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::consume::{ConsumeArgs, Printed, Printer, WireRecord, ctrl_c};
use super::error::{ClientError, Exit};
use super::http::{Gateway, WsStream};

/// How long the final commits and the close handshake may take.
const FINISH_WAIT: Duration = Duration::from_secs(5);
/// How often a caught-up member asks whether the group has settled.
const SETTLE_CHECK: Duration = Duration::from_millis(200);

/// A `records` frame.
#[derive(Debug, Deserialize)]
struct RecordsFrame {
    topic: String,
    partition: u32,
    records: Vec<WireRecord>,
}

#[derive(Debug, Deserialize)]
struct At {
    topic: Option<String>,
    partition: u32,
    #[serde(default)]
    offset: Option<u64>,
}

/// The frames the member acts on (records frames are parsed apart, raw).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Frame {
    Assignment {
        generation: u64,
        #[serde(default)]
        member: Option<String>,
        partitions: Vec<At>,
    },
    Revoked {
        generation: u64,
        partitions: Vec<At>,
    },
    Committed {},
    Gap {
        partition: u32,
        from: u64,
        to: u64,
    },
    Error {
        code: String,
        detail: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct OffsetAt {
    partition: u32,
    end_offset: u64,
}

#[derive(Debug, Deserialize)]
struct Offsets {
    partitions: Vec<OffsetAt>,
}

#[derive(Debug, Deserialize)]
struct MemberView {
    member: String,
    partitions: Vec<At>,
}

#[derive(Debug, Deserialize)]
struct GroupView {
    state: String,
    members: Vec<MemberView>,
}

/// The member's view of its session.
struct Member<'a> {
    topic: &'a str,
    generation: u64,
    id: Option<String>,
    /// Owned partitions and the next offset to print.
    owned: BTreeMap<u32, u64>,
    /// Commits sent and not yet confirmed.
    unconfirmed: usize,
}

impl Member<'_> {
    fn caught_up(&self, ends: &BTreeMap<u32, u64>) -> bool {
        self.owned.iter().all(|(p, next)| *next >= ends.get(p).copied().unwrap_or(0))
    }

    /// Whether the group is stable and agrees with the assignment this member knows.
    async fn settled(&self, gw: &Gateway, group: &str) -> Result<bool, ClientError> {
        let Some(id) = &self.id else { return Ok(false) };
        let view: GroupView = match gw.get(&["v1", "groups", group]).await {
            Ok(v) => v,
            Err(ClientError::Problem { status: 404, .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(me) = view.members.iter().find(|m| &m.member == id) else { return Ok(false) };
        let theirs: BTreeSet<u32> =
            me.partitions.iter().filter(|a| a.topic.as_deref() == Some(self.topic)).map(|a| a.partition).collect();
        let mine: BTreeSet<u32> = self.owned.keys().copied().collect();
        Ok(view.state == "stable" && theirs == mine)
    }
}

/// What ended the session.
enum End {
    /// Done (caught up, `--max`, Ctrl-C, or stdout closed): commit and close.
    Finished,
    /// The server closed the connection.
    Closed(Option<CloseFrame>),
}

async fn send(ws: &mut WsStream, frame: Value) -> Result<(), ClientError> {
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| ClientError::Protocol(format!("the subscription connection failed: {e}")))
}

/// The error for a close the client did not ask for.
fn closed_error(frame: Option<CloseFrame>) -> ClientError {
    let (code, reason) = frame.map_or((1006, String::from("the connection ended without a close frame")), |f| {
        (u16::from(f.code), f.reason.to_string())
    });
    match code {
        4001 => ClientError::Problem {
            status: 404,
            problem: json!({"status": 404, "code": "topic_deleted", "detail": reason}),
        },
        4002 => ClientError::Problem {
            status: 409,
            problem: json!({"status": 409, "code": "member_in_use", "detail": reason}),
        },
        // Gateways with authentication close a subscription whose token expired.
        4003 => ClientError::Problem {
            status: 401,
            problem: json!({"status": 401, "code": "token_expired", "detail": reason}),
        },
        _ => ClientError::Protocol(format!("the gateway closed the subscription ({code}): {reason}")),
    }
}

/// Runs `consume --group`.
pub async fn run(gw: &Gateway, args: &ConsumeArgs, group: &str) -> Result<Exit, ClientError> {
    let ends: BTreeMap<u32, u64> = if args.follow {
        BTreeMap::new()
    } else {
        let rb = gw.request(Method::GET, &["v1", "topics", &args.topic, "offsets"]).query(&[("timestamp", "latest")]);
        let offsets: Offsets = gw.json(rb).await?;
        offsets.partitions.into_iter().map(|o| (o.partition, o.end_offset)).collect()
    };
    let mut query = vec![("group", group.to_string()), ("from", args.from.ws_from()), ("auto_commit", "false".into())];
    if let Some(m) = &args.member {
        query.push(("member", m.clone()));
    }
    let mut ws = gw.websocket(&["v1", "topics", &args.topic, "subscribe"], &query).await?;
    let mut printer = Printer::new(&args.topic, args.with_meta, args.max);
    let mut me = Member { topic: &args.topic, generation: 0, id: None, owned: BTreeMap::new(), unconfirmed: 0 };
    let interrupted = ctrl_c();
    tokio::pin!(interrupted);
    let mut next_check = Instant::now();
    let end = loop {
        let waiting = !args.follow && me.id.is_some() && me.caught_up(&ends);
        if waiting && Instant::now() >= next_check {
            if me.settled(gw, group).await? {
                break End::Finished;
            }
            next_check = Instant::now() + SETTLE_CHECK;
        }
        let message = tokio::select! {
            m = ws.next() => m,
            () = &mut interrupted => break End::Finished,
            () = tokio::time::sleep_until(next_check), if waiting => continue,
        };
        let text = match message {
            None => break End::Closed(None),
            Some(Err(e)) => return Err(ClientError::Protocol(format!("the subscription connection failed: {e}"))),
            Some(Ok(Message::Close(frame))) => break End::Closed(frame),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        if text.starts_with(r#"{"type":"records""#) {
            let frame: RecordsFrame = serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("unreadable records frame: {e}")))?;
            if !me.owned.contains_key(&frame.partition) || frame.topic != args.topic {
                continue;
            }
            let printed = printer.print(frame.partition, &frame.records).await?;
            let n = match printed {
                Printed::Closed => break End::Finished,
                Printed::Records(n) => n,
            };
            if let Some(last) = n.checked_sub(1).map(|i| frame.records[i].offset) {
                me.owned.insert(frame.partition, last + 1);
                let commit = json!({"type": "commit", "generation": me.generation,
                    "offsets": [{"topic": args.topic, "partition": frame.partition, "offset": last + 1}]});
                send(&mut ws, commit).await?;
                me.unconfirmed += 1;
            }
            if printer.done() {
                break End::Finished;
            }
            continue;
        }
        let frame: Frame = serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("unreadable frame {text:.200}: {e}")))?;
        match frame {
            Frame::Assignment { generation, member, partitions } => {
                me.generation = generation;
                me.id = member.or(me.id.take());
                me.owned = partitions.into_iter().map(|a| (a.partition, a.offset.unwrap_or(0))).collect();
                next_check = Instant::now();
            }
            Frame::Revoked { generation, partitions } => {
                me.generation = generation;
                for a in partitions {
                    me.owned.remove(&a.partition);
                }
            }
            Frame::Committed {} => me.unconfirmed = me.unconfirmed.saturating_sub(1),
            Frame::Gap { partition, from, to } => {
                eprintln!(
                    "warning: {}/{partition}: offsets {from}..{to} were deleted by retention before they were read",
                    args.topic
                );
                me.owned.insert(partition, to);
            }
            Frame::Error { code, detail } => {
                if code == "commit_refused" || code == "commit_failed" {
                    me.unconfirmed = me.unconfirmed.saturating_sub(1);
                }
                eprintln!("warning: the gateway reported {code}: {detail}");
            }
            Frame::Other => {}
        }
    };
    match end {
        End::Closed(frame) => {
            printer.report();
            Err(closed_error(frame))
        }
        End::Finished => {
            finish(&mut ws, &mut me).await;
            printer.report();
            Ok(Exit::Ok)
        }
    }
}

/// Waits (bounded) for the commits in flight, then closes with 1000 and waits for
/// the server's close, so the group rebalances at once.
async fn finish(ws: &mut WsStream, me: &mut Member<'_>) {
    let until = Instant::now() + FINISH_WAIT;
    while me.unconfirmed > 0 {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if text.starts_with(r#"{"type":"committed""#) {
                    me.unconfirmed -= 1;
                } else if text.starts_with(r#"{"type":"error""#) {
                    eprintln!("warning: {text}");
                    me.unconfirmed -= 1;
                }
            }
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => return,
            Ok(Some(Ok(_))) => {}
            Err(_) => {
                eprintln!("warning: {} commit(s) not confirmed within {FINISH_WAIT:?}", me.unconfirmed);
                break;
            }
        }
    }
    let close = CloseFrame { code: CloseCode::Normal, reason: "done".into() };
    if tokio::time::timeout_at(until + FINISH_WAIT, ws.send(Message::Close(Some(close)))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout_at(until + FINISH_WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Exit;

    fn close(code: u16, reason: &str) -> Option<CloseFrame> {
        Some(CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() })
    }

    #[test]
    fn server_closes_map_to_exit_codes() {
        assert_eq!(closed_error(close(4001, "topic t was deleted")).exit(), Exit::Refused);
        assert_eq!(closed_error(close(4002, "in use")).code(), Some("member_in_use"));
        assert_eq!(closed_error(close(4003, "the access token has expired")).exit(), Exit::Unauthorized);
        assert_eq!(closed_error(close(1001, "server shutting down")).exit(), Exit::ServerError);
        assert!(closed_error(None).to_string().contains("without a close frame"));
    }

    #[test]
    fn frames_parse_and_unknown_types_are_ignored() {
        let f: Frame = serde_json::from_str(
            r#"{"type":"assignment","generation":2,"member":"m-1","partitions":[{"topic":"t","partition":1,"offset":5}]}"#,
        )
        .unwrap();
        assert!(
            matches!(f, Frame::Assignment { generation: 2, member: Some(ref m), ref partitions } if m == "m-1" && partitions[0].offset == Some(5))
        );
        assert!(matches!(
            serde_json::from_str::<Frame>(r#"{"type":"committed","offsets":[]}"#).unwrap(),
            Frame::Committed {}
        ));
        assert!(matches!(serde_json::from_str::<Frame>(r#"{"type":"novel","x":1}"#).unwrap(), Frame::Other));
    }
}
