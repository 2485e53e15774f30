//! The write path shared by the ingest endpoints (`/v1/topics/{t}/events` and the
//! Segment-compatible API): schema screening with dead letters, deduplication by
//! event id, partition choice, encoding, and one atomic append.
//!
//! A request is atomic: its events (to any topics, dead letters included) and the
//! dedup entries of their ids are stored in one storage write, or nothing is. Events
//! whose id was seen within the window are not written again; they are answered with
//! the first copy's place. The same id twice in one request is written once.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tidegate_storage::{
    BatchBuilder, EncodedBatch, IdState, IdWrite, IdWrites, PartitionLog, Remembered, StorageError, Topic,
};

use super::ids::RequestIds;
use super::partitioner::partition_for_key;
use super::rules::TopicRules;
use crate::error::{ApiError, EventError};
use crate::request_memory::MemoryGrant;
use crate::state::SharedState;

/// Requests whose payload is at least this large are encoded on a blocking thread.
const INLINE_ENCODE_BYTES: u64 = 64 * 1024;

/// Headers a dead letter carries.
pub mod dead_letter_headers {
    /// Why the event failed the schema.
    pub const REASON: &str = "dlq-reason";
    /// JSON pointer to the failing value.
    pub const PATH: &str = "dlq-path";
    /// The topic the event was posted to.
    pub const SOURCE_TOPIC: &str = "dlq-source-topic";
}

/// Whether a record header name is the gateway's to set: its own headers (see
/// [`super::privacy::headers`]) and the dead-letter ones, compared without case. A
/// producer may not set them, so readers can trust them (a forged `client-ip` would
/// defeat the `client_ip` privacy setting, a forged `dlq-reason` fake a dead letter).
pub fn is_reserved_header(name: &str) -> bool {
    use super::privacy::headers::{ANONYMOUS, CLIENT_IP, RECEIVED_AT, USER_AGENT};
    use dead_letter_headers::{PATH, REASON, SOURCE_TOPIC};
    [RECEIVED_AT, CLIENT_IP, USER_AGENT, ANONYMOUS, REASON, PATH, SOURCE_TOPIC]
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
}

/// A topic a request writes to, with its rules.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The topic's name.
    pub name: String,
    /// The topic; `None` while it does not exist yet and is to be created by
    /// [`commit`], once every event of the request passed validation.
    topic: Option<Arc<Topic>>,
    /// Its compiled rules (a topic to be created has the defaults' rules).
    pub rules: Arc<TopicRules>,
    /// Index of its dead-letter topic in the [`TopicSet`].
    pub dead_letter: Option<usize>,
}

impl Destination {
    /// The topic, once it exists (always, inside [`commit`] after the creation step).
    fn topic(&self) -> Result<&Arc<Topic>, ApiError> {
        self.topic.as_ref().ok_or_else(|| {
            ApiError::Storage(StorageError::Internal(format!("topic {:?} used before it was created", self.name)))
        })
    }

    /// The topic, if it exists already (a topic still to be created remembers no id).
    pub fn existing(&self) -> Option<&Arc<Topic>> {
        self.topic.as_ref()
    }

    /// Its partition count (for a topic to be created, the count it will get). Counts
    /// only grow, so a partition below it stays valid until the request commits.
    pub fn partition_count(&self, state: &SharedState) -> u32 {
        self.topic.as_ref().map_or(state.config.default_partitions, |t| t.partition_count())
    }
}

/// The topics of one request (the addressed ones and their dead-letter topics).
///
/// Topics that do not exist yet (auto-created ones, Segment's, dead-letter topics) are
/// created only when the request is about to be written: a request refused for its
/// body, its events or their ids leaves no topic behind.
#[derive(Debug, Clone, Default)]
pub struct TopicSet {
    /// Topics in the order they were added.
    pub list: Vec<Destination>,
}

/// How to find a topic that may not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Create it only when `auto_create_topics` is on (else 404).
    IfConfigured,
    /// Always create it (Segment topics, dead-letter topics).
    Always,
    /// Never create it (requests authorised by a public write key: anyone could make
    /// any number of topics matching its patterns).
    Never,
}

impl TopicSet {
    /// Index of `name`, adding it (and its dead-letter topic) when it is new. Refuses
    /// (404) a topic that does not exist and may not be created; creates nothing.
    pub fn add(&mut self, state: &SharedState, name: &str, create: Create) -> Result<usize, ApiError> {
        if let Some(i) = self.index_of(name) {
            return Ok(i);
        }
        let index = self.push(state, name, create)?;
        if let Some(dlq) = self.list[index].rules.dead_letter_topic.clone() {
            let dlq_index = match self.index_of(&dlq) {
                Some(i) => i,
                None => self.push(state, &dlq, Create::Always)?,
            };
            self.list[index].dead_letter = Some(dlq_index);
        }
        Ok(index)
    }

    fn push(&mut self, state: &SharedState, name: &str, create: Create) -> Result<usize, ApiError> {
        let internal = |e| ApiError::Storage(StorageError::Internal(e));
        let topic = state.existing_for_ingest(name, create)?;
        let rules = match &topic {
            Some(t) => state.rules.rules(t).map_err(internal)?,
            None => Arc::new(TopicRules::from_config(&state.ingest_topic_config()).map_err(internal)?),
        };
        self.list.push(Destination { name: name.to_string(), topic, rules, dead_letter: None });
        Ok(self.list.len() - 1)
    }

    /// Index of an already added topic.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|d| d.name == name)
    }

    /// Creates the topics that do not exist yet. Rules were taken from the settings such
    /// a topic is created with; a topic created meanwhile by someone else is taken as it
    /// is, as when its settings change while a request is under way.
    async fn create_missing(&mut self, state: &SharedState) -> Result<(), ApiError> {
        for d in &mut self.list {
            if d.topic.is_none() {
                d.topic = Some(state.create_for_ingest(&d.name).await?);
            }
        }
        Ok(())
    }
}

/// Why an event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterNote {
    /// The schema error (`None` when answering a retry of an event dead-lettered before).
    pub reason: Option<String>,
    /// JSON pointer to the failing value.
    pub path: Option<String>,
}

/// One event of a request, owned, on its way to the log.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Index in the [`TopicSet`] of the topic it is written to.
    pub topic: usize,
    /// Index of the topic the client addressed (whose dedup memory holds its id).
    pub scope: usize,
    /// The payload.
    pub value: Bytes,
    /// Whether `value` is JSON text.
    pub json: bool,
    /// Record key.
    pub key: Option<Bytes>,
    /// Explicit partition.
    pub partition: Option<u32>,
    /// The record's own headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp (default: the receive time).
    pub timestamp: Option<i64>,
    /// Dedup id (namespaced, see [`super::ids`]).
    pub id: Option<Vec<u8>>,
    /// For a dead-lettered event of a request sent with an `Idempotency-Key`: the id
    /// `K:<index>`, remembered with its dead-letter place (unlike [`Outgoing::id`], which
    /// a dead letter leaves unremembered), so that a retry of the request writes it again
    /// no more than its accepted events.
    pub replay_id: Option<Vec<u8>>,
    /// Set when the event failed its topic's schema and goes to the dead-letter topic.
    pub dead_letter: Option<DeadLetterNote>,
    /// Set when the event failed its topic's schema and the topic has no dead-letter
    /// topic: [`commit`] refuses the request with it, unless the event's id was stored
    /// before (a retry of an event accepted before the schema changed is a duplicate).
    pub refusal: Option<EventError>,
}

impl Outgoing {
    /// A JSON event for `topic` with nothing else set.
    pub fn json(topic: usize, value: Bytes) -> Outgoing {
        Outgoing {
            topic,
            scope: topic,
            value,
            json: true,
            key: None,
            partition: None,
            headers: Vec::new(),
            timestamp: None,
            id: None,
            replay_id: None,
            dead_letter: None,
            refusal: None,
        }
    }
}

/// Applies the schema of the event's topic: a valid event passes; an invalid one is
/// redirected to the dead-letter topic (with `dlq-*` headers) when the topic has one,
/// else handed back with the failure.
pub fn screen(set: &TopicSet, index: usize, mut event: Outgoing) -> Screened {
    let dest = &set.list[event.topic];
    let Err(failure) = dest.rules.check(&event.value, event.json) else { return Screened::Passed(event) };
    match dest.dead_letter {
        Some(dlq) => {
            event.headers.push((dead_letter_headers::REASON.into(), failure.reason.clone().into_bytes()));
            event.headers.push((dead_letter_headers::PATH.into(), failure.path.clone().into_bytes()));
            event.headers.push((dead_letter_headers::SOURCE_TOPIC.into(), dest.name.clone().into_bytes()));
            event.topic = dlq;
            // The dead-letter topic has its own partitions: the key decides, if any.
            event.partition = None;
            event.dead_letter = Some(DeadLetterNote { reason: Some(failure.reason), path: Some(failure.path) });
            Screened::Passed(event)
        }
        None => {
            let error = EventError {
                index,
                position: None,
                path: Some(failure.path.clone()),
                detail: format!(
                    "does not match the schema of topic {:?} at {:?}: {}",
                    dest.name, failure.path, failure.reason
                ),
            };
            Screened::Failed(event, error)
        }
    }
}

/// What [`screen`] made of an event.
pub enum Screened {
    /// Valid, or redirected to its topic's dead-letter topic.
    Passed(Outgoing),
    /// Invalid, and its topic has no dead-letter topic: the event and why.
    Failed(Outgoing, EventError),
}

/// Where one event of a request is (or already was) stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index in the [`TopicSet`] of the topic holding it.
    pub topic: usize,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// A copy of this event was stored before (within the window or earlier in this
    /// request); nothing was written for it now.
    pub duplicate: bool,
    /// Set when the event is in the dead-letter topic.
    pub dead_letter: Option<DeadLetterNote>,
}

/// What the encoder produced for the events to write.
struct Encoded {
    batches: Vec<(Arc<PartitionLog>, EncodedBatch)>,
    /// Per event to write: (batch index, position in it).
    slots: Vec<(usize, u32)>,
    /// Payload bytes per batch.
    payload: Vec<u64>,
}

/// Chooses partitions and encodes one batch per (topic, partition), keeping order.
/// `events` are (request index, event); errors name the request index.
fn encode(
    set: &TopicSet,
    events: &[(usize, &Outgoing)],
    shared: &[(&'static str, Vec<u8>)],
    sticky: &[u32],
    received: i64,
) -> Result<Encoded, ApiError> {
    let shared: Vec<(&str, &[u8])> = shared.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let mut errors = Vec::new();
    let mut builders: Vec<((usize, u32), BatchBuilder)> = Vec::new();
    let mut slots = Vec::with_capacity(events.len());
    let mut payload: Vec<u64> = Vec::new();
    let per_batch = events.iter().map(|(_, e)| e.value.len() + 32).sum::<usize>().min(4 << 20);
    // Read once per request: every event of a topic sees the same partition count.
    let counts: Vec<u32> = set.list.iter().map(|d| d.topic().map(|t| t.partition_count())).collect::<Result<_, _>>()?;
    let mut own: Vec<(&str, &[u8])> = Vec::new();
    for &(index, event) in events {
        let partitions = counts[event.topic];
        let key = event.key.as_deref();
        let partition = match event.partition {
            Some(p) if p >= partitions => {
                errors
                    .push(EventError::new(index, format!("partition {p} does not exist (the topic has {partitions})")));
                continue;
            }
            Some(p) => p,
            None => key.map_or(sticky[event.topic] % partitions, |k| partition_for_key(k, partitions)),
        };
        let b = match builders.iter().position(|(at, _)| *at == (event.topic, partition)) {
            Some(b) => b,
            None => {
                builders.push(((event.topic, partition), BatchBuilder::new(&shared, per_batch)));
                payload.push(0);
                builders.len() - 1
            }
        };
        own.clear();
        own.extend(event.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        let builder = &mut builders[b].1;
        slots.push((b, builder.count()));
        builder.push(event.timestamp.unwrap_or(received), key, &own, &event.value, event.json);
        payload[b] += event.value.len() as u64;
    }
    if !errors.is_empty() {
        errors.truncate(super::parse::MAX_LISTED_ERRORS);
        return Err(ApiError::InvalidEvents { errors });
    }
    let mut batches = Vec::with_capacity(builders.len());
    for ((topic, partition), builder) in builders {
        let part = set.list[topic].topic()?.partition(partition)?;
        batches.push((part, builder.finish(0)));
    }
    Ok(Encoded { batches, slots, payload })
}

/// The copy of an id that later copies in the same request repeat.
struct FirstCopy {
    /// The id's claim.
    claim: usize,
    /// Request index of the copy (the first accepted one, else the first one).
    index: usize,
    /// Whether that copy is dead-lettered.
    dead: bool,
}

/// How an event of the request is handled after the dedup lookup.
#[derive(Debug, Clone, Copy)]
enum Fate {
    /// Written now; `claim` is its id's claim.
    Write { claim: Option<usize> },
    /// Its id was stored before.
    Seen(Remembered),
    /// Same id as the earlier event at this request index.
    Repeat(usize),
}

/// Checks what can be checked before any topic is created: explicit partitions (of a
/// topic to be created, against the count it will get) and the records' headers.
fn check_events(state: &SharedState, set: &TopicSet, events: &[Outgoing]) -> Result<(), ApiError> {
    let counts: Vec<u32> = set.list.iter().map(|d| d.partition_count(state)).collect();
    let max_headers = state.config.max_record_headers as usize;
    let max_name = state.config.max_header_name_bytes as usize;
    let mut errors = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let partitions = counts[event.topic];
        if let Some(p) = event.partition.filter(|p| *p >= partitions) {
            errors.push(EventError::new(index, format!("partition {p} does not exist (the topic has {partitions})")));
        } else if event.headers.len() > max_headers || event.headers.iter().any(|(n, _)| n.len() > max_name) {
            errors.push(EventError::new(
                index,
                format!(
                    "at most {max_headers} headers per record (setting max_record_headers), names at most \
                     {max_name} bytes (setting max_header_name_bytes)"
                ),
            ));
        }
        if errors.len() == super::parse::MAX_LISTED_ERRORS {
            break;
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::InvalidEvents { errors }) }
}

/// When a request is answered.
#[derive(Debug)]
pub enum Answer {
    /// Once its events are written as the fsync policy asks, with their offsets.
    AfterWrite,
    /// Once its events are queued for the writer (`acks=none`); `hold` (the request's
    /// body memory) is kept until the writer is done with them.
    OnceQueued { hold: Option<MemoryGrant> },
}

/// Writes the events of one request atomically and says where each one is, in
/// request order (`None` with [`Answer::OnceQueued`]: the append is only queued).
/// Topics of `set` that do not exist yet are created here, after the events passed
/// every check that does not need them.
pub async fn commit(
    state: &SharedState,
    set: &mut TopicSet,
    events: Vec<Outgoing>,
    shared: Vec<(&'static str, Vec<u8>)>,
    received: i64,
    answer: Answer,
    request: Option<RequestIds>,
) -> Result<Option<Vec<Placement>>, ApiError> {
    check_events(state, set, &events)?;
    let refused: Vec<usize> = events.iter().enumerate().filter(|(_, e)| e.refusal.is_some()).map(|(i, _)| i).collect();
    let refuse = |which: &[usize]| ApiError::InvalidEvents {
        errors: which.iter().filter_map(|&i| events[i].refusal.clone()).take(super::parse::MAX_LISTED_ERRORS).collect(),
    };
    // A topic still to be created remembers no id: nothing to look up.
    if refused.iter().any(|&i| events[i].id.is_none() || set.list[events[i].scope].topic.is_none()) {
        return Err(refuse(&refused));
    }
    set.create_missing(state).await?;
    let set = &*set;
    // Ids: one claim per distinct (scope topic, id); repeats follow the first accepted
    // copy (an id's dead-lettered copies before it are written as dead letters: the
    // corrected copy after them is accepted, as it would be in a later request).
    let mut fates = Vec::with_capacity(events.len());
    let mut claims_wanted: Vec<(Arc<Topic>, Vec<u8>)> = Vec::new();
    let mut first: HashMap<(usize, &[u8]), FirstCopy, foldhash::fast::RandomState> = HashMap::default();
    let mut replay_claims: Vec<Option<usize>> = vec![None; events.len()];
    for (i, e) in events.iter().enumerate() {
        let dead = e.dead_letter.is_some();
        match &e.id {
            None => fates.push(Fate::Write { claim: None }),
            Some(id) => match first.get_mut(&(e.scope, id.as_slice())) {
                Some(copy) if copy.dead && !dead => {
                    // Both share the claim: if the id was stored before, both are
                    // duplicates; else only this one's entry is written.
                    (copy.index, copy.dead) = (i, false);
                    fates.push(Fate::Write { claim: Some(copy.claim) });
                }
                Some(copy) => fates.push(Fate::Repeat(copy.index)),
                None => {
                    claims_wanted.push((set.list[e.scope].topic()?.clone(), id.clone()));
                    first
                        .insert((e.scope, id.as_slice()), FirstCopy { claim: claims_wanted.len() - 1, index: i, dead });
                    fates.push(Fate::Write { claim: Some(claims_wanted.len() - 1) });
                }
            },
        }
        if let Some(replay) = &e.replay_id {
            claims_wanted.push((set.list[e.scope].topic()?.clone(), replay.clone()));
            replay_claims[i] = Some(claims_wanted.len() - 1);
        }
    }
    drop(first);
    // With an Idempotency-Key, the request's two ids (key used; key used with this body)
    // are claimed beside the events' ids, in the scope of the route's topic.
    let request_claims = match request {
        Some(RequestIds { used, with_body }) => {
            let topic = set.list[0].topic()?;
            claims_wanted.push((topic.clone(), used));
            claims_wanted.push((topic.clone(), with_body));
            Some((claims_wanted.len() - 2, claims_wanted.len() - 1))
        }
        None => None,
    };
    let claims = if claims_wanted.is_empty() {
        None
    } else {
        let (states, claims) = state.store.dedup_claim(claims_wanted).await?;
        for (fate, replay) in fates.iter_mut().zip(&replay_claims) {
            if let (Fate::Write { .. }, Some(c)) = (*fate, *replay)
                && let IdState::Seen(place) = states[c]
            {
                // A retry of a keyed request: this dead letter was written by it before
                // (first: its own id may since stand for a corrected copy).
                *fate = Fate::Seen(place);
            } else if let Fate::Write { claim: Some(c) } = *fate
                && let IdState::Seen(place) = states[c]
            {
                *fate = Fate::Seen(place);
            }
        }
        // Events failing the schema are refused unless stored before (dropping the
        // claims releases them; nothing is written).
        // (A copy repeating an earlier one of this request counts as that one.)
        let stored = |i: usize| match fates[i] {
            Fate::Seen(_) => true,
            Fate::Repeat(j) => matches!(fates[j], Fate::Seen(_)) || events[j].refusal.is_none(),
            Fate::Write { .. } => false,
        };
        let unseen: Vec<usize> = refused.iter().copied().filter(|&i| !stored(i)).collect();
        if !unseen.is_empty() {
            return Err(refuse(&unseen));
        }
        // The key was used before, and not with this body: refused whole (dropping the
        // claims releases them; nothing is written).
        if let Some((used, with_body)) = request_claims
            && matches!(states[used], IdState::Seen(_))
            && !matches!(states[with_body], IdState::Seen(_))
        {
            return Err(ApiError::IdempotencyKeyReused);
        }
        Some(claims)
    };

    let sticky: Vec<u32> = set.list.iter().map(|d| state.spreader.next(d.partition_count(state).max(1))).collect();
    let payload: u64 = events.iter().map(|e| e.value.len() as u64).sum();
    let events = Arc::new(events);
    let fates = Arc::new(fates);
    let job = {
        let (set, events, fates) = (set.clone(), events.clone(), fates.clone());
        move || {
            let to_write: Vec<(usize, &Outgoing)> =
                events.iter().enumerate().filter(|(i, _)| matches!(fates[*i], Fate::Write { .. })).collect();
            encode(&set, &to_write, &shared, &sticky, received)
        }
    };
    let encoded = if payload < INLINE_ENCODE_BYTES {
        job()?
    } else {
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| ApiError::Storage(StorageError::Internal(e.to_string())))??
    };

    // Dedup entries of the claimed ids, placed by the encoder's slots.
    let mut slot_of = vec![None; events.len()];
    let mut written = 0;
    for (i, fate) in fates.iter().enumerate() {
        if matches!(fate, Fate::Write { .. }) {
            slot_of[i] = Some(encoded.slots[written]);
            written += 1;
        }
    }
    // A dead-lettered event's id is not remembered (its claim is released): the id
    // stands for an accepted event, so a corrected copy sent again with it is accepted,
    // and an uncorrected one is dead-lettered again.
    let ids = claims.map(|claims| {
        let mut entries: Vec<IdWrite> = fates
            .iter()
            .enumerate()
            .filter_map(|(i, fate)| match (fate, slot_of[i]) {
                (Fate::Write { claim: Some(c) }, Some((batch, position))) if events[i].dead_letter.is_none() => {
                    Some(IdWrite { claim: *c, batch, position, dead_lettered: false })
                }
                _ => None,
            })
            .chain(fates.iter().enumerate().filter_map(|(i, fate)| match (fate, slot_of[i], replay_claims[i]) {
                (Fate::Write { .. }, Some((batch, position)), Some(claim)) => {
                    Some(IdWrite { claim, batch, position, dead_lettered: true })
                }
                _ => None,
            }))
            .collect();
        // The request's ids are remembered with (and at the place of) the first event
        // written now, dead-lettered or not; a request that writes nothing leaves no
        // trace of its key.
        if let (Some((used, with_body)), Some(&Some((batch, position)))) =
            (request_claims, slot_of.iter().find(|s| s.is_some()))
        {
            for claim in [used, with_body] {
                entries.push(IdWrite { claim, batch, position, dead_lettered: false });
            }
        }
        IdWrites { claims, entries }
    });

    let batch_places: Vec<(usize, u32)> =
        encoded.batches.iter().map(|(part, _)| (set.index_of(&part.topic).unwrap_or(0), part.index)).collect();
    let appended: Vec<(usize, u64, u64)> = encoded
        .batches
        .iter()
        .zip(&encoded.payload)
        .map(|((part, batch), bytes)| (set.index_of(&part.topic).unwrap_or(0), u64::from(batch.count()), *bytes))
        .collect();
    let bases = if encoded.batches.is_empty() {
        // Every event was a duplicate: nothing to write. `acks=none` still answers as
        // it always does (queued, no offsets), so its callers see one shape.
        drop(ids);
        matches!(answer, Answer::AfterWrite).then(Vec::new)
    } else if let Answer::OnceQueued { hold } = answer {
        let written = state.store.append_to_detached(encoded.batches, ids).await?;
        if let Some(hold) = hold {
            tokio::spawn(async move {
                // The outcome reaches no one (acks=none); only the memory waits for it.
                let _ = written.await;
                drop(hold);
            });
        }
        None
    } else {
        Some(state.store.append_to(encoded.batches, ids).await?)
    };
    for (topic, count, bytes) in appended {
        let (events_appended, bytes_appended) = crate::metrics::appended(&set.list[topic].name);
        events_appended.increment(count);
        bytes_appended.increment(bytes);
    }
    let duplicates = fates.iter().filter(|f| !matches!(f, Fate::Write { .. })).count();
    if duplicates > 0 {
        metrics::counter!("tidegate_events_deduplicated_total").increment(duplicates as u64);
    }
    let Some(bases) = bases else { return Ok(None) };

    let mut out: Vec<Placement> = Vec::with_capacity(events.len());
    for (i, fate) in fates.iter().enumerate() {
        let placement = match *fate {
            Fate::Write { .. } => {
                let (batch, position) = slot_of[i].expect("written events have slots");
                let (topic, partition) = batch_places[batch];
                Placement {
                    topic,
                    partition,
                    offset: bases[batch] + u64::from(position),
                    duplicate: false,
                    dead_letter: events[i].dead_letter.clone(),
                }
            }
            Fate::Seen(place) => {
                let scope = events[i].scope;
                // A keyed request's dead letter (its replay id), or an entry written by a
                // version before 2026-11-27, which remembered dead-lettered ids.
                let (topic, dead_letter) = if place.dead_lettered {
                    let note = DeadLetterNote { reason: None, path: None };
                    (set.list[scope].dead_letter.unwrap_or(scope), Some(note))
                } else {
                    (scope, None)
                };
                Placement { topic, partition: place.partition, offset: place.offset, duplicate: true, dead_letter }
            }
            Fate::Repeat(earlier) => Placement { duplicate: true, ..out[earlier].clone() },
        };
        out.push(placement);
    }
    Ok(Some(out))
}
