//! One WebSocket subscription: reads storage from its own positions and sends while
//! the socket accepts.
//!
//! Flow control: a delivery round queues at most one records frame per partition, and
//! only while the round's frames stay within the `subscription_frame_bytes` setting
//! (or it is the round's first frame); it then flushes them in one socket write and
//! awaits that before reading more. So a slow client only slows itself, server memory
//! per subscriber stays bounded (one round in the WebSocket write buffer), and a client
//! that catches up reads the backlog from storage. One write per round, not per
//! partition: a batch appended across six partitions reaches a tailing subscriber in
//! one system call. It never polls: when every partition is at its high watermark it
//! sleeps on the watermark notifiers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::response::sse::Event;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tidegate_storage::{PartitionLog, ReadLimits, StorageError, Topic};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::cache::CachedFrame;
use super::protocol::{self, ClientFrame, StartFrom, close};
use crate::groups::assign::TopicPartition;
use crate::groups::coordinator::{Control, GroupError};
use crate::state::SharedState;

/// How long the last frames (error, close) may wait for a client that is going away.
const FINAL_FRAME_WAIT: Duration = Duration::from_secs(1);

/// Records per frame at most.
pub const MAX_FRAME_RECORDS: usize = 1000;

/// How a session ended.
#[derive(Debug)]
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The socket is gone.
    Gone,
}

/// Runs `fut` for at most `stall`, arming the timer only when it does not finish at
/// once: most frames fit in the socket's buffer, so a subscriber tailing a busy topic
/// does not register and cancel a timer per frame.
async fn within<F: Future + Unpin>(stall: Duration, mut fut: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    match futures_util::FutureExt::now_or_never(&mut fut) {
        Some(out) => Ok(out),
        // Polled again at once inside the timeout, with the task's waker.
        None => tokio::time::timeout(stall, fut).await,
    }
}

/// Where frames go: a WebSocket, or the event channel of an SSE response.
pub enum Outbound {
    /// WebSocket frames.
    Ws(SplitSink<WebSocket, Message>),
    /// Server-Sent Events; the channel holds one event, so the response's pace is
    /// the reader's pace.
    Sse(mpsc::Sender<Event>),
}

impl Outbound {
    /// Sends one frame. A client that does not take it within `stall` (the session
    /// timeout) has stopped reading: the session ends, so a stuck member cannot hold
    /// its partitions or delay shutdown.
    async fn send(
        &mut self,
        kind: &'static str,
        text: impl Into<Utf8Bytes>,
        id: Option<String>,
        stall: Duration,
    ) -> Result<(), End> {
        self.feed(kind, text, id, stall).await?;
        self.flush(stall).await
    }

    /// Queues one frame without writing it to the socket (unless the queue is past
    /// the socket's write buffer size); [`Outbound::flush`] writes the queue. SSE
    /// events are handed to the response at once.
    async fn feed(
        &mut self,
        kind: &'static str,
        text: impl Into<Utf8Bytes>,
        id: Option<String>,
        stall: Duration,
    ) -> Result<(), End> {
        let text: Utf8Bytes = text.into();
        let sent = match self {
            Outbound::Ws(tx) => within(stall, tx.feed(Message::Text(text))).await.map(|r| r.is_ok()),
            Outbound::Sse(tx) => {
                let mut event = Event::default().event(kind).data(text.as_str());
                if let Some(id) = id {
                    event = event.id(id);
                }
                tokio::time::timeout(stall, tx.send(event)).await.map(|r| r.is_ok())
            }
        };
        match sent {
            Ok(true) => Ok(()),
            Ok(false) => Err(End::Gone),
            Err(_) => Err(stalled()),
        }
    }

    /// Writes the queued frames, waiting at most `stall` for the client to take them.
    async fn flush(&mut self, stall: Duration) -> Result<(), End> {
        match self {
            Outbound::Ws(tx) => match within(stall, tx.flush()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Gone),
                Err(_) => Err(stalled()),
            },
            Outbound::Sse(_) => Ok(()),
        }
    }

    /// Sends a WebSocket ping carrying `probe` (its pong confirms every frame written
    /// before it reached the client).
    async fn ping(&mut self, probe: u64, stall: Duration) -> Result<(), End> {
        let payload = bytes::Bytes::copy_from_slice(&probe.to_be_bytes());
        match self {
            Outbound::Ws(tx) => match within(stall, tx.send(Message::Ping(payload))).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Gone),
                Err(_) => Err(stalled()),
            },
            // The SSE response sends keep-alive comments itself.
            Outbound::Sse(_) => Ok(()),
        }
    }

    async fn closed(&self) {
        match self {
            Outbound::Ws(_) => std::future::pending().await,
            Outbound::Sse(tx) => tx.closed().await,
        }
    }

    fn is_sse(&self) -> bool {
        matches!(self, Outbound::Sse(_))
    }
}

/// A subscribed topic as a session watches it.
struct Watched {
    topic: Arc<Topic>,
    /// Its partition 0: marked deleted with the topic.
    first: Arc<PartitionLog>,
    /// Partitions an ephemeral session reads.
    known: u32,
}

/// Most pings awaiting their pong that a session remembers.
const MAX_PROBES: usize = 8;

/// The end of a session whose client stopped taking frames.
fn stalled() -> End {
    End::Close(close::SESSION_TIMEOUT, "the client stopped reading for the session timeout".into())
}

async fn next_frame(rx: &mut Option<SplitStream<WebSocket>>) -> Option<Result<Message, axum::Error>> {
    match rx {
        Some(rx) => rx.next().await,
        None => std::future::pending().await,
    }
}

struct Position {
    log: Arc<PartitionLog>,
    /// Next offset to deliver.
    next: u64,
    /// Where delivery started (or was last moved by a seek or reset): nothing was sent
    /// while `next` is still there.
    baseline: u64,
    paused: bool,
    /// `tidegate_records_delivered_total` of the partition's topic.
    delivered: metrics::Counter,
}

/// A revoked partition the client (`auto_commit=false`) may still commit (see
/// `Session::revoking`).
struct Revoking {
    log: Arc<PartitionLog>,
    /// Where delivery stopped: the commit that covers it lets the partition go.
    sent: u64,
    /// The position's baseline (see [`Position::baseline`]), kept if it is read on.
    baseline: u64,
    /// When it goes to its new owner whatever was committed.
    until: Instant,
}

/// SSE event id: every position with its topic's incarnation
/// (`topic:partition:offset:incarnation`), so `Last-Event-ID` resumes exactly, and a
/// position saved before the topic was deleted and created again is not taken as one in
/// the new topic.
fn resume_id<'a>(positions: impl Iterator<Item = (&'a TopicPartition, &'a Arc<PartitionLog>, u64)>) -> String {
    positions.map(|((t, p), log, next)| format!("{t}:{p}:{next}:{}", log.incarnation())).collect::<Vec<_>>().join(",")
}

/// Resolves at the next append to a topic with an unpaused partition, or when the
/// store begins closing (which also fires every topic's signal: one registration per
/// wait instead of two on shared notifiers, a twelfth of the fan-out's CPU).
async fn next_append(
    signals: &mut [(Arc<PartitionLog>, watch::Receiver<u64>)],
    positions: &BTreeMap<TopicPartition, Position>,
    closing: &mut watch::Receiver<bool>,
) {
    let mut active = signals
        .iter_mut()
        .filter(|(log, _)| positions.values().any(|p| !p.paused && p.log.same_topic(log)))
        .map(|(_, rx)| rx);
    match (active.next(), active.next()) {
        (None, _) => {
            let _ = closing.changed().await;
        }
        // The common case (one topic) waits without allocating.
        (Some(only), None) => {
            let _ = only.changed().await;
        }
        (Some(a), Some(b)) => {
            let mut waits = vec![Box::pin(a.changed()), Box::pin(b.changed())];
            waits.extend(active.map(|rx| Box::pin(rx.changed())));
            let _ = futures_util::future::select_all(waits).await;
        }
    }
}

/// Parameters a session starts with.
pub struct SessionParams {
    pub topics: Vec<String>,
    pub group: Option<String>,
    pub member: Option<String>,
    pub from: StartFrom,
    pub auto_commit: bool,
    /// Explicit start positions (ephemeral resume), by topic partition.
    pub resume: BTreeMap<TopicPartition, u64>,
    pub client: String,
    /// When the caller's token expires: the session is closed then.
    pub expires_at: Option<std::time::SystemTime>,
}

struct Session {
    state: SharedState,
    params: SessionParams,
    member: String,
    generation: u64,
    /// Generation of the last `assignment` frame sent (see [`Control::Assign`]).
    announced: Option<u64>,
    positions: BTreeMap<TopicPartition, Position>,
    /// Last committed offset per partition (auto-commit only commits changes).
    committed: BTreeMap<TopicPartition, u64>,
    tx: Outbound,
    last_seen: Instant,
    round_robin: usize,
    /// One append signal per subscribed topic (a partition of it stands for the topic).
    signals: Vec<(Arc<PartitionLog>, watch::Receiver<u64>)>,
    /// Positions sent with pings not answered yet, oldest first (WebSocket only; at most
    /// [`MAX_PROBES`]): a pong proves the client received every frame written before
    /// its ping.
    probes: std::collections::VecDeque<(u64, Vec<(TopicPartition, u64)>)>,
    /// Number of the last probe sent.
    probe_seq: u64,
    /// Positions the client confirmed receiving (by a pong); what auto-commit commits
    /// for a WebSocket session. SSE cannot confirm: it commits what was written.
    confirmed: BTreeMap<TopicPartition, u64>,
    /// Revoked partitions no longer read that the client (`auto_commit=false`) may
    /// still commit, each with its log, the position it was sent up to, and when it
    /// goes to its new owner anyway (`revoke_commit_timeout_ms`).
    revoking: BTreeMap<TopicPartition, Revoking>,
    /// Every subscribed topic, with the partition count an ephemeral session reads:
    /// checked on each wake-up, so a session holding no partition of a deleted topic
    /// is closed too, and an ephemeral one starts reading partitions added to a topic.
    watched: Vec<Watched>,
}

/// A subscription's group membership, taken by the route before it answers (so the
/// member is listed in `/v1/groups/{group}` by the time the client has its 101 or
/// its SSE headers), then handed to the session. Dropped before that (the upgrade
/// never completed), it leaves the group at once.
pub struct Joined {
    state: SharedState,
    group: String,
    member: String,
    /// Present until the session takes the membership.
    control: Option<mpsc::UnboundedReceiver<Control>>,
}

/// What a route hands its session: `None` for an ephemeral subscription, else the
/// membership or the coordinator's refusal (reported over the subscription itself).
pub type Membership = Option<Result<Joined, GroupError>>;

impl Joined {
    /// Joins `params.group` (none for an ephemeral subscription).
    pub fn join(state: &SharedState, params: &SessionParams) -> Membership {
        let group = params.group.clone()?;
        let topics: BTreeSet<String> = params.topics.iter().cloned().collect();
        let joined = state.coordinator.join(&group, params.member.as_deref(), topics, params.client.clone());
        Some(joined.map(|(member, control)| Joined { state: state.clone(), group, member, control: Some(control) }))
    }

    /// The member id and its control channel, for the session (which from then on
    /// leaves or disconnects itself).
    fn into_parts(mut self) -> (String, Option<mpsc::UnboundedReceiver<Control>>) {
        (std::mem::take(&mut self.member), self.control.take())
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        if self.control.is_some() {
            self.state.coordinator.disconnect(&self.group, &self.member, true);
        }
    }
}

/// Runs a subscription to completion on an upgraded socket.
pub async fn run(state: SharedState, socket: WebSocket, params: SessionParams, joined: Membership) {
    let (tx, rx) = socket.split();
    run_on(state, Outbound::Ws(tx), Some(rx), params, joined).await;
}

/// Runs a subscription whose frames go out as Server-Sent Events.
pub async fn run_sse(state: SharedState, tx: mpsc::Sender<Event>, params: SessionParams, joined: Membership) {
    run_on(state, Outbound::Sse(tx), None, params, joined).await;
}

async fn run_on(
    state: SharedState,
    tx: Outbound,
    mut rx: Option<SplitStream<WebSocket>>,
    params: SessionParams,
    joined: Membership,
) {
    let mut control = None;
    let mut member = String::from("ephemeral");
    match joined {
        None => {}
        Some(Ok(joined)) => (member, control) = joined.into_parts(),
        Some(Err(e)) => {
            let mut tx = tx;
            let _ = tx.send("error", protocol::error("member_in_use", &e.to_string()), None, FINAL_FRAME_WAIT).await;
            if let Outbound::Ws(ws) = &mut tx {
                let _ =
                    tokio::time::timeout(FINAL_FRAME_WAIT, ws.send(close_msg(close::MEMBER_IN_USE, &e.to_string())))
                        .await;
            }
            return;
        }
    }
    metrics::gauge!("tidegate_subscriptions").increment(1.0);
    let mut s = Session {
        state: state.clone(),
        params,
        member,
        generation: 0,
        announced: None,
        positions: BTreeMap::new(),
        committed: BTreeMap::new(),
        tx,
        last_seen: Instant::now(),
        round_robin: 0,
        signals: Vec::new(),
        watched: Vec::new(),
        probes: std::collections::VecDeque::new(),
        probe_seq: 0,
        confirmed: BTreeMap::new(),
        revoking: BTreeMap::new(),
    };
    let end = match (s.watch_topics(), control.as_mut()) {
        (Err(end), _) => end,
        (Ok(()), Some(c)) => s.run(&mut rx, Some(c)).await,
        (Ok(()), None) => match s.start_ephemeral().await {
            Ok(()) => s.run(&mut rx, None).await,
            Err(end) => end,
        },
    };
    // A client's normal close leaves the group; so does a session closed because its
    // topic was deleted (a static member would otherwise hold the partitions of a topic
    // created again under the name until its session timeout), or because the client
    // went a session timeout without a sign of life (it already had that long).
    let leave = matches!(end, End::Close(code, _)
        if code == close::NORMAL || code == close::TOPIC_DELETED || code == close::SESSION_TIMEOUT);
    s.finish(end).await;
    if let Some(group) = &s.params.group {
        state.coordinator.disconnect(group, &s.member, leave);
    }
    metrics::gauge!("tidegate_subscriptions").decrement(1.0);
}

/// A close frame; the reason is cut to the 123 bytes the protocol allows.
fn close_msg(code: u16, reason: &str) -> Message {
    let mut cut = reason.len().min(120);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason[..cut];
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason.to_string()) }))
}

impl Session {
    fn cfg(&self) -> &crate::config::Config {
        &self.state.config
    }

    /// The member id, for group sessions.
    fn group_member(&self) -> Option<&str> {
        self.params.group.as_ref().map(|_| self.member.as_str())
    }

    async fn send(&mut self, kind: &'static str, text: String) -> Result<(), End> {
        let stall = self.stall();
        self.tx.send(kind, text, None, stall).await
    }

    /// How long a send may wait for the client: the session timeout.
    fn stall(&self) -> Duration {
        Duration::from_millis(self.cfg().session_timeout_ms)
    }

    /// Every position, in partition order.
    fn position_list(&self) -> Vec<(TopicPartition, u64)> {
        self.positions.iter().map(|(tp, p)| (tp.clone(), p.next)).collect()
    }

    /// The `assignment` frame: the current generation and positions.
    async fn send_assignment(&mut self) -> Result<(), End> {
        let list = self.position_list();
        self.announced = Some(self.generation);
        self.send("assignment", protocol::assignment(self.generation, self.group_member(), &list)).await
    }

    /// Drops the partitions `gone` selects from the unanswered pings' positions (their
    /// positions moved or they were revoked: an old pong must not confirm them).
    fn forget_probed(&mut self, gone: impl Fn(&TopicPartition) -> bool) {
        for (_, at) in &mut self.probes {
            at.retain(|(tp, _)| !gone(tp));
        }
    }

    /// Takes a handle on every subscribed topic (closing with 4001 when one is gone).
    fn watch_topics(&mut self) -> Result<(), End> {
        for topic in &self.params.topics {
            let gone = |e: StorageError| End::Close(close::TOPIC_DELETED, e.to_string());
            let handle = self.state.store.topic(topic).map_err(gone)?;
            let first = handle.partition(0).map_err(gone)?;
            let known = handle.partition_count();
            self.watched.push(Watched { topic: handle, first, known });
        }
        Ok(())
    }

    /// Ephemeral subscription: every partition of every topic.
    async fn start_ephemeral(&mut self) -> Result<(), End> {
        let parts: Vec<TopicPartition> =
            self.watched.iter().flat_map(|w| (0..w.known).map(|p| (w.topic.name.clone(), p))).collect();
        self.add_partitions(parts, self.params.from).await
    }

    /// Closes the session (4001) when a subscribed topic was deleted; for an ephemeral
    /// session, starts reading partitions added to a topic since, from their start
    /// (everything in them is new to the subscriber).
    async fn check_topics(&mut self) -> Result<(), End> {
        let ephemeral = self.params.group.is_none();
        let mut grown = Vec::new();
        for w in &mut self.watched {
            // One atomic load per topic: deletion marks every partition.
            if w.first.is_deleted() {
                return Err(End::Close(close::TOPIC_DELETED, format!("topic {} was deleted", w.topic.name)));
            }
            let count = if ephemeral { w.topic.partition_count() } else { continue };
            if count > w.known {
                grown.extend((w.known..count).map(|p| (w.topic.name.clone(), p)));
                w.known = count;
            }
        }
        if grown.is_empty() { Ok(()) } else { self.add_partitions(grown, StartFrom::Earliest).await }
    }

    /// Starts reading partitions: committed offset, else resume position, else `from`.
    async fn add_partitions(&mut self, parts: Vec<TopicPartition>, from: StartFrom) -> Result<(), End> {
        // Only new partitions need their committed offsets (an empty assignment just
        // announces a new generation).
        let committed: BTreeMap<TopicPartition, u64> = match &self.params.group {
            Some(g) if !parts.is_empty() => self
                .state
                .store
                .committed_offsets(g)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|c| ((c.topic, c.partition), c.offset))
                .collect(),
            _ => BTreeMap::new(),
        };
        for tp in parts {
            let Ok(log) = self.state.store.partition(&tp.0, tp.1) else { continue };
            // A position past the end (a topic deleted and re-created under the same
            // name, or a stale resume position) is out of range: start from `from`, as
            // Kafka's auto.offset.reset does, instead of waiting for offsets that the
            // log may take a long time to reach.
            let next = match committed.get(&tp).or(self.params.resume.get(&tp)) {
                Some(&o) if o <= log.high_watermark() => o,
                Some(&o) => {
                    let next = self.start_offset(&log, from).await;
                    tracing::info!(topic = %tp.0, partition = tp.1, position = o, next,
                        "stored position is past the end of the partition; starting from `from`");
                    next
                }
                None => self.start_offset(&log, from).await,
            };
            if let Some(c) = committed.get(&tp) {
                self.committed.insert(tp.clone(), *c);
            }
            // Nothing of the partition was sent yet: its start is confirmed.
            self.confirmed.insert(tp.clone(), next);
            let delivered = crate::metrics::delivered(&tp.0);
            self.positions.insert(tp, Position { log, next, baseline: next, paused: false, delivered });
        }
        self.positions_changed();
        self.send_assignment().await
    }

    /// Recomputes the topics' append signals after partitions were added or removed. A
    /// new signal's receiver starts as seen: the delivery round that follows reads every
    /// high watermark anyway.
    fn positions_changed(&mut self) {
        let positions = &self.positions;
        self.signals.retain(|(log, _)| positions.values().any(|p| p.log.same_topic(log)));
        for p in self.positions.values() {
            if !self.signals.iter().any(|(log, _)| log.same_topic(&p.log)) {
                self.signals.push((p.log.clone(), p.log.watch_topic_appends()));
            }
        }
    }

    async fn start_offset(&self, log: &Arc<PartitionLog>, from: StartFrom) -> u64 {
        match from {
            StartFrom::Earliest => log.start_offset(),
            StartFrom::Latest => log.high_watermark(),
            StartFrom::Offset(o) => o.min(log.high_watermark()),
            StartFrom::Timestamp(ts) => match self.state.store.offset_for_timestamp(log.clone(), ts).await {
                Ok(found) => found.offset,
                Err(_) => log.high_watermark(),
            },
        }
    }

    async fn run(
        &mut self,
        rx: &mut Option<SplitStream<WebSocket>>,
        mut control: Option<&mut mpsc::UnboundedReceiver<Control>>,
    ) -> End {
        let heartbeat = Duration::from_millis(self.cfg().heartbeat_interval_ms);
        let session_timeout = Duration::from_millis(self.cfg().session_timeout_ms);
        let auto_commit_every = Duration::from_millis(self.cfg().auto_commit_interval_ms);
        let mut next_ping = Instant::now() + heartbeat;
        let mut next_commit = Instant::now() + auto_commit_every;
        // The token's expiry as a point on the monotonic clock.
        let expires = self.params.expires_at.and_then(|at| {
            Instant::now().checked_add(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
        });
        let mut closing = self.state.store.closing_signal();
        // One timer for the session, moved only when its deadline changes (a new timer
        // per wake-up cost a timer-wheel insert and removal for every delivered frame).
        let sleep = tokio::time::sleep_until(next_ping);
        tokio::pin!(sleep);
        loop {
            // Control messages and client frames first, without waiting.
            if let Some(c) = control.as_deref_mut() {
                while let Ok(msg) = c.try_recv() {
                    if let Err(end) = self.on_control(msg).await {
                        return end;
                    }
                }
            }
            while let Some(frame) = next_frame(rx).now_or_never() {
                if let Err(end) = self.on_frame(frame).await {
                    return end;
                }
            }
            if self.tx.is_sse() {
                // SSE clients send nothing; liveness is the response being read.
                self.last_seen = Instant::now();
            }
            if *closing.borrow() {
                return End::Close(close::GOING_AWAY, "server shutting down".into());
            }
            if let Err(end) = self.check_topics().await {
                return end;
            }
            let now = Instant::now();
            self.settle_revoking(now);
            if expires.is_some_and(|at| now >= at) {
                return End::Close(close::TOKEN_EXPIRED, "the access token has expired".into());
            }
            if now >= next_ping {
                if now.duration_since(self.last_seen) > session_timeout {
                    return End::Close(close::SESSION_TIMEOUT, "no frame or pong within the session timeout".into());
                }
                if let Err(end) = self.probe().await {
                    return end;
                }
                next_ping = now + heartbeat;
            }
            if self.params.auto_commit && now >= next_commit {
                if self.tx.is_sse() {
                    self.commit_positions(None, false).await;
                } else if self.probes.back().is_none_or(|(_, at)| !self.at_positions(at))
                    && let Err(end) = self.probe().await
                {
                    // The pong commits what the client confirmed.
                    return end;
                }
                next_commit = now + auto_commit_every;
            }
            // Appends from here on wake the wait below; the round reads what came before.
            for (_, rx) in &mut self.signals {
                rx.mark_unchanged();
            }
            match self.deliver_round().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(end) => return end,
            }
            // Nothing to send: sleep until something changes.
            let wake_at = if self.params.auto_commit { next_ping.min(next_commit) } else { next_ping };
            let wake_at = expires.map_or(wake_at, |at| wake_at.min(at));
            let wake_at = self.revoking.values().map(|r| r.until).fold(wake_at, Instant::min);
            if sleep.deadline() != wake_at || sleep.is_elapsed() {
                sleep.as_mut().reset(wake_at);
            }
            let next_control = async {
                match control.as_deref_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = next_control => {
                    match msg {
                        Some(msg) => if let Err(end) = self.on_control(msg).await { return end },
                        None => return End::Close(close::GOING_AWAY, "group coordinator gone".into()),
                    }
                }
                () = self.tx.closed() => return End::Gone,
                frame = next_frame(rx) => {
                    if let Err(end) = self.on_frame(frame).await { return end }
                }
                () = next_append(&mut self.signals, &self.positions, &mut closing) => {}
                () = &mut sleep => {}
            }
        }
    }

    /// One delivery round: reads one frame from each partition with records (round
    /// robin from where the previous round stopped) and queues them while their bytes
    /// stay within `subscription_frame_bytes` (a round holds at least one frame), then
    /// writes them in one flush. True when a partition still has records to send after
    /// it; false when every partition is caught up (or paused), or a read failed (the
    /// session then waits for the next append instead of retrying at once). Frames not
    /// flushed are not delivered: their partitions keep their previous positions
    /// (auto-commit).
    async fn deliver_round(&mut self) -> Result<bool, End> {
        let budget = self.cfg().subscription_frame_bytes as usize;
        let stall = self.stall();
        let sse = self.tx.is_sse();
        let Session { state, positions, tx, round_robin, .. } = self;
        // The positions in delivery order, starting where the previous round stopped
        // (walked directly: no per-partition key lookups).
        let mut walk: Vec<(&TopicPartition, &mut Position)> = positions.iter_mut().collect();
        let n = walk.len();
        if n == 0 {
            return Ok(false);
        }
        let first = *round_robin % n;
        walk.rotate_left(first);
        // Per queued frame: its index in `walk`, the position before it, and its records.
        let mut queued: Vec<(usize, u64, u64)> = Vec::new();
        let mut queued_bytes = 0;
        let mut more = true;
        let mut failed = None;
        for i in 0..n {
            let (tp, pos) = &mut walk[i];
            if pos.log.is_deleted() {
                failed = Some(End::Close(close::TOPIC_DELETED, format!("topic {} was deleted", tp.0)));
                break;
            }
            if pos.paused || pos.next >= pos.log.high_watermark() {
                continue;
            }
            *round_robin = (first + i + 1) % n;
            let next = pos.next;
            let log = &pos.log;
            // Below the log start (retention moved it), a cached frame holds records
            // that are gone: the read reports the gap instead.
            let cached = if next >= log.start_offset() { state.frames.get(log.storage_id(), next) } else { None };
            let frame = match cached {
                Some(frame) => Ok(frame),
                None => {
                    let limits = ReadLimits { max_records: MAX_FRAME_RECORDS, max_bytes: budget };
                    state.store.fetch(log.clone(), next, limits, Duration::ZERO).await.map(|read| {
                        let frame = CachedFrame {
                            text: protocol::records(&tp.0, tp.1, &read.records).into(),
                            next_offset: read.next_offset,
                            count: read.records.len() as u64,
                        };
                        if frame.count > 0 {
                            state.frames.insert(log.storage_id(), next, frame.clone());
                        }
                        frame
                    })
                }
            };
            let (kind, text, next_offset, count) = match frame {
                Ok(frame) if frame.count == 0 => continue,
                Ok(frame) => ("records", frame.text, frame.next_offset, frame.count),
                Err(StorageError::OffsetOutOfRange { start, end, .. }) => {
                    let to = if next < start { start } else { end };
                    ("gap", protocol::gap(&tp.0, tp.1, next, to).into(), to, 0)
                }
                Err(StorageError::TopicDeleted(t) | StorageError::TopicNotFound(t)) => {
                    failed = Some(End::Close(close::TOPIC_DELETED, format!("topic {t} was deleted")));
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "subscription read failed");
                    more = false;
                    ("error", protocol::error("storage_error", &crate::error::storage_detail(&e)).into(), next, 0)
                }
            };
            if !queued.is_empty() && queued_bytes + text.len() > budget {
                // Over the round's bound: this partition starts the next round.
                *round_robin = (first + i) % n;
                break;
            }
            pos.next = next_offset;
            queued.push((i, next, count));
            queued_bytes += text.len();
            // `walk` is rotated by `first`: the id lists the partitions in key order.
            let id = sse.then(|| {
                let (head, tail) = walk.split_at(n - first);
                resume_id(tail.iter().chain(head).map(|(tp, p)| (*tp, &p.log, p.next)))
            });
            if let Err(end) = tx.feed(kind, text, id, stall).await {
                failed = Some(end);
                break;
            }
            if !more {
                break;
            }
        }
        if failed.is_none()
            && !queued.is_empty()
            && let Err(end) = tx.flush(stall).await
        {
            failed = Some(end);
        }
        if let Some(end) = failed {
            // Frames queued but not written are not delivered: their partitions go back
            // to their positions before those frames.
            for (i, before, _) in queued {
                walk[i].1.next = before;
            }
            return Err(end);
        }
        if queued.is_empty() {
            return Ok(false);
        }
        for (i, _, count) in queued {
            if count > 0 {
                walk[i].1.delivered.increment(count);
            }
        }
        // Another round at once only if records are already waiting (the round stopped
        // at its byte bound, or a frame at its record bound); appends from now on fire
        // the topic signal, so an empty round per wake-up would only cost a pass over
        // the partitions and a read attempt on the socket.
        Ok(more && walk.iter().any(|(_, p)| !p.paused && p.next < p.log.high_watermark()))
    }

    async fn on_control(&mut self, msg: Control) -> Result<(), End> {
        match msg {
            Control::Assign { generation, partitions, grown } => {
                self.generation = generation;
                if self.read_on_revoking() {
                    // Partitions the rebalance gave back while they waited to be handed
                    // over are read on from where delivery stopped (the client learns it
                    // from the assignment frame).
                    self.positions_changed();
                    self.announced = None;
                }
                let (grown, new): (Vec<TopicPartition>, Vec<TopicPartition>) = partitions
                    .into_iter()
                    .filter(|tp| !self.positions.contains_key(tp))
                    .partition(|tp| grown.contains(tp));
                if grown.is_empty() && new.is_empty() && self.announced == Some(generation) {
                    // Nothing new: this generation's assignment was already sent (with
                    // the `revoked` frame of the same rebalance).
                    return Ok(());
                }
                if grown.is_empty() {
                    return self.add_partitions(new, self.params.from).await;
                }
                if !new.is_empty() {
                    self.add_partitions(new, self.params.from).await?;
                }
                self.add_partitions(grown, StartFrom::Earliest).await
            }
            Control::Forget => {
                self.committed.clear();
                Ok(())
            }
            Control::Reset { offsets } => {
                // A forced reset supersedes what a revoked partition's old owner could
                // still commit: it goes to its new owner now, from the reset offset
                // (stored again, after any commit of this session that was in flight).
                let mut superseded = Vec::new();
                let mut rows = Vec::new();
                for (tp, offset) in &offsets {
                    if let Some(r) = self.revoking.remove(tp) {
                        self.committed.remove(tp);
                        rows.push((r.log, *offset));
                        superseded.push(tp.clone());
                    }
                }
                if let (false, Some(group)) = (rows.is_empty(), &self.params.group)
                    && let Err(e) = self.state.store.commit_offsets(group, rows).await
                {
                    tracing::warn!(group = %group, error = %e, "storing a forced reset again failed");
                }
                self.hand_over(&superseded);
                let mut moved = Vec::new();
                for (tp, offset) in offsets {
                    if let Some(p) = self.positions.get_mut(&tp) {
                        p.next = offset;
                        p.baseline = offset;
                        self.committed.remove(&tp);
                        self.confirmed.insert(tp.clone(), offset);
                        self.forget_probed(|t| *t == tp);
                        moved.push(tp);
                    }
                }
                // This session's own commit of its old positions may have been in flight
                // while the reset was stored, and landed after it. Controls are handled
                // between this session's commits, so storing the reset offsets again
                // here is ordered after any such write.
                if !moved.is_empty() {
                    self.commit_positions(Some(&moved), false).await;
                }
                self.send_assignment().await
            }
            Control::Revoke { generation, partitions } => {
                self.generation = generation;
                if self.params.auto_commit {
                    self.commit_positions(Some(&partitions), false).await;
                }
                // A client committing by itself may still commit what it was sent
                // (see `revoking`); one that committed all of it lets go at once.
                let grace = Duration::from_millis(self.cfg().revoke_commit_timeout_ms);
                let may_commit = !self.params.auto_commit && !self.tx.is_sse() && !grace.is_zero();
                let mut now_free = Vec::with_capacity(partitions.len());
                for tp in &partitions {
                    let stopped = self.positions.remove(tp);
                    let committed = self.committed.remove(tp);
                    self.confirmed.remove(tp);
                    match stopped {
                        // Something was sent since delivery started (or was moved) that
                        // the client has not committed.
                        Some(p) if may_commit && p.next != p.baseline && committed.is_none_or(|c| c < p.next) => {
                            let until = Instant::now() + grace;
                            let revoking = Revoking { log: p.log, sent: p.next, baseline: p.baseline, until };
                            self.revoking.insert(tp.clone(), revoking);
                        }
                        _ if self.revoking.contains_key(tp) => {}
                        _ => now_free.push(tp.clone()),
                    }
                }
                self.forget_probed(|tp| partitions.contains(tp));
                self.positions_changed();
                // Stopped: only now may another member read them.
                self.hand_over(&now_free);
                self.send("revoked", protocol::revoked(generation, &partitions)).await?;
                self.send_assignment().await
            }
        }
    }

    /// Tells the coordinator this session stopped reading `partitions` (and is done
    /// committing them): they go to their new owners.
    fn hand_over(&self, partitions: &[TopicPartition]) {
        if let (false, Some(group)) = (partitions.is_empty(), &self.params.group) {
            self.state.coordinator.revoked(group, &self.member, partitions);
        }
    }

    /// Takes back the revoked partitions that the group's latest rebalance targets to
    /// this member again (another member left before they were handed over): they are
    /// still this member's in the coordinator, so it reads on from where it stopped.
    /// True when it took any back.
    fn read_on_revoking(&mut self) -> bool {
        let Some(group) = &self.params.group else { return false };
        if self.revoking.is_empty() {
            return false;
        }
        let waiting: Vec<TopicPartition> = self.revoking.keys().cloned().collect();
        let back = self.state.coordinator.targeted_to(group, &self.member, &waiting);
        for tp in &back {
            if let Some(r) = self.revoking.remove(tp) {
                let delivered = crate::metrics::delivered(&tp.0);
                let p = Position { log: r.log, next: r.sent, baseline: r.baseline, paused: false, delivered };
                self.positions.insert(tp.clone(), p);
            }
        }
        !back.is_empty()
    }

    /// Hands over the revoked partitions whose commits now cover what was sent, and
    /// those whose `revoke_commit_timeout_ms` has passed (by `now`).
    fn settle_revoking(&mut self, now: Instant) {
        if self.revoking.is_empty() {
            return;
        }
        let done: Vec<TopicPartition> = self
            .revoking
            .iter()
            .filter(|(tp, r)| now >= r.until || self.committed.get(*tp).is_some_and(|c| *c >= r.sent))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in &done {
            self.revoking.remove(tp);
            self.committed.remove(tp);
        }
        self.hand_over(&done);
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let msg = match frame {
            // tungstenite's refusal of an oversized frame ("Space limit exceeded: Message
            // too long"): the socket is still writable, so the client learns why.
            Some(Err(e)) if e.to_string().contains("Space limit exceeded") => {
                let max = self.cfg().max_client_frame_bytes;
                return Err(End::Close(
                    close::TOO_BIG,
                    format!("frames from the client are at most {max} bytes (setting max_client_frame_bytes)"),
                ));
            }
            None | Some(Err(_)) => return Err(End::Gone),
            Some(Ok(m)) => m,
        };
        self.last_seen = Instant::now();
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return Err(End::Close(close::NORMAL, "client closed".into())),
            Message::Ping(_) => return Ok(()),
            Message::Pong(payload) => return self.on_pong(&payload).await,
            Message::Binary(_) => {
                return self.send("error", protocol::error("invalid_frame", "frames are JSON text")).await;
            }
        };
        let frame: ClientFrame = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => return self.send("error", protocol::error("invalid_frame", &e.to_string())).await,
        };
        let default_topic = self.params.topics[0].clone();
        match frame {
            ClientFrame::Commit { offsets, generation } => {
                let Some(group) = self.params.group.clone() else {
                    return self.send("error", protocol::error("no_group", "commits need a group subscription")).await;
                };
                let offsets: Vec<(TopicPartition, u64)> = offsets
                    .into_iter()
                    .map(|o| ((o.topic.unwrap_or_else(|| default_topic.clone()), o.partition), o.offset))
                    .collect();
                let parts: Vec<TopicPartition> = offsets.iter().map(|(tp, _)| tp.clone()).collect();
                if let Err(e) = self.state.coordinator.check_commit(&group, &self.member, generation, &parts) {
                    return self.send("error", protocol::error("commit_refused", &e.to_string())).await;
                }
                // The next offset to read can be at most the high watermark: a commit
                // past it would make the group skip records not written yet.
                let mut rows = Vec::with_capacity(offsets.len());
                for ((t, p), o) in &offsets {
                    let tp = (t.clone(), *p);
                    let log = self.positions.get(&tp).map(|pos| pos.log.clone());
                    let Some(log) = log.or_else(|| self.revoking.get(&tp).map(|r| r.log.clone())) else {
                        let detail = format!("{t}/{p} is not being read by this member");
                        return self.send("error", protocol::error("commit_refused", &detail)).await;
                    };
                    let end = log.high_watermark();
                    if *o > end {
                        let detail = format!("offset {o} is past the end of {t}/{p} (high watermark {end})");
                        return self.send("error", protocol::error("commit_refused", &detail)).await;
                    }
                    rows.push((log, *o));
                }
                let stored = self.store_commit(&group, offsets, rows).await;
                self.settle_revoking(Instant::now());
                stored
            }
            ClientFrame::Seek { topic, partition, offset, timestamp, to } => {
                let tp = (topic.unwrap_or(default_topic), partition);
                let Some(log) = self.positions.get(&tp).map(|p| p.log.clone()) else {
                    return self
                        .send("error", protocol::error("not_assigned", &format!("{}/{} is not assigned", tp.0, tp.1)))
                        .await;
                };
                let from = match (offset, timestamp, to.as_deref()) {
                    (Some(o), None, None) => StartFrom::Offset(o),
                    (None, Some(ts), None) => StartFrom::Timestamp(ts),
                    (None, None, Some("earliest")) => StartFrom::Earliest,
                    (None, None, Some("latest")) => StartFrom::Latest,
                    _ => {
                        return self
                            .send(
                                "error",
                                protocol::error(
                                    "invalid_frame",
                                    "seek takes one of offset, timestamp, to=earliest|latest",
                                ),
                            )
                            .await;
                    }
                };
                let next = self.start_offset(&log, from).await;
                if let Some(p) = self.positions.get_mut(&tp) {
                    p.next = next;
                    p.baseline = next;
                }
                self.send_assignment().await
            }
            ClientFrame::Pause { partitions } => self.pause_or_resume(partitions, true, &default_topic).await,
            ClientFrame::Resume { partitions } => self.pause_or_resume(partitions, false, &default_topic).await,
        }
    }

    /// Pauses or resumes the listed partitions (all without a list); the ones listed
    /// that this session does not read are named in a `not_assigned` error (the others
    /// are still paused or resumed).
    async fn pause_or_resume(
        &mut self,
        parts: Option<Vec<super::protocol::PartitionRef>>,
        paused: bool,
        default_topic: &str,
    ) -> Result<(), End> {
        let mut unknown = Vec::new();
        match parts {
            None => self.positions.values_mut().for_each(|p| p.paused = paused),
            Some(list) => {
                for r in list {
                    let tp = (r.topic.unwrap_or_else(|| default_topic.to_string()), r.partition);
                    match self.positions.get_mut(&tp) {
                        Some(p) => p.paused = paused,
                        None => unknown.push(format!("{}/{}", tp.0, tp.1)),
                    }
                }
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let verb = if paused { "pause" } else { "resume" };
        let detail = format!("cannot {verb} {}: not assigned to this session", unknown.join(", "));
        self.send("error", protocol::error("not_assigned", &detail)).await
    }

    /// Stores a client's commit: `rows` are `offsets` with the partition logs they were
    /// read from.
    async fn store_commit(
        &mut self,
        group: &str,
        offsets: Vec<(TopicPartition, u64)>,
        rows: Vec<(Arc<PartitionLog>, u64)>,
    ) -> Result<(), End> {
        match self.state.store.commit_offsets(group, rows).await {
            Ok(()) => {
                for (tp, o) in &offsets {
                    self.committed.insert(tp.clone(), *o);
                }
                self.send("committed", protocol::committed(&offsets)).await
            }
            Err(e) => {
                tracing::error!(group, error = %e, "offset commit failed");
                self.send("error", protocol::error("commit_failed", &crate::error::storage_detail(&e))).await
            }
        }
    }

    /// Commits the delivered position of owned partitions that moved since the
    /// last commit (only records already sent count as delivered).
    ///
    /// With `confirmed_only` (a WebSocket client that may be gone), a partition's
    /// position is the one the client confirmed by a pong, never more than what was
    /// written: records still in the socket's buffers when a client dies are not
    /// committed, so the next member gets them (at-least-once).
    async fn commit_positions(&mut self, only: Option<&[TopicPartition]>, confirmed_only: bool) {
        let Some(group) = self.params.group.clone() else { return };
        let changed: Vec<(TopicPartition, &Arc<PartitionLog>, u64)> = self
            .positions
            .iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .filter_map(|(tp, p)| match confirmed_only {
                false => Some((tp, &p.log, p.next)),
                true => self.confirmed.get(tp).map(|c| (tp, &p.log, (*c).min(p.next))),
            })
            .filter(|(tp, _, next)| self.committed.get(*tp) != Some(next))
            .map(|(tp, log, next)| (tp.clone(), log, next))
            .collect();
        if changed.is_empty() {
            return;
        }
        let rows = changed.iter().map(|(_, log, o)| (Arc::clone(log), *o)).collect();
        let changed: Vec<(TopicPartition, u64)> = changed.into_iter().map(|(tp, _, o)| (tp, o)).collect();
        match self.state.store.commit_offsets(&group, rows).await {
            Ok(()) => {
                for (tp, o) in changed {
                    self.committed.insert(tp, o);
                }
            }
            // The topic went away under the session (which closes it with 4001): nothing
            // to commit to, and not a fault worth a warning per session.
            Err(e @ (StorageError::TopicDeleted(_) | StorageError::TopicNotFound(_))) => {
                tracing::debug!(group = %group, error = %e, "auto-commit skipped: the topic is gone");
            }
            Err(e) => tracing::warn!(group = %group, error = %e, "auto-commit failed"),
        }
    }

    /// Sends a ping carrying the current positions (see [`Session::probes`]).
    async fn probe(&mut self) -> Result<(), End> {
        self.probe_seq += 1;
        if !self.tx.is_sse() {
            let at = self.position_list();
            if self.probes.len() == MAX_PROBES {
                self.probes.pop_front();
            }
            self.probes.push_back((self.probe_seq, at));
        }
        let stall = self.stall();
        self.tx.ping(self.probe_seq, stall).await
    }

    /// Whether `at` lists exactly the current positions.
    fn at_positions(&self, at: &[(TopicPartition, u64)]) -> bool {
        at.len() == self.positions.len()
            && at.iter().all(|(tp, o)| self.positions.get(tp).is_some_and(|p| p.next == *o))
    }

    /// A pong: the positions of its ping (and of every earlier one) reached the client;
    /// with auto-commit, they are committed.
    async fn on_pong(&mut self, payload: &[u8]) -> Result<(), End> {
        let Some(seq) = payload.try_into().ok().map(u64::from_be_bytes) else { return Ok(()) };
        let Some(i) = self.probes.iter().position(|(s, _)| *s == seq) else { return Ok(()) };
        let (_, at) = self.probes.drain(..=i).next_back().expect("drained up to a found index");
        // The latest confirmed positions win (a seek may have moved one back).
        self.confirmed.extend(at);
        if self.params.auto_commit {
            self.commit_positions(None, true).await;
        }
        Ok(())
    }

    /// Final commit (auto-commit) and close frame. A session that ended because its
    /// client went away or stopped answering commits only what the client confirmed;
    /// one the client closed, or the server ended with a close frame, commits what
    /// was written.
    async fn finish(&mut self, end: End) {
        if self.params.auto_commit {
            let client_lost = match &end {
                End::Gone => true,
                End::Close(code, _) => *code == close::SESSION_TIMEOUT,
            };
            self.commit_positions(None, client_lost && !self.tx.is_sse()).await;
        }
        if let End::Close(code, reason) = end {
            if code != close::NORMAL {
                // SSE clients see no close code: the error frame names the reason.
                let what = if code == close::TOKEN_EXPIRED { "token_expired" } else { "closing" };
                let _ = self.tx.send("error", protocol::error(what, &reason), None, FINAL_FRAME_WAIT).await;
            }
            if let Outbound::Ws(ws) = &mut self.tx {
                let _ = tokio::time::timeout(FINAL_FRAME_WAIT, ws.send(close_msg(code, &reason))).await;
            }
        }
        if let Outbound::Ws(ws) = &mut self.tx {
            let _ = tokio::time::timeout(FINAL_FRAME_WAIT, ws.close()).await;
        }
    }
}
