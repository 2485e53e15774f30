// Node status: this node's readiness, version, uptime, storage and totals, its
// memory and disk over time, the nodes of the cluster and the partition leaders.
//
// Tidegate runs as one node today: `clusterView` derives the node list and the
// leader of every partition from this node's status and topics. When the cluster
// exists, that function is where its answer (`GET /v1/cluster`) plugs in; the tables
// below already render any number of nodes and leaders.

import { seg } from '../api.js';
import { TimeChart } from '../chart.js';
import { bytes, datetime, duration, el, num, replace, stat } from '../format.js';
import { subscribe } from '../sampler.js';

/** Nodes and partition leaders, from what the sampler read. */
export function clusterView(status, topics) {
  const self = status ? `${status.addr}` : 'this node';
  const nodes = status
    ? [{ id: self, addr: status.addr, state: status.ready ? 'ready' : 'not ready', version: status.version, uptime_ms: status.uptime_ms, self: true }]
    : [];
  const leaders = topics.flatMap((t) => t.partitions.map((p) => ({
    topic: t.name,
    partition: p.partition,
    leader: self,
    epoch: p.leader_epoch,
    replicas: [self],
    in_sync: [self],
  })));
  return { nodes, leaders };
}

export function render(view) {
  document.title = 'Node · Tidegate';
  const stats = el('div', { class: 'stats' });
  const memBox = el('div');
  const nodes = el('div', { class: 'table-wrap' });
  const leaders = el('div', { class: 'table-wrap' });
  const notice = el('div', { class: 'notice', hidden: true });
  view.append(
    el('div', { class: 'page-head' }, el('h1', {}, 'Node'), el('span', { class: 'pill', id: 'node-state' }, '…')),
    notice,
    stats,
    el('div', { class: 'card' }, el('h2', {}, 'Memory and disk'), memBox),
    el('div', { class: 'card flush' }, el('h2', {}, 'Nodes'), nodes),
    el('div', { class: 'card flush' }, el('h2', {}, 'Partition leaders'), leaders),
  );
  const chart = new TimeChart(memBox, {
    series: [{ label: 'resident memory' }, { label: 'RocksDB on disk' }],
    axis: bytes,
    fmt: bytes,
    axisSize: 80,
    height: 180,
  });

  const update = (d) => {
    const s = d.status;
    const diskLow = s && s.min_free_disk_bytes > 0 && s.disk_free_bytes != null
      && s.disk_free_bytes < s.min_free_disk_bytes;
    const why = d.error
      ? `Cannot refresh: ${d.error}. Showing the last known state.`
      : d.statusError ? `Node status unavailable: ${d.statusError}`
        : s && s.storage_error ? `The last write to storage failed: ${s.storage_error}`
          : diskLow ? `Free disk space (${bytes(s.disk_free_bytes)}) is below min_free_disk_bytes `
            + `(${bytes(s.min_free_disk_bytes)}): appends are refused until space is freed.` : '';
    notice.hidden = !why;
    notice.textContent = why;
    const pill = document.getElementById('node-state');
    if (s) {
      pill.textContent = s.storage_error ? 'storage failing' : diskLow ? 'disk low' : s.ready ? 'ready' : 'not ready';
      pill.className = `pill ${s.ready ? 'ok' : 'warn'}`;
      replace(stats,
        stat('Address', s.addr, { small: true, id: 'addr' }),
        stat('Version', s.version, { small: true }),
        stat('Uptime', duration(s.uptime_ms), { small: true }),
        stat('Started', datetime(s.started_ms), { small: true }),
        stat('Durability', `fsync ${s.fsync}`, { small: true }),
        stat('Data directory', s.data_dir, { small: true }),
        stat('On disk', bytes(s.disk_bytes)),
        stat('Free disk', s.disk_free_bytes == null ? '–' : bytes(s.disk_free_bytes)),
        stat('Memory', bytes(s.resident_memory_bytes)),
        stat('Topics', num(s.topics)),
        stat('Partitions', num(s.partitions)),
        stat('Records', num(s.records)),
        stat('Stored', bytes(s.bytes)),
        stat('Groups', num(s.groups)),
        stat('Subscriptions', `${num(s.subscriptions)} / ${num(s.max_subscriptions)}`, { small: true }));
    }
    chart.set(d.node.t, [d.node.rss, d.node.disk]);
    const cluster = clusterView(s, d.topics);
    replace(nodes, el('table', { id: 'nodes-table' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Node'), el('th', {}, 'State'), el('th', {}, 'Version'), el('th', {}, 'Uptime'))),
      el('tbody', {}, cluster.nodes.map((n) => el('tr', {},
        el('td', { class: 'mono' }, n.addr, n.self ? el('span', { class: 'muted' }, ' (this node)') : null),
        el('td', {}, el('span', { class: `pill ${n.state === 'ready' ? 'ok' : 'warn'}` }, n.state)),
        el('td', {}, n.version),
        el('td', {}, duration(n.uptime_ms)))))));
    replace(leaders, cluster.leaders.length
      ? el('table', { id: 'leaders-table' },
        el('thead', {}, el('tr', {}, el('th', {}, 'Topic'), el('th', {}, 'Partition'), el('th', {}, 'Leader'),
          el('th', { class: 'num' }, 'Epoch'), el('th', { class: 'hide-sm' }, 'Replicas'), el('th', { class: 'hide-sm' }, 'In sync'))),
        el('tbody', {}, cluster.leaders.map((l) => el('tr', {},
          el('td', {}, el('a', { href: `#/topics/${seg(l.topic)}` }, l.topic)),
          el('td', {}, el('span', { class: 'badge' }, l.partition)),
          el('td', { class: 'mono' }, l.leader),
          el('td', { class: 'num' }, num(l.epoch)),
          el('td', { class: 'mono hide-sm' }, l.replicas.join(', ')),
          el('td', { class: 'mono hide-sm' }, l.in_sync.join(', '))))))
      : el('p', { class: 'empty' }, 'No partitions yet.'));
  };
  const unsubscribe = subscribe(update);
  return () => {
    unsubscribe();
    chart.destroy();
  };
}
