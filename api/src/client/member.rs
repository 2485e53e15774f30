//! `tidegate consume --group`: one member of a consumer group over the WebSocket
//! protocol (docs/websocket.md), with `auto_commit=false`.
//!
//! Every records frame is printed and flushed first, then the position after the
//! last printed record is committed (with the generation, so a stale member's
//! commit is refused). A printed position stays pending until a `committed` frame
//! covers it: when a rebalance makes the generation move on (so commits sent with the
//! old one are refused), the pending positions of the partitions the member still owns
//! are committed again with the new one, and once more on the way out. Records cut by
//! `--max` are not committed, so the group's next member reads them. A `revoked`
//! partition's last commit is already on its way: the server waits for it (within
//! `revoke_commit_timeout_ms`) before handing the partition on. On the way out the
//! client waits for the server to confirm its commits, then closes normally (so its
//! partitions move at once).
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
    Committed {
        #[serde(default)]
        offsets: Vec<At>,
    },
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
    /// Printed positions (the offset after the last printed record) no `committed`
    /// frame has confirmed yet.
    pending: BTreeMap<u32, u64>,
    /// Commits sent and not yet answered.
    unconfirmed: usize,
}

impl Member<'_> {
    /// A commit of every pending position of a partition this member owns, with the
    /// current generation; `None` when there is none. Pending positions of partitions
    /// it no longer owns are dropped: only their next owner may commit them now.
    fn commit_pending(&mut self) -> Option<Value> {
        self.pending.retain(|p, _| self.owned.contains_key(p));
        if self.pending.is_empty() {
            return None;
        }
        let offsets: Vec<Value> = self
            .pending
            .iter()
            .map(|(p, offset)| json!({"topic": self.topic, "partition": p, "offset": offset}))
            .collect();
        Some(json!({"type": "commit", "generation": self.generation, "offsets": offsets}))
    }

    /// Applies a frame other than `records`; returns a commit to send (pending positions
    /// again, when the generation moved on).
    fn apply(&mut self, frame: Frame) -> Option<Value> {
        let before = self.generation;
        match frame {
            Frame::Assignment { generation, member, partitions } => {
                self.generation = generation;
                self.id = member.or(self.id.take());
                self.owned = partitions.into_iter().map(|a| (a.partition, a.offset.unwrap_or(0))).collect();
            }
            Frame::Revoked { generation, partitions } => {
                self.generation = generation;
                // Their last commits are already on the way: the server accepts them
                // while it waits for them (revoke_commit_timeout_ms) before handing the
                // partitions on, so they are not sent again.
                for a in partitions {
                    self.owned.remove(&a.partition);
                    self.pending.remove(&a.partition);
                }
            }
            Frame::Committed { offsets } => {
                self.unconfirmed = self.unconfirmed.saturating_sub(1);
                for a in offsets.into_iter().filter(|a| a.topic.as_deref().is_none_or(|t| t == self.topic)) {
                    if let Some(offset) = a.offset
                        && self.pending.get(&a.partition).is_some_and(|pending| offset >= *pending)
                    {
                        self.pending.remove(&a.partition);
                    }
                }
            }
            Frame::Gap { partition, from, to } => {
                eprintln!(
                    "warning: {}/{partition}: offsets {from}..{to} were deleted by retention before they were read",
                    self.topic
                );
                self.owned.insert(partition, to);
            }
            Frame::Error { code, detail } => {
                if code == "commit_refused" || code == "commit_failed" {
                    self.unconfirmed = self.unconfirmed.saturating_sub(1);
                }
                // A commit refused for a generation that has moved on is sent again
                // with the new one; the refusal is only worth a warning otherwise.
                let stale = code == "commit_refused" && detail.contains("stale");
                if !stale {
                    eprintln!("warning: the gateway reported {code}: {detail}");
                }
            }
            Frame::Other => {}
        }
        if self.generation != before { self.commit_pending() } else { None }
    }

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
    let mut me = Member {
        topic: &args.topic,
        generation: 0,
        id: None,
        owned: BTreeMap::new(),
        pending: BTreeMap::new(),
        unconfirmed: 0,
    };
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
                me.pending.insert(frame.partition, last + 1);
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
        let assigned = matches!(frame, Frame::Assignment { .. });
        if let Some(commit) = me.apply(frame) {
            send(&mut ws, commit).await?;
            me.unconfirmed += 1;
        }
        if assigned {
            next_check = Instant::now();
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

/// Commits the pending positions once more (a commit sent before a rebalance may
/// have been refused), waits (bounded) for the commits in flight, then closes with 1000
/// and waits for the server's close, so the group rebalances at once.
async fn finish(ws: &mut WsStream, me: &mut Member<'_>) {
    let until = Instant::now() + FINISH_WAIT;
    let mut commit = me.commit_pending();
    loop {
        if let Some(frame) = commit.take() {
            if tokio::time::timeout_at(until, send(ws, frame)).await.is_err() {
                break;
            }
            me.unconfirmed += 1;
        }
        if me.unconfirmed == 0 {
            break;
        }
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if text.starts_with(r#"{"type":"records""#) {
                    continue;
                }
                if let Ok(frame) = serde_json::from_str::<Frame>(&text) {
                    commit = me.apply(frame);
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
    if !me.pending.is_empty() {
        let left: Vec<String> = me.pending.iter().map(|(p, o)| format!("{}/{p} at {o}", me.topic)).collect();
        eprintln!("warning: not committed (the group's next reader reads these records again): {}", left.join(", "));
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
            Frame::Committed { ref offsets } if offsets.is_empty()
        ));
        assert!(matches!(serde_json::from_str::<Frame>(r#"{"type":"novel","x":1}"#).unwrap(), Frame::Other));
    }

    fn frame(text: Value) -> Frame {
        serde_json::from_value(text).unwrap()
    }

    #[test]
    fn pending_positions_are_committed_again_with_each_new_generation() {
        let mut me = Member {
            topic: "t",
            generation: 0,
            id: None,
            owned: BTreeMap::new(),
            pending: BTreeMap::new(),
            unconfirmed: 0,
        };
        let assign = json!({"type": "assignment", "generation": 1, "member": "m",
            "partitions": [{"topic": "t", "partition": 0, "offset": 0}, {"topic": "t", "partition": 1, "offset": 0}]});
        assert_eq!(me.apply(frame(assign)), None, "nothing printed yet");
        // Printed up to 10 on both partitions; the commits (generation 1) are in flight.
        me.pending.extend([(0, 10), (1, 10)]);
        me.unconfirmed = 2;
        // Partition 0 is confirmed; then a rebalance takes partition 1 away.
        let committed = json!({"type": "committed", "offsets": [{"topic": "t", "partition": 0, "offset": 10}]});
        assert_eq!(me.apply(frame(committed)), None);
        assert_eq!(me.pending, BTreeMap::from([(1, 10)]));
        me.pending.insert(0, 20);
        let revoked = json!({"type": "revoked", "generation": 2, "partitions": [{"topic": "t", "partition": 1}]});
        let again = me.apply(frame(revoked)).expect("the pending position of the kept partition, again");
        assert_eq!(
            again,
            json!({"type": "commit", "generation": 2, "offsets": [{"topic": "t", "partition": 0, "offset": 20}]})
        );
        assert_eq!(me.pending, BTreeMap::from([(0, 20)]), "a revoked partition's commit is already on its way");
        // The stale refusal of the generation-1 commit is expected: no warning, no resend.
        let stale = json!({"type": "error", "code": "commit_refused", "detail": "generation 1 is stale (current 2)"});
        assert_eq!(me.apply(frame(stale)), None);
        assert_eq!(me.unconfirmed, 0);
        // The same generation again sends nothing more.
        let same = json!({"type": "assignment", "generation": 2, "partitions": [{"topic": "t", "partition": 0, "offset": 20}]});
        assert_eq!(me.apply(frame(same)), None);
        assert_eq!(me.commit_pending().map(|c| c["generation"].clone()), Some(json!(2)), "what finish sends");
    }
}
