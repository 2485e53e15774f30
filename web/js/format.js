// DOM building and number/time formatting. Everything from the server is put into
// the page as text nodes (never as HTML), so record values cannot inject markup.

/** Creates an element: `el('td', {class: 'num'}, 'text', childNode, ...)`. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces every child of `node`. */
export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** 1234567 → "1,234,567" (locale grouping). */
export function num(n) {
  return n === null || n === undefined || Number.isNaN(n) ? '–' : integer.format(n);
}

/** Events per second, with one decimal below 10. */
export function rate(r) {
  if (r === null || r === undefined || Number.isNaN(r)) return '–';
  return r < 10 ? decimal.format(r) : integer.format(r);
}

/** Bytes in binary units: "1.5 MiB". */
export function bytes(b) {
  if (b === null || b === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = b;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : decimal.format(v)} ${units[i]}`;
}

/** A duration in ms as "3d 4h", "5m 12s", "850 ms". */
export function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const parts = (a, ua, b, ub) => (b ? `${a}${ua} ${b}${ub}` : `${a}${ua}`);
  if (d) return parts(d, 'd', h, 'h');
  if (h) return parts(h, 'h', m, 'm');
  if (m) return parts(m, 'm', s, 's');
  return `${s}s`;
}

/** A retention limit, or "forever"/"unbounded" when unset. */
export function retention(ms, b) {
  const parts = [];
  if (ms) parts.push(duration(ms));
  if (b) parts.push(`${bytes(b)}/partition`);
  return parts.length ? parts.join(' · ') : 'none';
}

/** A timestamp in ms as local date and time. */
export function datetime(ms) {
  if (!ms && ms !== 0) return '–';
  return new Date(ms).toLocaleString();
}

/** A timestamp in ms as local time with milliseconds. */
export function time(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/**
 * A JSON value as syntax-highlighted text: compact on one line, or pretty (indented).
 * Built from spans and text nodes.
 */
export function jsonView(value, pretty) {
  const out = document.createDocumentFragment();
  const indent = (depth) => (pretty ? '\n' + '  '.repeat(depth) : '');
  const walk = (v, depth) => {
    if (v === null || typeof v === 'boolean') out.append(el('span', { class: 'j-lit' }, String(v)));
    else if (typeof v === 'number') out.append(el('span', { class: 'j-num' }, String(v)));
    else if (typeof v === 'string') out.append(el('span', { class: 'j-str' }, JSON.stringify(v)));
    else if (Array.isArray(v)) {
      if (!v.length) return out.append('[]');
      out.append('[');
      v.forEach((item, i) => {
        out.append(indent(depth + 1));
        walk(item, depth + 1);
        if (i < v.length - 1) out.append(pretty ? ',' : ', ');
      });
      out.append(indent(depth), ']');
    } else {
      const keys = Object.keys(v);
      if (!keys.length) return out.append('{}');
      out.append('{');
      keys.forEach((k, i) => {
        out.append(indent(depth + 1), el('span', { class: 'j-key' }, JSON.stringify(k)), ': ');
        walk(v[k], depth + 1);
        if (i < keys.length - 1) out.append(pretty ? ',' : ', ');
      });
      out.append(indent(depth), '}');
    }
  };
  walk(value, 0);
  return out;
}

/** A stat tile: label above a value. */
export function stat(label, value, opts = {}) {
  return el('div', { class: 'stat', dataset: opts.id ? { stat: opts.id } : undefined },
    el('div', { class: 'label' }, label),
    el('div', { class: opts.small ? 'value small' : 'value', id: opts.valueId }, value));
}

/** A horizontal bar filled to `fraction` (0..1). */
export function bar(fraction, cls = '') {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return el('div', { class: `bar ${cls}` }, el('span', { style: `width:${pct.toFixed(1)}%` }));
}

let toastTimer = null;

/** A short message at the bottom of the screen. */
export function toast(message) {
  const node = document.getElementById('toast');
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, 4000);
}
