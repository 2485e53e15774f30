// Consumer groups: state, members and total lag (with its recent history) per group.

import { api, seg } from '../api.js';
import { sparkline } from '../chart.js';
import { el, num, replace } from '../format.js';
import { subscribe } from '../sampler.js';

/** Pill class of a group state. */
export function stateClass(state) {
  return { stable: 'ok', rebalancing: 'warn', empty: '' }[state] ?? '';
}

export function render(view) {
  document.title = 'Groups · Tidegate';
  const list = el('div', { class: 'card flush' }, el('p', { class: 'empty' }, 'Loading…'));
  view.append(el('div', { class: 'page-head' }, el('h1', {}, 'Consumer groups')), list);
  let alive = true;

  const update = async (d) => {
    let groups;
    try {
      groups = (await api('/v1/groups')).groups;
    } catch (e) {
      if (alive) replace(list, el('p', { class: 'empty error' }, `Cannot list groups: ${e.message}`));
      return;
    }
    if (!alive) return;
    if (!groups.length) {
      replace(list, el('div', { class: 'empty' },
        el('p', {}, 'No consumer groups yet. A group appears when a consumer subscribes with ', el('code', {}, 'group='), ':'),
        el('pre', {}, el('code', {}, `websocat '${window.location.origin.replace(/^http/, 'ws')}/v1/topics/page_views/subscribe?group=etl&from=earliest'`))));
      return;
    }
    const rows = groups.map((g) => {
      const history = d.groupLag.get(g.group);
      const lag = d.groupLagNow.get(g.group);
      return el('tr', { dataset: { group: g.group } },
        el('td', { class: 'name' }, el('a', { href: `#/groups/${seg(g.group)}` }, g.group)),
        el('td', {}, el('span', { class: `pill ${stateClass(g.state)}` }, g.state)),
        el('td', { class: 'num' }, num(g.members)),
        el('td', { class: 'num' }, el('div', { class: 'rate' },
          history ? sparkline(history.lag, { index: 1 }) : null,
          el('span', { dataset: { col: 'lag' } }, d.metricsOk ? num(lag) : '–'))));
    });
    replace(list, el('div', { class: 'table-wrap' }, el('table', { id: 'groups-table' },
      el('thead', {}, el('tr', {},
        el('th', {}, 'Group'), el('th', {}, 'State'), el('th', { class: 'num' }, 'Members'), el('th', { class: 'num' }, 'Lag'))),
      el('tbody', {}, rows))));
  };
  const unsubscribe = subscribe(update);
  return () => {
    alive = false;
    unsubscribe();
  };
}
