//! `/tracker.js` in headless Chromium (WebDriver, see `tidegate_tests::browser`), on
//! pages served from other origins than the gateway, with authentication on:
//!
//! - a page from an origin its write key lists sends events with `fetch` (keepalive,
//!   `text/plain`, answered with CORS headers so the page reads the status), and with
//!   `navigator.sendBeacon` when it is left; every event is stored exactly once, also
//!   when an answer is lost and the batch is resent, and when the next page load
//!   resends what a beacon already delivered (same `messageId`s);
//! - the same in topic mode (`topic`: the write key goes in `?key=`);
//! - a write key the gateway does not know: 401, and the tracker gives the events up
//!   instead of retrying forever;
//! - a page from an origin the key does not list: every fetch and beacon is refused (403
//!   `origin_not_allowed`, counted in `/metrics`), without CORS headers, the tracker
//!   backs off (a full batch tracked meanwhile waits for the retry), and nothing is
//!   stored.
//!
//! The page wraps `fetch` and `navigator.sendBeacon` to record every send in its
//! `localStorage` (kept across the origin's pages), so the test sees what the tracker
//! did. Screenshots go to `tests/artifacts/` (or `$TIDEGATE_ARTIFACTS_DIR`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tidegate_tests::browser::Browser;
use tidegate_tests::{Api, TestServer, eventually};

const SECRET: &str = "tracker-browser-test-hmac-secret-32+bytes";
const WRITE_KEY: &str = "pk_shop_test";
/// How long a step may take (the tracker's first retry comes after 1–1.25 s).
const WAIT: Duration = Duration::from_secs(15);

/// A test page: instrumentation, then the tracker's snippet pointed at the gateway
/// (`{GATEWAY}`). The instrumentation records each `fetch` (URL, options, the batch's
/// `messageId`s, then its status or error) in `localStorage["test.fetches"]` and each
/// `sendBeacon` (URL, result) in `localStorage["test.beacons"]`, and shows both. With
/// `window.loseNextResponse = true`, the next fetch reaches the gateway but the tracker
/// sees a network error instead of the answer (as when a connection drops after the
/// request was written), so it has to resend the same events. With
/// `window.throttleNextResponse = N`, the next fetch reaches the gateway but the tracker
/// sees `429` with `Retry-After: N` instead of the answer.
const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Shop (tracker test)</title><link rel="icon" href="data:,">
<style>body{font:14px system-ui,sans-serif;margin:2em}pre{background:#f3f3f3;padding:1em;white-space:pre-wrap}</style>
</head><body>
<h1>Shop page <small id="where"></small></h1>
<p>Sends recorded by the test's wrappers of <code>fetch</code> and <code>navigator.sendBeacon</code>:</p>
<pre id="log"></pre>
<script>
(function () {
{LOG}
  const add = (k, e) => { const l = list(k); l.push(e); localStorage.setItem(k, JSON.stringify(l)); show(); return l.length - 1; };
  const update = (k, i, fields) => { const l = list(k); Object.assign(l[i], fields); localStorage.setItem(k, JSON.stringify(l)); show(); };
  const ids = body => {
    try {
      const b = JSON.parse(body);
      return (Array.isArray(b) ? b : b.batch).map(e => e.messageId);
    } catch (e) { return null; }
  };
  const realFetch = window.fetch.bind(window);
  window.fetch = function (url, options) {
    const o = options || {};
    const i = add('test.fetches', { at: Date.now(), url: String(url), keepalive: o.keepalive === true, credentials: o.credentials,
      contentType: (o.headers || {})['Content-Type'], ids: ids(o.body), writeKey: (JSON.parse(o.body).writeKey || null) });
    const lose = window.loseNextResponse === true;
    window.loseNextResponse = false;
    const throttle = window.throttleNextResponse;
    window.throttleNextResponse = undefined;
    return realFetch(url, options).then(r => {
      update('test.fetches', i, { status: r.status, lost: lose });
      if (lose) throw new TypeError('the answer was lost (test)');
      if (throttle) {
        update('test.fetches', i, { status: 429, throttled: throttle });
        return new Response('{"code":"rate_limited"}', { status: 429, headers: { 'Retry-After': String(throttle) } });
      }
      return r;
    }, e => { update('test.fetches', i, { error: String(e) }); throw e; });
  };
  const realBeacon = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = function (url, data) {
    const ok = realBeacon(url, data);
    add('test.beacons', { url: String(url), ok: ok, type: data && data.type });
    return ok;
  };
  show();
})();
</script>
<script>
  window.tidegate = window.tidegate || function () { (tidegate.q = tidegate.q || []).push(arguments); };
  tidegate('init', { host: '{GATEWAY}', writeKey: '{WRITE_KEY}', flushInterval: 60000 });
</script>
<script async src="{GATEWAY}/tracker.js"></script>
</body></html>
"#;

/// The page a visitor goes to next: same origin, no tracker (so only the beacon sent
/// on leaving the previous page can deliver what was queued), showing the record.
const BYE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Left the shop</title><link rel="icon" href="data:,">
<style>body{font:14px system-ui,sans-serif;margin:2em}pre{background:#f3f3f3;padding:1em;white-space:pre-wrap}</style>
</head><body><h1>Left the shop <small id="where"></small></h1><pre id="log"></pre>
<script>
(function () {
{LOG}
  show();
})();
</script></body></html>
"#;

/// Script shared by the pages: `list(key)` reads a record, `show()` renders both.
const LOG: &str = r#"  const list = k => JSON.parse(localStorage.getItem(k) || '[]');
  const show = () => {
    document.getElementById('where').textContent = location.origin + location.pathname;
    const result = e => e.status ? e.status + (e.lost ? ' (answer lost)' : '') : e.error || (e.ok ? 'queued' : 'pending');
    const line = e => [result(e), e.url, e.ids ? e.ids.length + ' events' : ''].join('  ');
    document.getElementById('log').textContent = 'fetch:\n' + list('test.fetches').map(line).join('\n')
      + '\n\nsendBeacon:\n' + list('test.beacons').map(line).join('\n');
  };"#;

/// Serves [`PAGE`] at `/` and [`BYE`] at `/bye` on `listener` (an origin of its own).
fn serve_pages(listener: tokio::net::TcpListener, gateway: SocketAddr) {
    let page =
        PAGE.replace("{LOG}", LOG).replace("{GATEWAY}", &format!("http://{gateway}")).replace("{WRITE_KEY}", WRITE_KEY);
    let bye = BYE.replace("{LOG}", LOG);
    let html = |body: String| ([("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")], body);
    let app = axum::Router::new()
        .route("/", axum::routing::get(move || async move { html(page) }))
        .route("/bye", axum::routing::get(move || async move { html(bye) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
}

fn admin_token() -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({"sub": "tracker-test", "exp": exp, "permissions": ["admin"]});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// Every record of `topic` (all partitions), or none when the topic does not exist yet.
async fn records(admin: &Api, topic: &str) -> Vec<Value> {
    let resp = admin.get(&format!("/v1/topics/{topic}")).send().await.expect("describe");
    if resp.status() == 404 {
        return Vec::new();
    }
    let partitions = resp.json::<Value>().await.unwrap()["partition_count"].as_u64().expect("partition_count");
    let mut out = Vec::new();
    for p in 0..partitions {
        out.extend(admin.read_all(topic, p as u32).await);
    }
    out
}

/// How many times each `messageId` is stored in `topic`.
async fn stored_ids(admin: &Api, topic: &str) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for r in records(admin, topic).await {
        let id = r["value"]["messageId"].as_str().unwrap_or_else(|| panic!("no messageId in {r}")).to_string();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

/// The value of `tidegate_auth_refused_total{reason="<reason>"}` (0 when absent).
async fn refused(admin: &Api, reason: &str) -> u64 {
    let text = admin.get("/metrics").send().await.expect("metrics").text().await.expect("metrics text");
    let prefix = format!("tidegate_auth_refused_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().expect("a counter value"))
}

/// The page's record of its fetches or beacons (`"test.fetches"`, `"test.beacons"`).
async fn sends(browser: &Browser, key: &str) -> Vec<Value> {
    let v = browser.execute("return JSON.parse(localStorage.getItem(arguments[0]) || '[]')", vec![json!(key)]).await;
    v.as_array().cloned().unwrap_or_default()
}

/// The `messageId`s of a recorded fetch.
fn ids_of(send: &Value) -> BTreeSet<String> {
    send["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids in {send}"))
        .iter()
        .map(|i| i.as_str().unwrap().into())
        .collect()
}

/// Waits until the tracker has loaded in the page.
async fn wait_loaded(browser: &Browser) {
    browser.wait_for("the tracker to load", WAIT, "return window.tidegate && window.tidegate.loaded === true").await;
}

/// Waits until the tracker's queue is empty and the page recorded `fetches` fetches,
/// all answered.
async fn wait_sent(browser: &Browser, what: &str, fetches: usize) {
    browser
        .wait_for(
            what,
            WAIT,
            &format!(
                "const f = JSON.parse(localStorage.getItem('test.fetches') || '[]');
                 return JSON.parse(localStorage.getItem('tidegate.queue') || '[]').length === 0
                     && f.length === {fetches} && f.every(e => e.status || e.error);"
            ),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_sends_each_event_once_from_an_allowed_origin_and_is_refused_elsewhere() {
    let shop = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let other = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let shop_origin = format!("http://{}", shop.local_addr().unwrap());
    let other_origin = format!("http://{}", other.local_addr().unwrap());
    let keys = json!([{"key": WRITE_KEY, "topics": ["segment.*", "web"], "origins": [shop_origin]}]);
    let server = TestServer::start(|c| {
        c.jwt_keys = json!([{"alg": "HS256", "secret": SECRET}]).to_string().parse().unwrap();
        c.write_keys = keys.to_string().parse().unwrap();
    })
    .await;
    serve_pages(shop, server.addr);
    serve_pages(other, server.addr);
    let admin = server.with_token(&admin_token());
    admin.create_topic_with(json!({"name": "web", "partitions": 2, "event_id": "/messageId"})).await;
    let browser = Browser::start("tracker").await;

    // 1. fetch: five events in one batch; the first answer is lost, so the tracker
    // resends the batch (same messageIds) and the gateway stores it once.
    browser.goto(&format!("{shop_origin}/")).await;
    wait_loaded(&browser).await;
    browser
        .execute(
            "window.loseNextResponse = true;
             for (let i = 0; i < 5; i++) tidegate('track', 'Product Viewed', { i: i, via: 'fetch' });
             tidegate('flush');",
            vec![],
        )
        .await;
    wait_sent(&browser, "the batch resent after its lost answer, then acknowledged", 2).await;
    let fetches = sends(&browser, "test.fetches").await;
    let batch = ids_of(&fetches[0]);
    assert_eq!(batch.len(), 5, "{fetches:?}");
    assert_eq!(ids_of(&fetches[1]), batch, "the resend carries the same messageIds");
    for f in &fetches {
        assert_eq!(f["url"], format!("http://{}/v1/b", server.addr), "{f}");
        assert_eq!(f["keepalive"], true, "{f}");
        assert_eq!(f["credentials"], "omit", "{f}");
        assert_eq!(f["contentType"], "text/plain", "a simple request: no preflight; {f}");
        assert_eq!(f["writeKey"], WRITE_KEY, "the write key travels in the batch body; {f}");
        // A cross-origin status is readable only with Access-Control-Allow-Origin.
        assert_eq!(f["status"], 200, "{f}");
    }
    assert_eq!(fetches[0]["lost"], true);
    let stored = stored_ids(&admin, "segment.track").await;
    assert_eq!(stored.keys().cloned().collect::<BTreeSet<_>>(), batch, "each event of the batch is stored");
    assert!(stored.values().all(|&n| n == 1), "each event is stored once: {stored:?}");
    browser.screenshot("fetch").await;

    // 2. sendBeacon: four events still queued when the visitor leaves the page; the
    // page they go to has no tracker, so only the beacon can deliver them.
    browser
        .execute("for (let i = 0; i < 4; i++) tidegate('track', 'Product Viewed', { i: i, via: 'beacon' });", vec![])
        .await;
    let queued = browser.execute("return JSON.parse(localStorage.getItem('tidegate.queue')).length", vec![]).await;
    assert_eq!(queued, json!(4), "the events wait in the queue (flushInterval is a minute)");
    browser.goto(&format!("{shop_origin}/bye")).await;
    let beacons = sends(&browser, "test.beacons").await;
    assert_eq!(beacons.len(), 1, "one beacon for the four queued events (not one per hide event): {beacons:?}");
    assert_eq!(beacons[0]["url"], format!("http://{}/v1/b", server.addr));
    assert_eq!(beacons[0]["ok"], true, "the browser accepted the beacon");
    assert_eq!(beacons[0]["type"], "text/plain", "a CORS-safelisted type: no preflight");
    assert_eq!(sends(&browser, "test.fetches").await.len(), 2, "no fetch on leaving");
    let stored = eventually("the beaconed events stored", WAIT, || async {
        let ids = stored_ids(&admin, "segment.track").await;
        (ids.len() == 9).then_some(ids)
    })
    .await;
    assert!(stored.values().all(|&n| n == 1), "each event is stored once: {stored:?}");
    let tracks = records(&admin, "segment.track").await;
    let beaconed: Vec<&Value> = tracks.iter().filter(|r| r["value"]["properties"]["via"] == "beacon").collect();
    assert_eq!(beaconed.len(), 4, "{tracks:?}");
    assert!(beaconed.iter().all(|r| r["value"]["context"]["page"]["url"] == format!("{shop_origin}/")));
    browser.screenshot("beacon").await;

    // 3. Back on a page with the tracker: the queue still holds the beaconed events
    // (a beacon is never acknowledged), so they are resent with fetch, and the
    // gateway's deduplication keeps them once.
    browser.goto(&format!("{shop_origin}/")).await;
    wait_loaded(&browser).await;
    wait_sent(&browser, "the beaconed events resent and acknowledged", 3).await;
    let fetches = sends(&browser, "test.fetches").await;
    let resent = ids_of(&fetches[2]);
    assert_eq!(resent.len(), 4);
    assert_eq!(fetches[2]["status"], 200);
    let stored = stored_ids(&admin, "segment.track").await;
    assert_eq!(stored.len(), 9, "nothing new: {stored:?}");
    assert!(resent.iter().all(|id| stored.get(id) == Some(&1)), "the resent events are the beaconed ones, once each");
    assert!(stored.values().all(|&n| n == 1), "each event is stored once: {stored:?}");

    // 4. Topic mode: JSON arrays to /v1/topics/web/events, the write key in `?key=`,
    // a lost answer resent and deduplicated by the topic's event_id.
    browser
        .execute(
            "tidegate('init', { topic: 'web' });
             window.loseNextResponse = true;
             for (let i = 0; i < 3; i++) tidegate('track', 'Added to Cart', { i: i });
             tidegate('flush');",
            vec![],
        )
        .await;
    wait_sent(&browser, "the topic batch resent and acknowledged", 5).await;
    let fetches = sends(&browser, "test.fetches").await;
    for f in &fetches[3..] {
        assert_eq!(f["url"], format!("http://{}/v1/topics/web/events?key={WRITE_KEY}", server.addr), "{f}");
        assert_eq!(f["status"], 200, "{f}");
    }
    assert_eq!(ids_of(&fetches[3]), ids_of(&fetches[4]));
    let web = stored_ids(&admin, "web").await;
    assert_eq!(web.keys().cloned().collect::<BTreeSet<_>>(), ids_of(&fetches[3]));
    assert!(web.values().all(|&n| n == 1), "each event is stored once: {web:?}");
    browser.screenshot("topic").await;
    browser.assert_no_console_errors().await;

    // 4b. A 429 with Retry-After: 3 (longer than the first backoff, 1–1.25 s): the
    // tracker waits at least that long before resending the same events.
    browser
        .execute(
            "window.throttleNextResponse = 3;
             for (let i = 0; i < 2; i++) tidegate('track', 'Throttled', { i: i });
             tidegate('flush');",
            vec![],
        )
        .await;
    wait_sent(&browser, "the throttled batch resent after Retry-After", 7).await;
    let fetches = sends(&browser, "test.fetches").await;
    assert_eq!((fetches[5]["status"].clone(), fetches[5]["throttled"].clone()), (json!(429), json!(3)), "{fetches:?}");
    assert_eq!(fetches[6]["status"], 200, "{:?}", fetches[6]);
    assert_eq!(ids_of(&fetches[5]), ids_of(&fetches[6]), "the resend carries the same messageIds");
    let waited = fetches[6]["at"].as_f64().unwrap() - fetches[5]["at"].as_f64().unwrap();
    assert!(waited >= 3000.0, "resent {waited} ms after the 429: sooner than its Retry-After");
    let web = stored_ids(&admin, "web").await;
    assert_eq!(web.len(), 5, "{web:?}");
    assert!(web.values().all(|&n| n == 1), "each event is stored once: {web:?}");

    // 4c. Events of multi-byte text: 10 × 5,000 CJK characters are ~150 KB in UTF-8
    // though ~50,000 UTF-16 units; the tracker sizes batches in bytes, so every fetch
    // stays within the browser's 64 KiB keepalive limit and all of them arrive.
    browser
        .execute(
            "for (let i = 0; i < 10; i++) tidegate('track', 'Wide', { t: '漢'.repeat(5000) }); tidegate('flush');",
            vec![],
        )
        .await;
    browser
        .wait_for(
            "the wide events sent",
            WAIT,
            "const f = JSON.parse(localStorage.getItem('test.fetches') || '[]');
             return JSON.parse(localStorage.getItem('tidegate.queue') || '[]').length === 0
                 && f.length > 7 && f.every(e => e.status || e.error);",
        )
        .await;
    let fetches = sends(&browser, "test.fetches").await;
    for f in &fetches[7..] {
        assert_eq!((f["status"].clone(), f["keepalive"].clone()), (json!(200), json!(true)), "{f}");
    }
    assert!(fetches.len() >= 7 + 3, "150 KB cannot go in fewer than three 64 KiB requests: {}", fetches.len());
    let web = stored_ids(&admin, "web").await;
    assert_eq!(web.len(), 15, "{web:?}");
    assert!(web.values().all(|&n| n == 1), "each event is stored once: {web:?}");
    let before = fetches.len();

    // 5. A write key the gateway does not know: 401 (readable: the origin is allowed
    // for CORS), and the tracker drops the events instead of retrying forever.
    browser
        .execute(
            "tidegate('init', { topic: null, writeKey: 'pk_unknown' });
             tidegate('track', 'Lost', {}); tidegate('track', 'Lost', {});
             tidegate('flush');",
            vec![],
        )
        .await;
    wait_sent(&browser, "the refused batch given up", before + 1).await;
    let fetches = sends(&browser, "test.fetches").await;
    assert_eq!(fetches[before]["status"], 401, "{:?}", fetches[before]);
    assert_eq!(refused(&admin, "invalid_write_key").await, 1);
    let errors = browser.console_errors().await;
    assert!(errors.len() == 1 && errors[0].contains("401"), "only the refused request is logged: {errors:?}");

    // 6. Another origin, same key: the fetch and the beacon are refused (403
    // origin_not_allowed) without CORS headers, so the page cannot read the answer.
    browser.goto(&format!("{other_origin}/")).await;
    wait_loaded(&browser).await;
    browser
        .execute("for (let i = 0; i < 3; i++) tidegate('track', 'Refused', { i: i }); tidegate('flush');", vec![])
        .await;
    browser
        .wait_for(
            "the fetch from the other origin to fail",
            WAIT,
            "const f = JSON.parse(localStorage.getItem('test.fetches') || '[]'); return f.length > 0 && f[0].error;",
        )
        .await;
    // The tracker backs off: a full batch (20) tracked now waits for the retry timer.
    let sent_now = browser
        .execute(
            "const count = () => JSON.parse(localStorage.getItem('test.fetches')).length;
             const before = count();
             for (let i = 3; i < 28; i++) tidegate('track', 'Refused', { i: i });
             return count() - before;",
            vec![],
        )
        .await;
    assert_eq!(sent_now, json!(0), "no request outside the backoff schedule");
    // Another tab of the site saved an event to the shared queue meanwhile: this tab's
    // next save keeps it (it used to overwrite the queue with its own copy).
    let kept = browser
        .execute(
            "const q = JSON.parse(localStorage.getItem('tidegate.queue'));
             q.push({ type: 'track', event: 'Other tab', properties: {}, messageId: 'other-tab-1' });
             localStorage.setItem('tidegate.queue', JSON.stringify(q));
             tidegate('track', 'Refused', { i: 99 });
             const ids = JSON.parse(localStorage.getItem('tidegate.queue')).map(e => e.messageId);
             return [ids.includes('other-tab-1'), ids.length];",
            vec![],
        )
        .await;
    assert_eq!(kept, json!([true, 30]), "28 + the other tab's + the new one");
    browser.screenshot("refused").await;
    browser.goto(&format!("{other_origin}/bye")).await;
    let fetches = sends(&browser, "test.fetches").await;
    let beacons = sends(&browser, "test.beacons").await;
    assert!(fetches.iter().all(|f| f["status"].is_null()), "no answer is readable: {fetches:?}");
    assert_eq!(beacons.len(), 1, "{beacons:?}");
    let attempts = (fetches.len() + beacons.len()) as u64;
    eventually("every request of the other origin refused", WAIT, || async {
        (refused(&admin, "origin_not_allowed").await == attempts).then_some(())
    })
    .await;
    let tracks = records(&admin, "segment.track").await;
    assert_eq!(tracks.len(), 9, "nothing from the other origin is stored");
    assert!(tracks.iter().all(|r| r["value"]["context"]["page"]["url"] == format!("{shop_origin}/")));
    let errors = browser.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("CORS") && e.contains(&other_origin)),
        "the browser blocked the answer for lack of CORS headers: {errors:?}"
    );
    browser.screenshot("refused-bye").await;
    browser.quit().await;
}
