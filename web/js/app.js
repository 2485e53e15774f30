// The dashboard's entry point: hash routes to pages, the top bar (navigation,
// readiness, refresh interval, sign-out) and the background sampler.
//
// Each page is `render(view, ...params)` and returns its cleanup function, which runs
// when the route changes (closing WebSockets, dropping subscriptions).

import { clearToken, token } from './api.js';
import * as sampler from './sampler.js';
import * as topics from './pages/topics.js';
import * as topic from './pages/topic.js';
import * as tail from './pages/tail.js';
import * as groups from './pages/groups.js';
import * as group from './pages/group.js';
import * as node from './pages/node.js';

const ROUTES = [
  { pattern: /^#\/topics\/([^/]+)\/tail$/, nav: 'topics', page: tail },
  { pattern: /^#\/topics\/([^/]+)$/, nav: 'topics', page: topic },
  { pattern: /^#\/topics\/?$/, nav: 'topics', page: topics },
  { pattern: /^#\/groups\/([^/]+)$/, nav: 'groups', page: group },
  { pattern: /^#\/groups\/?$/, nav: 'groups', page: groups },
  { pattern: /^#\/node\/?$/, nav: 'node', page: node },
];

const REFRESH_KEY = 'tidegate.refresh';
let cleanup = null;

function route() {
  const hash = window.location.hash || '#/topics';
  const match = ROUTES.map((r) => ({ r, m: r.pattern.exec(hash) })).find((x) => x.m);
  if (!match) {
    window.location.replace('#/topics');
    return;
  }
  if (cleanup) cleanup();
  cleanup = null;
  const view = document.getElementById('view');
  view.replaceChildren();
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === match.r.nav);
  }
  const params = match.m.slice(1).map(decodeURIComponent);
  cleanup = match.r.page.render(view, ...params) || null;
  window.scrollTo(0, 0);
}

function health(data) {
  const pill = document.getElementById('health');
  if (data.error) {
    pill.className = 'pill bad';
    pill.textContent = 'unreachable';
    pill.title = data.error;
  } else if (data.status && !data.status.ready) {
    pill.className = 'pill warn';
    pill.textContent = 'not ready';
    pill.title = 'The node is starting or shutting down';
  } else {
    pill.className = 'pill ok';
    pill.textContent = 'ready';
    pill.title = data.status ? `${data.status.addr} · v${data.status.version}` : '';
  }
}

function showSignOut() {
  document.getElementById('signout').hidden = !token();
}

function init() {
  const select = document.getElementById('refresh');
  const saved = window.localStorage.getItem(REFRESH_KEY);
  if (saved !== null && [...select.options].some((o) => o.value === saved)) select.value = saved;
  select.addEventListener('change', () => {
    window.localStorage.setItem(REFRESH_KEY, select.value);
    sampler.setIntervalMs(Number(select.value));
  });
  document.getElementById('signout').addEventListener('click', () => {
    clearToken();
    window.location.reload();
  });
  document.addEventListener('tidegate:token', showSignOut);
  showSignOut();
  sampler.subscribe(health);
  window.addEventListener('hashchange', route);
  route();
  sampler.start(Number(select.value));
}

init();
