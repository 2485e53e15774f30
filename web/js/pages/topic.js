// One topic: settings, its produce/consume rate chart, and per partition the offsets,
// size and produce rate.

import { seg } from '../api.js';
import { TimeChart } from '../chart.js';
import { bar, bytes, datetime, el, num, rate, replace, retention, stat } from '../format.js';
import { subscribe } from '../sampler.js';

export function render(view, name) {
  document.title = `${name} · Tidegate`;
  const stats = el('div', { class: 'stats' });
  const chartBox = el('div');
  const parts = el('div', { class: 'table-wrap' });
  const missing = el('div', { class: 'notice', hidden: true });
  view.append(
    el('div', { class: 'crumbs' }, el('a', { href: '#/topics' }, 'Topics'), ' / '),
    el('div', { class: 'page-head' },
      el('h1', {}, name),
      el('span', { class: 'spacer' }),
      el('a', { class: 'button primary', href: `#/topics/${seg(name)}/tail` }, 'Live tail')),
    missing,
    stats,
    el('div', { class: 'card' }, el('h2', {}, 'Throughput (records/s)'), chartBox),
    el('div', { class: 'card flush' }, el('h2', {}, 'Partitions'), parts),
  );
  const chart = new TimeChart(chartBox, {
    series: [{ label: 'produced' }, { label: 'consumed' }],
    axis: rate,
    fmt: (v) => `${rate(v)}/s`,
  });

  const update = (d) => {
    const t = d.topics.find((x) => x.name === name);
    missing.hidden = Boolean(t);
    missing.textContent = t ? '' : `Topic ${name} does not exist (or was deleted).`;
    if (!t) return;
    const entry = d.byTopic.get(name);
    if (entry) chart.set(entry.history.t, [entry.history.produce, entry.history.consume]);
    const disk = t.partitions.reduce((a, p) => a + p.disk_bytes, 0);
    replace(stats,
      stat('Partitions', num(t.partition_count)),
      stat('Records', num(t.records)),
      stat('Stored', bytes(t.bytes)),
      stat('On disk', bytes(disk)),
      stat('Produced', `${rate(entry?.produce)}/s`),
      stat('Consumed', d.metricsOk ? `${rate(entry?.consume)}/s` : '–'),
      stat('Retention', retention(t.retention_ms, t.retention_bytes), { small: true }),
      stat('Created', datetime(t.created_ms), { small: true }));
    const maxBytes = Math.max(1, ...t.partitions.map((p) => p.bytes));
    const rows = t.partitions.map((p) => el('tr', { dataset: { partition: p.partition } },
      el('td', {}, el('span', { class: 'badge' }, p.partition)),
      el('td', { class: 'num hide-sm' }, num(p.start_offset)),
      el('td', { class: 'num', dataset: { col: 'end' } }, num(p.end_offset)),
      el('td', { class: 'num hide-sm' }, num(p.high_watermark)),
      el('td', { class: 'num' }, num(p.end_offset - p.start_offset)),
      el('td', { class: 'num' }, el('div', { class: 'cell-bar' }, bytes(p.bytes), bar(p.bytes / maxBytes))),
      el('td', { class: 'num hide-sm' }, bytes(p.disk_bytes)),
      el('td', { class: 'num hide-sm' }, num(p.leader_epoch)),
      el('td', { class: 'num' }, `${rate(entry?.partitions[p.partition])}/s`)));
    replace(parts, el('table', { id: 'partitions-table' },
      el('thead', {}, el('tr', {},
        el('th', {}, 'Partition'), el('th', { class: 'num hide-sm' }, 'Start'), el('th', { class: 'num' }, 'End'),
        el('th', { class: 'num hide-sm' }, 'High watermark'), el('th', { class: 'num' }, 'Records'),
        el('th', { class: 'num' }, 'Size'), el('th', { class: 'num hide-sm' }, 'On disk'),
        el('th', { class: 'num hide-sm' }, 'Epoch'), el('th', { class: 'num' }, 'Produce'))),
      el('tbody', {}, rows)));
  };
  const unsubscribe = subscribe(update);
  return () => {
    unsubscribe();
    chart.destroy();
  };
}
