// One consumer group: state and generation, its lag over time (total and per
// partition), the members with their assignments, and per partition the owner,
// committed offset, end offset and lag.

import { api, ApiError, seg } from '../api.js';
import { TimeChart } from '../chart.js';
import { bar, el, num, replace, stat } from '../format.js';
import { subscribe } from '../sampler.js';
import { stateClass } from './groups.js';

/** Samples of lag kept per group (10 minutes at the default 2 s). */
const WINDOW = 300;
/** Partitions drawn as their own lines (the busiest); the total is always drawn. */
const MAX_LINES = 7;

/** Lag history per group, kept while the dashboard is open: [{t, total, lags: {key: lag}}]. */
const histories = new Map();

export function render(view, name) {
  document.title = `${name} · Tidegate`;
  const head = el('div', { class: 'page-head' }, el('h1', {}, name));
  const state = el('span', { class: 'pill', id: 'group-state' }, '…');
  head.append(state);
  const stats = el('div', { class: 'stats' });
  const chartBox = el('div');
  const members = el('div', { class: 'table-wrap' });
  const parts = el('div', { class: 'table-wrap' });
  const notice = el('div', { class: 'notice', hidden: true });
  view.append(
    el('div', { class: 'crumbs' }, el('a', { href: '#/groups' }, 'Groups'), ' / '),
    head, notice, stats,
    el('div', { class: 'card' }, el('h2', {}, 'Lag (records behind the high watermark)'), chartBox),
    el('div', { class: 'grid' },
      el('div', { class: 'card flush' }, el('h2', {}, 'Members'), members),
      el('div', { class: 'card flush' }, el('h2', {}, 'Partitions'), parts)),
  );
  if (!histories.has(name)) histories.set(name, []);
  const history = histories.get(name);
  let chart = null;
  let chartKeys = '';
  let alive = true;

  const draw = () => {
    const latest = history[history.length - 1];
    const keys = Object.entries(latest?.lags || {}).sort((a, b) => b[1] - a[1]).slice(0, MAX_LINES).map(([k]) => k).sort();
    if (!chart || keys.join('|') !== chartKeys) {
      chart?.destroy();
      chartKeys = keys.join('|');
      chart = new TimeChart(chartBox, {
        series: [{ label: 'total' }, ...keys.map((k) => ({ label: k }))],
        axis: num,
        fmt: num,
      });
    }
    chart.set(history.map((s) => s.t), [history.map((s) => s.total), ...keys.map((k) => history.map((s) => s.lags[k] ?? null))]);
  };

  const update = async () => {
    let g;
    try {
      g = await api(`/v1/groups/${seg(name)}`);
    } catch (e) {
      if (!alive) return;
      notice.hidden = false;
      notice.textContent = e instanceof ApiError && e.status === 404 ? `Group ${name} does not exist (or was deleted).` : `Cannot refresh: ${e.message}`;
      return;
    }
    if (!alive) return;
    notice.hidden = true;
    const lags = {};
    for (const p of g.partitions) lags[`${p.topic}/${p.partition}`] = p.lag;
    history.push({ t: Date.now() / 1000, total: g.lag, lags });
    if (history.length > WINDOW) history.shift();
    draw();

    state.textContent = g.state;
    state.className = `pill ${stateClass(g.state)}`;
    const committed = g.partitions.filter((p) => p.committed !== null).length;
    replace(stats,
      stat('Lag', num(g.lag), { valueId: 'group-lag' }),
      stat('Members', num(g.members.length)),
      stat('Generation', num(g.generation)),
      stat('Partitions', num(g.partitions.length)),
      stat('Committed', `${num(committed)} of ${num(g.partitions.length)}`, { small: true }));

    replace(members, g.members.length
      ? el('table', { id: 'members-table' },
        el('thead', {}, el('tr', {}, el('th', {}, 'Member'), el('th', { class: 'hide-sm' }, 'Client'),
          el('th', {}, 'Connected'), el('th', {}, 'Partitions'))),
        el('tbody', {}, g.members.map((m) => el('tr', { dataset: { member: m.member } },
          el('td', { class: 'mono' }, m.member, m.is_static ? [' ', el('span', { class: 'badge', title: 'static member' }, 'static')] : null),
          el('td', { class: 'mono hide-sm' }, m.client),
          el('td', {}, el('span', { class: `pill ${m.connected ? 'ok' : 'warn'}` }, m.connected ? 'yes' : 'away')),
          el('td', { class: 'mono' }, m.partitions.map((p) => `${p.topic}/${p.partition}`).join(', ') || '–')))))
      : el('p', { class: 'empty' }, 'No members connected.'));

    const maxLag = Math.max(1, ...g.partitions.map((p) => p.lag));
    replace(parts, el('table', { id: 'group-partitions' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Partition'), el('th', {}, 'Owner'),
        el('th', { class: 'num' }, 'Committed'), el('th', { class: 'num hide-sm' }, 'End'), el('th', { class: 'num' }, 'Lag'))),
      el('tbody', {}, g.partitions.map((p) => el('tr', { dataset: { tp: `${p.topic}/${p.partition}` } },
        el('td', {}, el('a', { href: `#/topics/${seg(p.topic)}` }, p.topic), ' ', el('span', { class: 'badge' }, p.partition)),
        el('td', { class: 'mono' }, p.owner || '–'),
        el('td', { class: 'num' }, p.committed === null ? '–' : num(p.committed)),
        el('td', { class: 'num hide-sm' }, num(p.end_offset)),
        el('td', { class: 'num' }, el('div', { class: 'cell-bar' }, el('span', { dataset: { col: 'lag' } }, num(p.lag)), bar(p.lag / maxLag, 'lag'))))))));
  };
  const unsubscribe = subscribe(update);
  return () => {
    alive = false;
    unsubscribe();
    chart?.destroy();
  };
}
