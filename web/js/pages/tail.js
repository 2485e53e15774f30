// Live tail of a topic over the WebSocket subscription (an ephemeral subscription to
// every partition, protocol in /docs/websocket): newest records first, pause and
// resume (the view holds still and the server stops delivering until resume), a
// partition filter, compact or pretty JSON. A dropped connection is reopened where it
// stopped (`offsets=`).

import { api, ApiError, seg, wsUrl } from '../api.js';
import { el, jsonView, num, rate, replace, time, toast } from '../format.js';

/** Records kept on screen (older ones are dropped). */
const MAX_ROWS = 500;
/** Seconds over which the arrival rate is averaged. */
const RATE_WINDOW = 5;

export function render(view, name) {
  document.title = `Tail ${name} · Tidegate`;
  const status = el('span', { id: 'tail-status', class: 'pill' }, 'connecting');
  const partition = el('select', { id: 'tail-partition', 'aria-label': 'Partition' }, el('option', { value: 'all' }, 'All partitions'));
  const from = el('select', { id: 'tail-from', 'aria-label': 'Start from' },
    el('option', { value: 'latest' }, 'From now on'),
    el('option', { value: 'earliest' }, 'From the earliest'));
  const pause = el('button', { id: 'tail-pause', type: 'button' }, 'Pause');
  const pretty = el('input', { id: 'tail-pretty', type: 'checkbox' });
  const clear = el('button', { id: 'tail-clear', type: 'button', class: 'ghost' }, 'Clear');
  const count = el('span', { id: 'tail-count', class: 'muted' }, '0 records');
  const list = el('div', { id: 'tail-list', class: 'tail-list' });
  const empty = el('p', { class: 'empty', id: 'tail-empty' }, 'Waiting for records…');
  view.append(
    el('div', { class: 'crumbs' }, el('a', { href: '#/topics' }, 'Topics'), ' / ', el('a', { href: `#/topics/${seg(name)}` }, name), ' /'),
    el('div', { class: 'page-head' }, el('h1', {}, 'Live tail'), status),
    el('div', { class: 'card' },
      el('div', { class: 'toolbar' }, partition, from, pause,
        el('label', { class: 'check' }, pretty, 'Pretty JSON'), clear, el('span', { class: 'spacer' }), count),
      empty, list),
  );

  let ws = null;
  let closedByUs = false;
  let paused = false;
  let backoff = 500;
  let retry = null;
  let frame = null;
  let received = 0;
  const arrivals = [];
  const positions = new Map();
  let buffer = [];
  let pending = [];

  const setStatus = (text, cls) => {
    status.textContent = text;
    status.className = `pill ${cls || ''}`;
  };

  const matches = (r) => partition.value === 'all' || String(r.partition) === partition.value;

  const row = (r) => {
    const color = `var(--chart-${(r.partition % 8) + 1})`;
    if (r.gap) {
      return el('div', { class: 'rec gap', dataset: { partition: r.partition } },
        `Partition ${r.partition}: offsets ${num(r.from)}–${num(r.to - 1)} were deleted by retention before they could be shown.`);
    }
    const value = r.value_encoding === 'base64'
      ? document.createTextNode(`${r.value}  (base64)`)
      : jsonView(r.value, pretty.checked);
    const names = Object.keys(r.headers || {});
    const headers = names.length ? el('pre', { class: 'rec-value rec-headers', hidden: true }, jsonView(r.headers, true)) : null;
    const toggle = headers
      ? el('button', {
        class: 'linkish', type: 'button', title: names.join(', '),
        onclick: () => { headers.hidden = !headers.hidden; },
      }, `headers (${names.length})`)
      : null;
    return el('div', { class: 'rec', style: `border-left-color:${color}`, dataset: { partition: r.partition, offset: r.offset } },
      el('div', { class: 'rec-head' },
        el('span', { class: 'badge', style: `color:${color}` }, `p${r.partition}`),
        el('span', { class: 'offset' }, `#${r.offset}`),
        el('span', {}, time(r.timestamp)),
        r.key !== null && r.key !== undefined ? el('span', { class: 'key' }, `key ${r.key}`) : null,
        toggle),
      el('pre', { class: pretty.checked ? 'rec-value' : 'rec-value compact' }, value),
      headers);
  };

  const redraw = () => {
    const shown = buffer.filter(matches);
    replace(list, shown.slice().reverse().map(row));
    empty.hidden = shown.length > 0;
    counter();
  };

  const counter = () => {
    const now = Date.now() / 1000;
    while (arrivals.length && arrivals[0][0] < now - RATE_WINDOW) arrivals.shift();
    const recent = arrivals.reduce((a, x) => a + x[1], 0) / RATE_WINDOW;
    const shown = list.childElementCount;
    const filtered = partition.value === 'all' ? '' : ` · ${num(shown)} shown`;
    count.textContent = `${num(received)} records · ${rate(recent)}/s${filtered}`;
  };

  const flush = () => {
    frame = null;
    // While paused the view holds still: frames already on the way are kept (at most
    // MAX_ROWS) and shown on resume.
    if (paused) {
      if (pending.length > MAX_ROWS) pending = pending.slice(pending.length - MAX_ROWS);
      return;
    }
    if (!pending.length) return;
    const fresh = pending;
    pending = [];
    buffer = buffer.concat(fresh);
    if (buffer.length > MAX_ROWS) buffer = buffer.slice(buffer.length - MAX_ROWS);
    const rows = fresh.filter(matches).reverse().map(row);
    list.prepend(...rows);
    while (list.childElementCount > MAX_ROWS) list.lastElementChild.remove();
    empty.hidden = list.childElementCount > 0;
    counter();
  };

  const onFrame = (f) => {
    switch (f.type) {
      case 'assignment':
        for (const p of f.partitions) if (!positions.has(p.partition)) positions.set(p.partition, p.offset);
        backoff = 500;
        if (paused) send({ type: 'pause' });
        setStatus(paused ? 'paused' : 'live', paused ? 'warn' : 'ok live');
        break;
      case 'records':
        for (const r of f.records) pending.push({ ...r, partition: f.partition });
        if (f.records.length) positions.set(f.partition, f.records[f.records.length - 1].offset + 1);
        received += f.records.length;
        arrivals.push([Date.now() / 1000, f.records.length]);
        if (!frame) frame = window.requestAnimationFrame(flush);
        break;
      case 'gap':
        pending.push({ gap: true, partition: f.partition, from: f.from, to: f.to });
        positions.set(f.partition, f.to);
        if (!frame) frame = window.requestAnimationFrame(flush);
        break;
      case 'error':
        toast(`${f.code}: ${f.detail}`);
        break;
      default:
        break;
    }
  };

  const send = (f) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(f));
  };

  const connect = () => {
    retry = null;
    const resume = [...positions].map(([p, o]) => `${p}:${o}`).join(',');
    const params = resume ? { offsets: resume, from: from.value } : { from: from.value };
    const socket = new WebSocket(wsUrl(`/v1/topics/${seg(name)}/subscribe`, params));
    ws = socket;
    setStatus('connecting');
    socket.onmessage = (event) => {
      if (ws === socket) onFrame(JSON.parse(event.data));
    };
    socket.onclose = (event) => {
      if (ws !== socket || closedByUs) return;
      if (event.code === 4001) {
        setStatus('topic deleted', 'bad');
        return;
      }
      setStatus('reconnecting', 'warn');
      retry = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  };

  const restart = () => {
    positions.clear();
    buffer = [];
    pending = [];
    received = 0;
    arrivals.length = 0;
    redraw();
    if (ws) {
      const old = ws;
      ws = null;
      old.close(1000);
    }
    clearTimeout(retry);
    connect();
  };

  pause.addEventListener('click', () => {
    paused = !paused;
    send({ type: paused ? 'pause' : 'resume' });
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.classList.toggle('primary', paused);
    if (ws && ws.readyState === WebSocket.OPEN) setStatus(paused ? 'paused' : 'live', paused ? 'warn' : 'ok live');
    if (!paused) flush();
  });
  partition.addEventListener('change', redraw);
  pretty.addEventListener('change', redraw);
  from.addEventListener('change', restart);
  clear.addEventListener('click', () => {
    buffer = [];
    redraw();
  });
  const ticker = setInterval(counter, 1000);

  // Describing the topic first checks that it exists (and asks for a token on 401,
  // which a WebSocket upgrade cannot show to the page).
  api(`/v1/topics/${seg(name)}`).then((t) => {
    if (closedByUs) return;
    for (const p of t.partitions) partition.append(el('option', { value: p.partition }, `Partition ${p.partition}`));
    connect();
  }).catch((e) => {
    setStatus(e instanceof ApiError && e.status === 404 ? 'no such topic' : 'error', 'bad');
    empty.textContent = e.message;
  });

  return () => {
    closedByUs = true;
    clearTimeout(retry);
    clearInterval(ticker);
    if (frame) window.cancelAnimationFrame(frame);
    if (ws) ws.close(1000);
  };
}
