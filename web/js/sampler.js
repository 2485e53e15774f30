// The background sampler: while the dashboard is open it reads /v1/status,
// /v1/topics and /metrics every refresh interval and keeps a rolling window of
// rates, so every page has history to chart as soon as it opens.
//
// - produce rate of a topic (and of each partition): growth of its end offsets
//   per second (every record appended, whatever the ingest path);
// - consume rate of a topic: growth per second of
//   tidegate_records_delivered_total{topic} (records sent to WebSocket and SSE
//   subscribers);
// - group lag: tidegate_group_lag_total{group};
// - node memory and disk size from /v1/status.

import { api, parseMetrics, sumBy } from './api.js';

/** Samples kept per series (10 minutes at the default 2 s). */
const WINDOW = 300;

function series(...names) {
  const s = { t: [] };
  for (const n of names) s[n] = [];
  return s;
}

function push(s, t, values) {
  s.t.push(t);
  for (const [k, v] of Object.entries(values)) s[k].push(v);
  if (s.t.length > WINDOW) {
    for (const k of Object.keys(s)) s[k].shift();
  }
}

/** What the pages read. Replaced fields, never mutated in place by pages. */
export const data = {
  /** Last GET /v1/status answer. */
  status: null,
  /** Why /v1/status failed (e.g. the token lacks admin), or null. */
  statusError: null,
  /** Last GET /v1/topics list. */
  topics: [],
  /** Per topic: `{produce, consume, partitions: [rate...], history: {t, produce, consume}}`. */
  byTopic: new Map(),
  /** Totals over all topics: `{t, produce, consume}`. */
  totals: series('produce', 'consume'),
  /** Per group: `{t, lag}`, and the latest lag in `groupLagNow`. */
  groupLag: new Map(),
  groupLagNow: new Map(),
  /** Node history: `{t, rss, disk}`. */
  node: series('rss', 'disk'),
  /** Whether /metrics could be read (consume rates and lag need it). */
  metricsOk: false,
  /** Error of the last refresh (the node unreachable), or null. */
  error: null,
  /** Time of the last successful refresh (ms). */
  updated: 0,
};

let intervalMs = 2000;
let timer = null;
let running = false;
let previous = null;
const listeners = new Set();

/** Calls `fn` after every refresh (and at once); returns the unsubscribe function. */
export function subscribe(fn) {
  listeners.add(fn);
  if (data.updated) fn(data);
  return () => listeners.delete(fn);
}

function emit() {
  for (const fn of listeners) {
    try {
      fn(data);
    } catch (e) {
      // A page's rendering bug must not stop the sampler; report it once per tick.
      window.reportError ? window.reportError(e) : setTimeout(() => { throw e; });
    }
  }
}

/** Refresh interval in ms; 0 pauses refreshing. */
export function setIntervalMs(ms) {
  intervalMs = ms;
  schedule(0);
}

export function getIntervalMs() {
  return intervalMs;
}

/** Refreshes now (e.g. after an action), then keeps the interval. */
export function refreshNow() {
  schedule(0);
}

function schedule(delay) {
  clearTimeout(timer);
  timer = null;
  if (intervalMs > 0 || delay === 0) timer = setTimeout(tick, delay);
}

async function tick() {
  if (running) return;
  running = true;
  try {
    await sample();
  } finally {
    running = false;
    if (intervalMs > 0) schedule(intervalMs);
  }
}

async function sample() {
  const [status, topics, metricsText] = await Promise.allSettled([
    api('/v1/status'),
    api('/v1/topics'),
    api('/metrics', { headers: { Accept: 'text/plain' } }),
  ]);
  if (topics.status === 'rejected') {
    data.error = topics.reason instanceof TypeError ? 'node unreachable' : topics.reason.message;
    emit();
    return;
  }
  const now = Date.now() / 1000;
  data.error = null;
  data.status = status.status === 'fulfilled' ? status.value : null;
  data.statusError = status.status === 'rejected' ? status.reason.message : null;
  data.topics = topics.value.topics;
  data.metricsOk = metricsText.status === 'fulfilled';
  const metrics = data.metricsOk ? parseMetrics(metricsText.value) : new Map();
  const delivered = sumBy(metrics, 'tidegate_records_delivered_total', 'topic');

  const current = { t: now, ends: new Map(), delivered };
  let totalProduce = 0;
  let totalConsume = 0;
  let anyRate = false;
  const seen = new Set();
  for (const topic of data.topics) {
    seen.add(topic.name);
    const ends = topic.partitions.map((p) => p.end_offset);
    current.ends.set(topic.name, ends);
    let entry = data.byTopic.get(topic.name);
    if (!entry || entry.created !== topic.created_ms) {
      entry = { created: topic.created_ms, produce: null, consume: null, partitions: [], history: series('produce', 'consume') };
      data.byTopic.set(topic.name, entry);
    }
    const before = previous?.ends.get(topic.name);
    if (previous && before) {
      const dt = Math.max(0.001, now - previous.t);
      entry.partitions = ends.map((e, i) => Math.max(0, e - (before[i] ?? e)) / dt);
      entry.produce = entry.partitions.reduce((a, b) => a + b, 0);
      const d0 = previous.delivered.get(topic.name) || 0;
      const d1 = delivered.get(topic.name) || 0;
      entry.consume = data.metricsOk ? Math.max(0, d1 - d0) / dt : null;
      push(entry.history, now, { produce: entry.produce, consume: entry.consume });
      totalProduce += entry.produce;
      totalConsume += entry.consume || 0;
      anyRate = true;
    }
  }
  for (const name of [...data.byTopic.keys()]) if (!seen.has(name)) data.byTopic.delete(name);
  if (anyRate || (previous && !data.topics.length)) {
    push(data.totals, now, { produce: totalProduce, consume: data.metricsOk ? totalConsume : null });
  }

  data.groupLagNow = sumBy(metrics, 'tidegate_group_lag_total', 'group');
  for (const [group, lag] of data.groupLagNow) {
    if (!data.groupLag.has(group)) data.groupLag.set(group, series('lag'));
    push(data.groupLag.get(group), now, { lag });
  }
  for (const group of [...data.groupLag.keys()]) if (!data.groupLagNow.has(group)) data.groupLag.delete(group);

  if (data.status) {
    push(data.node, now, { rss: data.status.resident_memory_bytes ?? null, disk: data.status.disk_bytes });
  }
  previous = current;
  data.updated = Date.now();
  emit();
}

/** Starts sampling (once). */
export function start(ms) {
  intervalMs = ms;
  schedule(0);
}
