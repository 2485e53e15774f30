/*! Tidegate first-party tracker (ES2017, no build step). Served at /tracker.js.
 *
 * Usage (the stub queues calls made before this file loads):
 *   <script>
 *     window.tidegate = window.tidegate || function () { (tidegate.q = tidegate.q || []).push(arguments); };
 *     tidegate('init', { host: 'https://events.example.com', writeKey: 'WRITE_KEY' });
 *     tidegate('page');
 *   </script>
 *   <script async src="https://events.example.com/tracker.js"></script>
 *
 * Calls: init(options), track(event, properties), page(name?, properties?),
 * identify(userId, traits?), group(groupId, traits?), reset(), flush().
 * Options: host (default: this script's origin), writeKey, topic, batchSize (20),
 * flushInterval ms (2000), maxQueue (1000).
 *
 * Events follow Segment's spec (type, messageId, anonymousId, userId, timestamp,
 * context...). With `topic`, batches go to POST {host}/v1/topics/{topic}/events (give
 * that topic the event_id "/messageId" so retries are deduplicated); otherwise to the
 * Segment batch endpoint POST {host}/v1/b, routed by the gateway's segment_topics.
 * Bodies are text/plain (no CORS preflight). The queue lives in localStorage until the
 * gateway acknowledges it, shared by the site's open tabs (each save merges with what
 * the others saved); sends use fetch with keepalive (bodies of up to 64 KiB, counted in
 * UTF-8 bytes; a larger single event is sent without keepalive), and
 * navigator.sendBeacon when the page is hidden. Retries (with backoff, and never sooner than a 429's or
 * 503's Retry-After) resend the same events with the same messageIds, so the gateway
 * stores each event once. The write key goes in the batch's
 * `writeKey` (Segment mode) or in `?key=` (topic mode). A 4xx answer other than 408 and
 * 429 (malformed events, unknown write key, origin not allowed) drops the batch.
 */
(function (window) {
  'use strict';
  var VERSION = '1.0.0';
  var KEY_QUEUE = 'tidegate.queue';
  var KEY_ANON = 'tidegate.anonymousId';
  var KEY_USER = 'tidegate.userId';
  // fetch keepalive and sendBeacon bodies are limited to 64 KiB (in bytes) in flight.
  var MAX_BODY = 60000;
  var encoder = typeof TextEncoder === 'function' ? new TextEncoder() : null;

  var existing = window.tidegate;
  if (existing && existing.loaded) return;

  var settings = { host: '', writeKey: null, topic: null, batchSize: 20, flushInterval: 2000, maxQueue: 1000 };
  var memory = {};
  var queue = [];
  var sending = false;
  var timer = null;
  var backoff = 0;
  var initialised = false;
  // messageIds handed to a beacon by this page (visibilitychange and pagehide both
  // fire when the page is left: the second finds nothing new to send).
  var beaconed = {};
  // messageIds the gateway acknowledged since the last save, left out of the shared queue.
  var acked = {};

  function store(key, value) {
    try {
      if (value === null) window.localStorage.removeItem(key);
      else window.localStorage.setItem(key, value);
    } catch (e) {
      memory[key] = value;
    }
  }

  function load(key) {
    try {
      var v = window.localStorage.getItem(key);
      if (v !== null) return v;
    } catch (e) { /* storage blocked: memory only */ }
    return memory[key] === undefined ? null : memory[key];
  }

  function uuid() {
    var c = window.crypto;
    if (c && typeof c.randomUUID === 'function') return c.randomUUID();
    var b = new Uint8Array(16);
    if (c && typeof c.getRandomValues === 'function') c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  }

  function anonymousId() {
    var id = load(KEY_ANON);
    if (!id) {
      id = uuid();
      store(KEY_ANON, id);
    }
    return id;
  }

  function loadQueue() {
    try {
      var q = JSON.parse(load(KEY_QUEUE) || '[]');
      return Array.isArray(q) ? q : [];
    } catch (e) {
      return [];
    }
  }

  // Saves this tab's queue merged with what other tabs of the site saved (one shared
  // key: overwriting it would lose their events), without the acknowledged ones. An
  // event another tab still holds may come back and be sent twice: the gateway stores
  // it once (same messageId).
  function saveQueue() {
    var seen = {};
    var merged = [];
    function add(e) {
      if (e && e.messageId && !seen[e.messageId] && !acked[e.messageId]) {
        seen[e.messageId] = true;
        merged.push(e);
      }
    }
    loadQueue().forEach(add);
    queue.forEach(add);
    if (merged.length > settings.maxQueue) merged.splice(0, merged.length - settings.maxQueue);
    acked = {};
    store(KEY_QUEUE, JSON.stringify(merged));
  }

  // Length of `text` in UTF-8 bytes (what the browser's 64 KiB limits count).
  function bytes(text) {
    if (encoder) return encoder.encode(text).length;
    return unescape(encodeURIComponent(text)).length;
  }

  function scriptOrigin() {
    var s = document.currentScript;
    try {
      return s && s.src ? new URL(s.src).origin : window.location.origin;
    } catch (e) {
      return window.location.origin;
    }
  }

  var defaultHost = scriptOrigin();

  function endpoint() {
    var host = (settings.host || defaultHost).replace(/\/+$/, '');
    // A JSON array cannot carry `writeKey`: topic mode sends the key in the query.
    if (settings.topic) {
      var key = settings.writeKey ? '?key=' + encodeURIComponent(settings.writeKey) : '';
      return host + '/v1/topics/' + encodeURIComponent(settings.topic) + '/events' + key;
    }
    return host + '/v1/b';
  }

  function context() {
    var l = window.location;
    return {
      page: { path: l.pathname, referrer: document.referrer, search: l.search, title: document.title, url: l.href },
      userAgent: window.navigator.userAgent,
      locale: window.navigator.language,
      library: { name: 'tidegate.js', version: VERSION }
    };
  }

  function enqueue(event) {
    event.messageId = uuid();
    event.anonymousId = anonymousId();
    var userId = load(KEY_USER);
    if (userId && event.userId === undefined) event.userId = userId;
    event.timestamp = new Date().toISOString();
    event.context = context();
    queue.push(event);
    if (queue.length > settings.maxQueue) queue.splice(0, queue.length - settings.maxQueue);
    saveQueue();
    // While backing off after a failure, a full batch waits for the retry timer too.
    if (queue.length >= settings.batchSize && backoff === 0) flush();
    else schedule(settings.flushInterval);
  }

  function schedule(ms) {
    if (timer === null) timer = window.setTimeout(function () { timer = null; flush(); }, ms);
  }

  // The first events of the queue whose body fits in MAX_BODY bytes (at least one).
  function nextChunk(events) {
    var chunk = [];
    var size = 128;
    for (var i = 0; i < events.length; i++) {
      var n = bytes(JSON.stringify(events[i])) + 1;
      if (chunk.length > 0 && size + n > MAX_BODY) break;
      chunk.push(events[i]);
      size += n;
    }
    return chunk;
  }

  function body(events) {
    var sentAt = new Date().toISOString();
    if (settings.topic) {
      return JSON.stringify(events.map(function (e) { return Object.assign({}, e, { sentAt: sentAt }); }));
    }
    var payload = { batch: events, sentAt: sentAt };
    if (settings.writeKey) payload.writeKey = settings.writeKey;
    return JSON.stringify(payload);
  }

  function forget(events) {
    events.forEach(function (e) { acked[e.messageId] = true; });
    queue = queue.filter(function (e) { return !acked[e.messageId]; });
    saveQueue();
  }

  function flush() {
    if (!initialised || sending || queue.length === 0) return Promise.resolve();
    if (timer !== null) {
      window.clearTimeout(timer);
      timer = null;
    }
    var chunk = nextChunk(queue);
    var text = body(chunk);
    sending = true;
    return window.fetch(endpoint(), {
      method: 'POST',
      body: text,
      headers: { 'Content-Type': 'text/plain' },
      // Browsers refuse keepalive bodies over 64 KiB: a single event that large goes
      // without it (it cannot outlive the page; it stays queued until acknowledged).
      keepalive: bytes(text) <= 65536,
      credentials: 'omit'
    }).then(function (response) {
      // Read the answer to its end: until then the browser counts the request against
      // its 64 KiB of keepalive bodies in flight, and the next batch would be refused.
      return response.text().then(function () { return response; }, function () { return response; });
    }).then(function (response) {
      sending = false;
      if (response.ok || done(response.status)) {
        forget(chunk);
        backoff = 0;
        if (queue.length > 0) return flush();
        return undefined;
      }
      retry(retryAfterMs(response));
      return undefined;
    }, function () {
      sending = false;
      retry();
    });
  }

  // A 4xx other than 408 and 429 is final: the events are malformed or too large, the
  // write key is unknown, or this origin or topic is not allowed. Resending the same
  // request cannot change the answer, so the events are given up, not retried forever.
  function done(status) {
    return status >= 400 && status < 500 && status !== 408 && status !== 429;
  }

  // The wait a 429 or 503 asks for in Retry-After (seconds or an HTTP date), in ms, at
  // most an hour; 0 without one. The gateway exposes the header to pages (CORS).
  function retryAfterMs(response) {
    var value = response.headers && response.headers.get('Retry-After');
    if (!value) return 0;
    var ms = /^\s*\d+\s*$/.test(value) ? Number(value) * 1000 : Date.parse(value) - Date.now();
    return ms > 0 ? Math.min(ms, 3600000) : 0;
  }

  // Exponential backoff (1 s doubling up to a minute, plus jitter), never sooner than
  // the server's Retry-After.
  function retry(atLeastMs) {
    backoff = Math.min(backoff ? backoff * 2 : 1000, 60000);
    schedule(Math.max(backoff, atLeastMs || 0) + Math.floor(Math.random() * 250));
  }

  // Page hidden or unloading: hand everything queued to the browser. The events stay
  // queued until a fetch is acknowledged; a resend after a delivered beacon is
  // deduplicated by the gateway (same messageIds).
  function beacon() {
    if (!initialised || queue.length === 0 || !window.navigator.sendBeacon) return;
    var rest = queue.filter(function (e) { return !beaconed[e.messageId]; });
    while (rest.length > 0) {
      var chunk = nextChunk(rest);
      rest = rest.slice(chunk.length);
      var blob = new Blob([body(chunk)], { type: 'text/plain' });
      // A beacon over 64 KiB (one large event) is refused: it waits for a later fetch.
      if (blob.size > 65536) continue;
      if (!window.navigator.sendBeacon(endpoint(), blob)) break;
      chunk.forEach(function (e) { beaconed[e.messageId] = true; });
    }
  }

  var calls = {
    init: function (options) {
      Object.keys(options || {}).forEach(function (k) {
        if (options[k] !== undefined) settings[k] = options[k];
      });
      initialised = true;
      if (queue.length > 0) schedule(0);
    },
    track: function (event, properties) {
      enqueue({ type: 'track', event: String(event), properties: properties || {} });
    },
    page: function (name, properties) {
      if (typeof name === 'object' && name !== null) {
        properties = name;
        name = undefined;
      }
      var e = { type: 'page', properties: Object.assign({ path: window.location.pathname, url: window.location.href,
        title: document.title, referrer: document.referrer }, properties || {}) };
      if (name) e.name = String(name);
      enqueue(e);
    },
    identify: function (userId, traits) {
      if (userId !== undefined && userId !== null) store(KEY_USER, String(userId));
      enqueue({ type: 'identify', userId: load(KEY_USER) || undefined, traits: traits || {} });
    },
    group: function (groupId, traits) {
      enqueue({ type: 'group', groupId: String(groupId), traits: traits || {} });
    },
    reset: function () {
      store(KEY_USER, null);
      store(KEY_ANON, null);
    },
    flush: function () {
      return flush();
    }
  };

  function tidegate(name) {
    var call = calls[name];
    if (!call) throw new Error('tidegate: unknown call ' + name);
    return call.apply(null, Array.prototype.slice.call(arguments, 1));
  }

  queue = loadQueue();

  var pending = existing && existing.q ? existing.q : [];
  tidegate.loaded = true;
  tidegate.version = VERSION;
  window.tidegate = tidegate;
  pending.forEach(function (args) { tidegate.apply(null, args); });

  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'hidden') beacon();
  });
  window.addEventListener('pagehide', beacon);
})(window);
