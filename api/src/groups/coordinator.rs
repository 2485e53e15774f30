//! The group coordinator: membership, incremental rebalancing, ownership fencing.
//!
//! Rebalances are incremental (cooperative): a member keeps the partitions it still
//! owns; a partition that moves is first revoked from its old owner, and handed to
//! the new owner only after the old owner's session confirms it stopped reading it
//! ([`Coordinator::revoked`]). So no partition is ever read by two members of a
//! group at once. Every rebalance bumps the generation; commits are accepted only
//! from the member that currently owns the partition (and, when the client names a
//! generation, only for the current one).
//!
//! Static membership: a member that names itself (`member=`) and disconnects keeps
//! its partitions, unread, for the session timeout; reconnecting with the same id in
//! that window gets them back without a rebalance. Anonymous members leave at once.
//!
//! All state is in memory behind one `std::sync::Mutex` (short sections, never held
//! across `.await`); committed offsets live in storage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tidegate_storage::Store;
use tokio::sync::mpsc;

use super::assign::{TopicPartition, assign};

/// A message from the coordinator to a member's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Start reading these partitions. Those also in `grown` were added to their topic
    /// while the group read it: without a committed offset they are read from their
    /// start whatever the member's `from` (records written to them before the group
    /// noticed the growth were written after the group began and are owed to it).
    Assign { generation: u64, partitions: Vec<TopicPartition>, grown: Vec<TopicPartition> },
    /// Stop reading these partitions, then call [`Coordinator::revoked`].
    Revoke { generation: u64, partitions: Vec<TopicPartition> },
    /// The group's offsets of these partitions were reset (a forced reset): read on
    /// from there.
    Reset { offsets: Vec<(TopicPartition, u64)> },
    /// The group's committed offsets were deleted (a forced delete): the next
    /// auto-commit stores every position again, also those that did not move.
    Forget,
}

/// Why the coordinator refused something.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GroupError {
    /// A live session already uses this member id.
    #[error("member {0:?} is already connected")]
    MemberInUse(String),
    /// The commit names a generation in which the member did not hold the partition
    /// (older than the assignment that gave it), or one the group has not reached.
    #[error(
        "generation {given} is stale: the member did not hold the partition then, or the group has not reached it (current {current})"
    )]
    StaleGeneration { given: u64, current: u64 },
    /// The member does not own the partition it tried to commit.
    #[error("member does not own {0}/{1}")]
    NotOwner(String, u32),
    /// The operation needs the group to have no members.
    #[error("group {0:?} has active members")]
    GroupActive(String),
}

#[derive(Debug)]
struct Member {
    topics: BTreeSet<String>,
    client: String,
    is_static: bool,
    /// Unbounded, so no assignment or revocation is ever dropped (a lost one would leave
    /// a partition owned but unread). What it may hold is bounded by the rebalances
    /// during one stalled send: a session reads its control messages between frames,
    /// and one whose client takes no frame for the session timeout ends.
    control: Option<mpsc::UnboundedSender<Control>>,
    /// Set while disconnected (static members only).
    disconnected_at: Option<Instant>,
    /// Partitions it holds, each with the generation in which it got it.
    owned: BTreeMap<TopicPartition, u64>,
    joined_ms: i64,
}

#[derive(Debug, Default)]
struct Group {
    generation: u64,
    members: BTreeMap<String, Member>,
    /// Target owner of every partition, from the latest rebalance.
    target: BTreeMap<TopicPartition, String>,
    /// Every partition a rebalance of this group has seen.
    known: BTreeSet<TopicPartition>,
    /// Partitions added to a topic the group was already reading (see
    /// [`Control::Assign`]).
    grown: BTreeSet<TopicPartition>,
}

/// Gives every target partition that nobody owns to its target member (marks it owned);
/// returns what each member got.
fn grant_free(g: &mut Group) -> BTreeMap<String, Vec<TopicPartition>> {
    let owned: BTreeSet<TopicPartition> = g.members.values().flat_map(|m| m.owned.keys().cloned()).collect();
    let mut grants: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
    for (tp, owner) in &g.target {
        if !owned.contains(tp) && g.members.contains_key(owner) {
            grants.entry(owner.clone()).or_default().push(tp.clone());
        }
    }
    let generation = g.generation;
    for (id, parts) in &grants {
        if let Some(m) = g.members.get_mut(id) {
            m.owned.extend(parts.iter().map(|tp| (tp.clone(), generation)));
        }
    }
    grants
}

/// Tells each member of `grants` its new partitions (an assignment of the current
/// generation).
fn send_grants(g: &Group, grants: BTreeMap<String, Vec<TopicPartition>>) {
    for (id, partitions) in grants {
        let grown = g.grown_of(&partitions);
        if let Some(c) = g.members.get(&id).and_then(|m| m.control.as_ref()) {
            let _ = c.send(Control::Assign { generation: g.generation, partitions, grown });
        }
    }
}

impl Group {
    /// Which of `partitions` grew their topic while the group read it.
    fn grown_of(&self, partitions: &[TopicPartition]) -> Vec<TopicPartition> {
        partitions.iter().filter(|tp| self.grown.contains(*tp)).cloned().collect()
    }
}

/// A member as shown by the admin API.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub member: String,
    pub client: String,
    pub connected: bool,
    pub is_static: bool,
    pub topics: Vec<String>,
    pub partitions: Vec<TopicPartition>,
    pub joined_ms: i64,
}

/// A group's live state as shown by the admin API.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub generation: u64,
    pub members: Vec<MemberInfo>,
    /// Partitions waiting for their old owner to stop (a rebalance in progress).
    pub pending: usize,
}

/// Coordinates every consumer group of this node.
#[derive(Debug)]
pub struct Coordinator {
    store: Store,
    session_timeout: Duration,
    groups: Mutex<HashMap<String, Group>>,
    next_member: AtomicU64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Coordinator {
    /// A coordinator whose static members expire after `session_timeout` disconnected.
    pub fn new(store: Store, session_timeout: Duration) -> Self {
        Self { store, session_timeout, groups: Mutex::new(HashMap::new()), next_member: AtomicU64::new(1) }
    }

    /// Joins (or, for a static member within its session timeout, re-joins) a group.
    /// Returns the member id and the channel of its control messages.
    pub fn join(
        &self,
        group: &str,
        member: Option<&str>,
        topics: BTreeSet<String>,
        client: String,
    ) -> Result<(String, mpsc::UnboundedReceiver<Control>), GroupError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut groups = self.groups.lock().expect("groups lock");
        let g = groups.entry(group.to_string()).or_default();
        let id = match member {
            Some(id) => id.to_string(),
            None => format!("member-{}", self.next_member.fetch_add(1, Ordering::Relaxed)),
        };
        if let Some(existing) = g.members.get_mut(&id) {
            if existing.control.as_ref().is_some_and(|c| !c.is_closed()) {
                return Err(GroupError::MemberInUse(id));
            }
            if existing.topics == topics {
                // Static re-join: its partitions back, no rebalance. Partitions a
                // rebalance moved away while it was gone are released first (its old
                // session read nothing after it ended).
                existing.owned.retain(|tp, _| g.target.get(tp) == Some(&id));
                existing.control = Some(tx);
                existing.disconnected_at = None;
                existing.client = client;
                // One assignment: what it kept plus free partitions targeted to it.
                let mut grants = grant_free(g);
                grants.remove(&id);
                let partitions: Vec<_> = g.members[&id].owned.keys().cloned().collect();
                let grown = g.grown_of(&partitions);
                if let Some(c) = &g.members[&id].control {
                    let _ = c.send(Control::Assign { generation: g.generation, partitions, grown });
                }
                send_grants(g, grants);
                tracing::info!(group, member = %id, "static member re-joined");
                return Ok((id, rx));
            }
            g.members.remove(&id);
        }
        g.members.insert(
            id.clone(),
            Member {
                topics,
                client,
                is_static: member.is_some(),
                control: Some(tx),
                disconnected_at: None,
                owned: BTreeMap::new(),
                joined_ms: now_ms(),
            },
        );
        tracing::info!(group, member = %id, "member joined");
        self.rebalance(group, g);
        Ok((id, rx))
    }

    /// A session ended. Anonymous members leave now; static ones keep their
    /// partitions until the session timeout passes (see [`Coordinator::expire`]).
    pub fn disconnect(&self, group: &str, member: &str, leave: bool) {
        let mut groups = self.groups.lock().expect("groups lock");
        let Some(g) = groups.get_mut(group) else { return };
        let Some(m) = g.members.get_mut(member) else { return };
        if m.is_static && !leave {
            m.control = None;
            m.disconnected_at = Some(Instant::now());
            // A revocation it did not get to confirm: the session is gone, so the
            // partitions are not being read; hand them on now.
            m.owned.retain(|tp, _| g.target.get(tp).is_some_and(|owner| owner == member));
            self.hand_out_free(g);
            tracing::info!(group, member, "static member disconnected; partitions held for the session timeout");
            return;
        }
        g.members.remove(member);
        tracing::info!(group, member, "member left");
        self.rebalance(group, g);
        if g.members.is_empty() {
            groups.remove(group);
        }
    }

    /// Removes static members disconnected for longer than the session timeout,
    /// and rebalances groups whose topics changed partition counts. Called
    /// periodically.
    pub fn expire(&self) {
        let mut groups = self.groups.lock().expect("groups lock");
        let names: Vec<String> = groups.keys().cloned().collect();
        for name in names {
            let Some(g) = groups.get_mut(&name) else { continue };
            let timeout = self.session_timeout;
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.disconnected_at.is_some_and(|t| t.elapsed() >= timeout))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                g.members.remove(id);
                tracing::info!(group = %name, member = %id, "static member expired");
            }
            let partitions = self.partitions_of(g);
            if !expired.is_empty() || partitions != g.target.keys().cloned().collect() {
                self.rebalance(&name, g);
            }
            if g.members.is_empty() {
                groups.remove(&name);
            }
        }
    }

    /// Every partition of a topic (none if it no longer exists).
    fn topic_partitions(&self, topic: &str) -> BTreeSet<TopicPartition> {
        match self.store.topic(topic) {
            Ok(t) => (0..t.partition_count()).map(|p| (topic.to_string(), p)).collect(),
            Err(_) => BTreeSet::new(),
        }
    }

    /// Every partition of the topics the group's members subscribe to.
    fn partitions_of(&self, g: &Group) -> BTreeSet<TopicPartition> {
        let topics: BTreeSet<&String> = g.members.values().flat_map(|m| m.topics.iter()).collect();
        topics.into_iter().flat_map(|t| self.topic_partitions(t)).collect()
    }

    /// Computes the new target and sends revocations and assignments. Partitions
    /// owned by another member are only revoked here; they are assigned in
    /// [`Coordinator::revoked`] once the old owner stopped.
    fn rebalance(&self, group: &str, g: &mut Group) {
        g.generation += 1;
        let generation = g.generation;
        let mut target = BTreeMap::new();
        let topics: BTreeSet<String> = g.members.values().flat_map(|m| m.topics.iter().cloned()).collect();
        for topic in topics {
            let members: BTreeSet<String> =
                g.members.iter().filter(|(_, m)| m.topics.contains(&topic)).map(|(id, _)| id.clone()).collect();
            let parts = self.topic_partitions(&topic);
            if g.known.iter().any(|tp| tp.0 == topic) {
                g.grown.extend(parts.iter().filter(|tp| !g.known.contains(*tp)).cloned());
            }
            g.known.extend(parts.iter().cloned());
            let current: BTreeMap<TopicPartition, String> = g
                .members
                .iter()
                .flat_map(|(id, m)| m.owned.keys().filter(|tp| tp.0 == topic).map(move |tp| (tp.clone(), id.clone())))
                .collect();
            target.extend(assign(&parts, &members, &current));
        }
        g.target = target;
        for (id, m) in g.members.iter_mut() {
            let revoke: Vec<TopicPartition> =
                m.owned.keys().filter(|tp| g.target.get(*tp) != Some(id)).cloned().collect();
            if revoke.is_empty() {
                continue;
            }
            match &m.control {
                Some(c) => {
                    let _ = c.send(Control::Revoke { generation, partitions: revoke });
                }
                None => {
                    // A disconnected static member reads nothing; free its partitions now.
                    for tp in &revoke {
                        m.owned.remove(tp);
                    }
                }
            }
        }
        // Partitions nobody owns (a new group, members that left) are handed out at
        // once. Every connected member learns the new generation in one assignment:
        // with what it gets now, or empty when its partitions did not change (a new
        // member used to get an empty one and then its partitions, both of this
        // generation).
        let mut grants = grant_free(g);
        for (id, m) in &g.members {
            if let Some(c) = &m.control {
                let partitions = grants.remove(id).unwrap_or_default();
                let grown = g.grown_of(&partitions);
                let _ = c.send(Control::Assign { generation, partitions, grown });
            }
        }
        tracing::debug!(group, generation, members = g.members.len(), "rebalanced");
        metrics::counter!("tidegate_group_rebalances_total").increment(1);
    }

    /// Assigns every target partition that nobody owns to its target member and tells
    /// those members.
    fn hand_out_free(&self, g: &mut Group) {
        let grants = grant_free(g);
        send_grants(g, grants);
    }

    /// Tells the members owning the partitions of `offsets` to read on from them (after
    /// a forced reset stored them as the group's committed offsets).
    pub fn reset(&self, group: &str, offsets: &[(TopicPartition, u64)]) {
        let groups = self.groups.lock().expect("groups lock");
        let Some(g) = groups.get(group) else { return };
        for m in g.members.values() {
            let mine: Vec<(TopicPartition, u64)> =
                offsets.iter().filter(|(tp, _)| m.owned.contains_key(tp)).cloned().collect();
            if let (false, Some(c)) = (mine.is_empty(), &m.control) {
                let _ = c.send(Control::Reset { offsets: mine });
            }
        }
    }

    /// Tells every connected member of `group` that its committed offsets were deleted
    /// (see [`Control::Forget`]).
    pub fn forget_commits(&self, group: &str) {
        let groups = self.groups.lock().expect("groups lock");
        let Some(g) = groups.get(group) else { return };
        for c in g.members.values().filter_map(|m| m.control.as_ref()) {
            let _ = c.send(Control::Forget);
        }
    }

    /// Which of `partitions` the group's latest rebalance targets to `member` (a member
    /// that has not handed revoked partitions over yet may read on those it gets back).
    pub fn targeted_to(&self, group: &str, member: &str, partitions: &[TopicPartition]) -> Vec<TopicPartition> {
        let groups = self.groups.lock().expect("groups lock");
        let Some(g) = groups.get(group) else { return Vec::new() };
        let held = g.members.get(member).map(|m| &m.owned);
        partitions
            .iter()
            .filter(|tp| g.target.get(*tp).is_some_and(|owner| owner == member))
            .filter(|tp| held.is_some_and(|o| o.contains_key(*tp)))
            .cloned()
            .collect()
    }

    /// A member's session confirms it stopped reading `partitions`; they go to
    /// their new owners.
    pub fn revoked(&self, group: &str, member: &str, partitions: &[TopicPartition]) {
        let mut groups = self.groups.lock().expect("groups lock");
        let Some(g) = groups.get_mut(group) else { return };
        if let Some(m) = g.members.get_mut(member) {
            for tp in partitions {
                m.owned.remove(tp);
            }
        }
        self.hand_out_free(g);
    }

    /// Checks that `member` may commit these partitions: it owns them and, when the
    /// commit names a generation, has held each of them since that generation or
    /// earlier (so no one else can have read or committed it in between: a commit sent
    /// before an unrelated rebalance, one that moved other partitions, still counts).
    /// A generation newer than the group's, or older than when the member got a
    /// partition, is stale.
    pub fn check_commit(
        &self,
        group: &str,
        member: &str,
        generation: Option<u64>,
        partitions: &[TopicPartition],
    ) -> Result<(), GroupError> {
        let groups = self.groups.lock().expect("groups lock");
        let g = groups.get(group);
        let current = g.map_or(0, |g| g.generation);
        if let Some(given) = generation
            && given > current
        {
            return Err(GroupError::StaleGeneration { given, current });
        }
        let owned = g.and_then(|g| g.members.get(member)).map(|m| &m.owned);
        for (t, p) in partitions {
            let Some(since) = owned.and_then(|o| o.get(&(t.clone(), *p))) else {
                return Err(GroupError::NotOwner(t.clone(), *p));
            };
            if let Some(given) = generation
                && given < *since
            {
                return Err(GroupError::StaleGeneration { given, current });
            }
        }
        Ok(())
    }

    /// The live state of a group, or `None` when it has no members.
    pub fn describe(&self, group: &str) -> Option<GroupInfo> {
        let groups = self.groups.lock().expect("groups lock");
        let g = groups.get(group)?;
        let owned: BTreeSet<&TopicPartition> = g.members.values().flat_map(|m| m.owned.keys()).collect();
        let pending = g.target.iter().filter(|(tp, owner)| {
            !g.members.get(*owner).is_some_and(|m| m.owned.contains_key(*tp)) && owned.contains(tp)
        });
        Some(GroupInfo {
            generation: g.generation,
            pending: pending.count(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberInfo {
                    member: id.clone(),
                    client: m.client.clone(),
                    connected: m.control.is_some(),
                    is_static: m.is_static,
                    topics: m.topics.iter().cloned().collect(),
                    partitions: m.owned.keys().cloned().collect(),
                    joined_ms: m.joined_ms,
                })
                .collect(),
        })
    }

    /// Names of groups with members.
    pub fn active_groups(&self) -> Vec<String> {
        self.groups.lock().expect("groups lock").keys().cloned().collect()
    }

    /// Fails with `GroupActive` when the group has members.
    pub fn ensure_empty(&self, group: &str) -> Result<(), GroupError> {
        let groups = self.groups.lock().expect("groups lock");
        if groups.get(group).is_some_and(|g| !g.members.is_empty()) {
            return Err(GroupError::GroupActive(group.to_string()));
        }
        Ok(())
    }
}
