// Talking to the node: JSON fetches with the access token, the WebSocket URL, the
// token prompt on 401, and a small parser for the Prometheus text of /metrics.
//
// The token lives in sessionStorage (this tab only). It is sent as
// `Authorization: Bearer <token>` on fetches and as `access_token=<token>` on
// WebSocket URLs (browsers cannot set headers there).

const TOKEN_KEY = 'tidegate.token';

/** The stored access token, or null. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Forgets the token (sign out). */
export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  document.dispatchEvent(new CustomEvent('tidegate:token'));
}

function storeToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  document.dispatchEvent(new CustomEvent('tidegate:token'));
}

/** An API answer that was not 2xx: its status and problem+json body (when it had one). */
export class ApiError extends Error {
  constructor(status, problem, path) {
    super(problem?.detail || `${path}: HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.code = problem?.code;
  }
}

let prompting = null;

/**
 * Shows the token dialog and resolves once a token was entered. Concurrent callers
 * share one dialog. `refused` explains that the previous token was not accepted.
 */
export function askToken(refused) {
  if (prompting) return prompting;
  prompting = new Promise((resolve) => {
    const dialog = document.getElementById('token-dialog');
    const form = document.getElementById('token-form');
    const input = document.getElementById('token-input');
    const error = document.getElementById('token-error');
    error.hidden = !refused;
    error.textContent = refused ? 'The node refused that token (401). Check it and try again.' : '';
    input.value = '';
    const onSubmit = (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      form.removeEventListener('submit', onSubmit);
      dialog.removeEventListener('cancel', onCancel);
      storeToken(value);
      dialog.close();
      prompting = null;
      resolve();
    };
    // Nothing works without a token: Escape does not dismiss the dialog.
    const onCancel = (event) => event.preventDefault();
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
    input.focus();
  });
  return prompting;
}

/**
 * Fetches `path` and returns its JSON (or text) body. On 401 it asks for a token and
 * tries again; other errors throw an ApiError carrying the problem document.
 */
export async function api(path, options = {}) {
  let refused = false;
  for (;;) {
    const headers = new Headers(options.headers || {});
    const sent = token();
    if (sent) headers.set('Authorization', `Bearer ${sent}`);
    if (!headers.has('Accept')) headers.set('Accept', 'application/json, application/problem+json');
    const resp = await fetch(path, { ...options, headers });
    if (resp.status === 401) {
      refused = Boolean(sent);
      if (sent && sent === token()) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(refused);
      continue;
    }
    const type = resp.headers.get('content-type') || '';
    const body = type.includes('json') ? await resp.json().catch(() => null) : await resp.text();
    if (!resp.ok) throw new ApiError(resp.status, typeof body === 'object' ? body : null, path);
    return body;
  }
}

/** `ws(s)://` URL for `path` on this node with `params` and the token. */
export function wsUrl(path, params = {}) {
  const url = new URL(path, window.location.href);
  url.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, value);
  }
  const t = token();
  if (t) url.searchParams.set('access_token', t);
  return url.toString();
}

/** Path segment escaping for topic and group names. */
export function seg(name) {
  return encodeURIComponent(name);
}

/**
 * Parses Prometheus text exposition into `Map<name, [{labels, value}]>`.
 * Comments and malformed lines are skipped.
 */
export function parseMetrics(text) {
  const out = new Map();
  const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split('\n')) {
    if (!raw || raw.startsWith('#')) continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(label)) {
      labels[l[1]] = l[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    }
    const value = Number(m[3]);
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value });
  }
  return out;
}

/** Sums a metric's samples by one label: `Map<labelValue, total>`. */
export function sumBy(metrics, name, labelName) {
  const out = new Map();
  for (const s of metrics.get(name) || []) {
    const key = s.labels[labelName];
    if (key === undefined) continue;
    out.set(key, (out.get(key) || 0) + s.value);
  }
  return out;
}
