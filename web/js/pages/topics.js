// Topics: totals, the produce/consume throughput chart of all topics, and one row per
// topic with its size and live rates.

import { seg } from '../api.js';
import { TimeChart, sparkline } from '../chart.js';
import { bytes, el, num, rate, replace, retention, stat } from '../format.js';
import { subscribe } from '../sampler.js';

export function render(view) {
  document.title = 'Topics · Tidegate';
  const stats = el('div', { class: 'stats' });
  const chartBox = el('div');
  const list = el('div', { class: 'card flush' }, el('p', { class: 'empty' }, 'Loading…'));
  const notice = el('div', { class: 'notice', hidden: true });
  view.append(
    el('div', { class: 'page-head' }, el('h1', {}, 'Topics')),
    notice,
    stats,
    el('div', { class: 'card' }, el('h2', {}, 'Throughput, all topics (records/s)'), chartBox),
    list,
  );
  const chart = new TimeChart(chartBox, {
    series: [{ label: 'produced' }, { label: 'consumed' }],
    axis: rate,
    fmt: (v) => `${rate(v)}/s`,
  });

  const update = (d) => {
    notice.hidden = !d.error;
    notice.textContent = d.error ? `Cannot refresh: ${d.error}. Showing the last known state.` : '';
    const totals = d.totals;
    chart.set(totals.t, [totals.produce, totals.consume]);
    const partitions = d.topics.reduce((a, t) => a + t.partition_count, 0);
    const records = d.topics.reduce((a, t) => a + t.records, 0);
    const stored = d.topics.reduce((a, t) => a + t.bytes, 0);
    const last = (xs) => (xs.length ? xs[xs.length - 1] : null);
    replace(stats,
      stat('Topics', num(d.topics.length)),
      stat('Partitions', num(partitions)),
      stat('Records', num(records)),
      stat('Stored', bytes(stored)),
      stat('Produced', `${rate(last(totals.produce))}/s`),
      stat('Consumed', d.metricsOk ? `${rate(last(totals.consume))}/s` : '–'));
    if (!d.topics.length) {
      replace(list, el('div', { class: 'empty' },
        el('p', {}, 'No topics yet. Create one:'),
        el('pre', {}, el('code', {}, `curl -XPOST ${window.location.origin}/v1/topics \\\n  -H 'content-type: application/json' \\\n  -d '{"name":"page_views","partitions":3}'`))));
      return;
    }
    const rows = d.topics.map((t) => {
      const entry = d.byTopic.get(t.name);
      const history = entry?.history;
      return el('tr', { dataset: { topic: t.name } },
        el('td', { class: 'name' }, el('a', { href: `#/topics/${seg(t.name)}` }, t.name)),
        el('td', { class: 'num hide-sm' }, num(t.partition_count)),
        el('td', { class: 'num', dataset: { col: 'records' } }, num(t.records)),
        el('td', { class: 'num hide-sm' }, bytes(t.bytes)),
        el('td', { class: 'hide-sm' }, retention(t.retention_ms, t.retention_bytes)),
        el('td', { class: 'num' }, el('div', { class: 'rate' },
          history ? sparkline(history.produce, { index: 0 }) : null,
          el('span', { dataset: { col: 'produce' } }, `${rate(entry?.produce)}/s`))),
        el('td', { class: 'num hide-sm' }, el('div', { class: 'rate' },
          history && d.metricsOk ? sparkline(history.consume, { index: 1 }) : null,
          el('span', {}, d.metricsOk ? `${rate(entry?.consume)}/s` : '–'))),
        el('td', {}, el('a', { href: `#/topics/${seg(t.name)}/tail` }, 'Live tail')));
    });
    replace(list, el('div', { class: 'table-wrap' }, el('table', { id: 'topics-table' },
      el('thead', {}, el('tr', {},
        el('th', {}, 'Topic'), el('th', { class: 'num hide-sm' }, 'Partitions'), el('th', { class: 'num' }, 'Records'),
        el('th', { class: 'num hide-sm' }, 'Size'), el('th', { class: 'hide-sm' }, 'Retention'),
        el('th', { class: 'num' }, 'Produce'), el('th', { class: 'num hide-sm' }, 'Consume'), el('th', {}, ''))),
      el('tbody', {}, rows))));
  };
  const unsubscribe = subscribe(update);
  return () => {
    unsubscribe();
    chart.destroy();
  };
}
