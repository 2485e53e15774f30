//! The dashboard and the API docs in headless Chromium (WebDriver, see
//! `tidegate_tests::browser`): pages load with no console errors and nothing from
//! outside the node, topics are listed, the live tail shows records as a producer
//! posts them, and a group's lag falls as its consumer commits. Screenshots go to
//! `tests/artifacts/` (or `$TIDEGATE_ARTIFACTS_DIR`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidegate_tests::browser::{Browser, BrowserOptions};
use tidegate_tests::{Subscriber, TestServer, WsEvent};

/// How long a page gets to show what a step expects (it refreshes every 1–2 s).
const WAIT: Duration = Duration::from_secs(20);

/// Asserts the page loaded nothing from outside the node and logged no errors.
async fn assert_clean(browser: &Browser) {
    let offsite = browser.offsite_resources().await;
    assert!(offsite.is_empty(), "the page loaded resources from elsewhere: {offsite:?}");
    browser.assert_no_console_errors().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_topics_and_every_page_loads_without_console_errors() {
    let server = TestServer::start(|_| {}).await;
    server.create_topic("page_views", 3).await;
    server.create_topic("clicks", 2).await;
    server.produce("page_views", &json!([{"type": "page", "path": "/"}, {"type": "like", "post": 1}])).await;
    let browser = Browser::start("dashboard").await;
    browser.goto(&server.url("/")).await;

    browser
        .wait_for(
            "both topics listed with their record counts",
            WAIT,
            "const records = n => document.querySelector(`tr[data-topic='${n}'] [data-col=records]`)?.textContent;
             return records('page_views') === '2' && records('clicks') === '0';",
        )
        .await;
    let names = browser
        .execute("return [...document.querySelectorAll('#topics-table tbody tr')].map(r => r.dataset.topic)", vec![])
        .await;
    assert_eq!(names, json!(["clicks", "page_views"]), "topics are listed by name");
    browser.screenshot("topics").await;

    browser.click("tr[data-topic='page_views'] td.name a").await;
    browser
        .wait_for(
            "the topic's partitions with their end offsets",
            WAIT,
            "const ends = [...document.querySelectorAll('#partitions-table tbody tr [data-col=end]')]
                 .map(c => Number(c.textContent));
             return ends.length === 3 && ends.reduce((a, b) => a + b, 0) === 2;",
        )
        .await;
    browser.screenshot("topic").await;

    browser.click("[data-nav=groups]").await;
    browser
        .wait_for(
            "the empty groups page",
            WAIT,
            "return document.querySelector('.empty')?.textContent.includes('No consumer groups yet')",
        )
        .await;

    browser.click("[data-nav=node]").await;
    let addr = server.addr.to_string();
    browser
        .wait_for(
            "this node's address, readiness and partition leaders",
            WAIT,
            &format!(
                "return document.querySelector('[data-stat=addr] .value')?.textContent === '{addr}'
                    && document.getElementById('node-state')?.textContent === 'ready'
                    && document.querySelectorAll('#leaders-table tbody tr').length === 5;"
            ),
        )
        .await;
    browser.screenshot("node").await;

    browser.color_scheme("dark").await;
    browser.goto(&server.url("/#/topics")).await;
    browser
        .wait_for(
            "the topics table in dark mode",
            WAIT,
            "return document.querySelectorAll('#topics-table tbody tr').length === 2",
        )
        .await;
    let background = browser.execute("return getComputedStyle(document.body).backgroundColor", vec![]).await;
    assert_eq!(background, json!("rgb(15, 19, 24)"), "the dark palette applies");
    browser.screenshot("topics-dark").await;

    assert_clean(&browser).await;
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_fits_a_phone_screen() {
    let server = TestServer::start(|_| {}).await;
    server.create_topic("page_views_from_the_mobile_site", 6).await;
    let browser = Browser::start_with("phone", BrowserOptions::phone()).await;
    browser.goto(&server.url("/")).await;
    browser
        .wait_for("the topic listed", WAIT, "return document.querySelectorAll('#topics-table tbody tr').length === 1")
        .await;
    let overflow = browser
        .execute("return document.documentElement.scrollWidth - document.documentElement.clientWidth", vec![])
        .await;
    assert_eq!(overflow, json!(0), "the page does not scroll sideways on a phone");
    assert_eq!(browser.execute("return window.innerWidth", vec![]).await, json!(390));
    browser.screenshot("topics").await;
    browser.click("[data-nav=node]").await;
    browser
        .wait_for("the node page", WAIT, "return document.getElementById('node-state')?.textContent === 'ready'")
        .await;
    let overflow = browser
        .execute("return document.documentElement.scrollWidth - document.documentElement.clientWidth", vec![])
        .await;
    assert_eq!(overflow, json!(0), "the node page does not scroll sideways on a phone");
    browser.screenshot("node").await;
    assert_clean(&browser).await;
    browser.quit().await;
}

/// JavaScript: the markers shown in the tail, newest first.
const TAIL_MARKERS: &str = "return [...document.querySelectorAll('#tail-list .rec')]
    .filter(r => r.offsetParent !== null)
    .map(r => { const m = r.textContent.match(/tail-[a-z0-9-]+/); return m ? m[0] : null; })
    .filter(Boolean);";

async fn tail_markers(browser: &Browser) -> Vec<String> {
    let v = browser.execute(TAIL_MARKERS, vec![]).await;
    v.as_array().into_iter().flatten().filter_map(|m| m.as_str().map(str::to_string)).collect()
}

async fn post_marker(server: &TestServer, partition: u32, marker: &str) {
    server
        .produce_raw(
            "tail",
            &format!("?partition={partition}"),
            "application/json",
            json!({"marker": marker, "nested": {"ok": true, "n": [1, 2]}}).to_string(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_records_arriving_live_while_a_producer_posts() {
    let server = TestServer::start(|_| {}).await;
    server.create_topic("tail", 2).await;
    post_marker(&server, 0, "tail-before").await;
    let browser = Browser::start("tail").await;
    browser.goto(&server.url("/#/topics/tail/tail")).await;
    browser
        .wait_for("the tail to go live", WAIT, "return document.getElementById('tail-status')?.textContent === 'live'")
        .await;

    // Records posted now appear one after the other, newest first; the one posted
    // before the page opened does not (the tail starts at the end).
    for i in 0..6u32 {
        let marker = format!("tail-live-{i}");
        post_marker(&server, i % 2, &marker).await;
        browser
            .wait_for(
                &format!("{marker} in the tail"),
                WAIT,
                &format!("return document.querySelector('#tail-list').textContent.includes('\"{marker}\"')"),
            )
            .await;
    }
    let shown = tail_markers(&browser).await;
    let expected: Vec<String> = (0..6).rev().map(|i| format!("tail-live-{i}")).collect();
    assert_eq!(shown, expected, "records appear live, newest first, and nothing from before the page opened");
    browser.screenshot("live").await;

    // Partition filter: only partition 1's records stay visible.
    browser.select("#tail-partition", "1").await;
    let shown = tail_markers(&browser).await;
    assert_eq!(shown, vec!["tail-live-5", "tail-live-3", "tail-live-1"], "filtered to partition 1");
    browser.select("#tail-partition", "all").await;

    // Pretty JSON: values are indented over several lines.
    browser.click("#tail-pretty").await;
    let pretty =
        browser.execute("return document.querySelector('#tail-list .rec .rec-value').textContent", vec![]).await;
    let pretty = pretty.as_str().unwrap_or_default();
    assert!(pretty.contains("\n  \"marker\": \"tail-live-5\""), "pretty JSON is indented: {pretty}");
    let parsed: Value = serde_json::from_str(pretty).expect("the pretty value is the record's JSON");
    assert_eq!(parsed["nested"]["n"], json!([1, 2]));
    browser.screenshot("pretty").await;

    // Pause: the view holds still while records are posted, and shows them on resume.
    browser.click("#tail-pause").await;
    browser.wait_for("paused", WAIT, "return document.getElementById('tail-status').textContent === 'paused'").await;
    post_marker(&server, 0, "tail-paused").await;
    let until = Instant::now() + Duration::from_millis(750);
    while Instant::now() < until {
        assert!(!tail_markers(&browser).await.contains(&"tail-paused".to_string()), "a paused tail shows nothing new");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.click("#tail-pause").await;
    browser
        .wait_for(
            "the record posted while paused, after resume",
            WAIT,
            "return document.querySelector('#tail-list').textContent.includes('tail-paused')",
        )
        .await;
    assert_eq!(tail_markers(&browser).await.first().map(String::as_str), Some("tail-paused"));

    assert_clean(&browser).await;
    browser.quit().await;
}

/// Reads frames until `count` records arrived; returns them as (partition, offset).
async fn receive_records(consumer: &mut Subscriber, count: usize) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    while got.len() < count {
        match consumer.recv(WAIT).await {
            Some(WsEvent::Frame(f)) if f["type"] == "records" => {
                let p = f["partition"].as_u64().expect("partition");
                got.extend(
                    f["records"].as_array().expect("records").iter().map(|r| (p, r["offset"].as_u64().unwrap())),
                );
            }
            Some(WsEvent::Frame(_)) => {}
            other => panic!("the consumer stopped before {count} records: {other:?}"),
        }
    }
    got
}

async fn commit(consumer: &mut Subscriber, partition: u32, offset: u64) {
    consumer.send(&json!({"type": "commit", "offsets": [{"partition": partition, "offset": offset}]})).await;
    loop {
        match consumer.recv(WAIT).await {
            Some(WsEvent::Frame(f)) if f["type"] == "committed" => return,
            Some(WsEvent::Frame(f)) if f["type"] == "error" => panic!("commit refused: {f}"),
            Some(WsEvent::Frame(_)) => {}
            other => panic!("no committed frame: {other:?}"),
        }
    }
}

async fn wait_lag(browser: &Browser, total: u64, p0: u64, p1: u64) {
    browser
        .wait_for(
            &format!("lag {total} (partition 0: {p0}, partition 1: {p1})"),
            WAIT,
            &format!(
                "const lag = tp => document.querySelector(`tr[data-tp='orders/${{tp}}'] [data-col=lag]`)?.textContent;
                 return document.getElementById('group-lag')?.textContent === '{total}'
                     && lag(0) === '{p0}' && lag(1) === '{p1}';"
            ),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lag_falls_as_the_consumer_commits() {
    let server = TestServer::start(|_| {}).await;
    server.create_topic("orders", 2).await;
    for p in 0..2 {
        let events: Vec<Value> = (0..20).map(|i| json!({"order": i, "partition": p})).collect();
        server
            .produce_raw("orders", &format!("?partition={p}"), "application/json", Value::Array(events).to_string())
            .await;
    }
    let mut consumer =
        server.subscribe("orders", "group=billing&member=billing-1&from=earliest&auto_commit=false").await;
    assert_eq!(receive_records(&mut consumer, 40).await.len(), 40);

    let browser = Browser::start("group").await;
    browser.goto(&server.url("/#/groups/billing")).await;
    browser.select("#refresh", "1000").await;
    wait_lag(&browser, 40, 20, 20).await;
    let member = browser.text("#members-table tbody tr td").await;
    assert!(member.starts_with("billing-1"), "the static member is listed: {member}");
    let owned = browser.text("#members-table tbody tr td:last-child").await;
    assert_eq!(owned, "orders/0, orders/1", "the member owns both partitions");
    browser.screenshot("lag-before").await;

    commit(&mut consumer, 0, 20).await;
    wait_lag(&browser, 20, 0, 20).await;
    commit(&mut consumer, 1, 10).await;
    wait_lag(&browser, 10, 0, 10).await;
    commit(&mut consumer, 1, 20).await;
    wait_lag(&browser, 0, 0, 0).await;
    let points = browser.execute("return Number(document.querySelector('.chart').dataset.points)", vec![]).await;
    assert!(points.as_u64().is_some_and(|n| n >= 4), "the lag chart has a point per refresh: {points}");
    browser.screenshot("lag-after").await;

    browser.click("[data-nav=groups]").await;
    browser
        .wait_for(
            "the group listed as stable with no lag",
            WAIT,
            "const row = document.querySelector(`tr[data-group='billing']`);
             return row && row.querySelector('.pill').textContent === 'stable'
                 && row.querySelector('[data-col=lag]').textContent === '0';",
        )
        .await;
    browser.screenshot("groups").await;

    assert_clean(&browser).await;
    browser.quit().await;
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_docs_render_offline_with_the_websocket_protocol_beside_them() {
    let server = TestServer::start(|_| {}).await;
    let browser = Browser::start("docs").await;
    browser.goto(&server.url("/docs")).await;
    let paths = browser
        .wait_for(
            "Swagger UI listing the operations",
            WAIT,
            "const paths = [...document.querySelectorAll('.opblock-summary-path')].map(e => e.getAttribute('data-path'));
             return paths.length >= 15 ? paths : null;",
        )
        .await;
    for path in ["/v1/topics", "/v1/topics/{topic}/events", "/v1/topics/{topic}/subscribe", "/v1/status"] {
        assert!(paths.as_array().unwrap().iter().any(|p| p == path), "{path} missing from Swagger UI: {paths}");
    }
    assert!(browser.current_url().await.ends_with("/docs/"), "/docs redirects to /docs/");
    browser.screenshot("swagger").await;
    assert_clean(&browser).await;

    // Swagger UI opens description links in a new tab; follow the link here instead.
    let link = browser.execute("return document.querySelector(\"a[href='/docs/websocket']\")?.href", vec![]).await;
    let link = link.as_str().unwrap_or_else(|| panic!("no link to the protocol page in Swagger UI: {link}"));
    browser.goto(link).await;
    browser
        .wait_for(
            "the protocol page",
            WAIT,
            "return document.querySelector('h1')?.textContent === 'WebSocket subscription protocol'
                && [...document.querySelectorAll('h2')].some(h => h.textContent === 'Close codes');",
        )
        .await;
    browser.screenshot("websocket").await;
    assert_clean(&browser).await;
    browser.quit().await;
}

/// A token for a node whose `jwt_keys` hold [`DASHBOARD_SECRET`].
fn dashboard_token(permissions: Value) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({"exp": exp, "permissions": permissions});
    let key = jsonwebtoken::EncodingKey::from_secret(DASHBOARD_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign a token")
}

/// HMAC secret of the node in the token test.
const DASHBOARD_SECRET: &str = "dashboard-test-secret-long-enough-for-hs256";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_a_token_when_the_api_answers_401() {
    let server = TestServer::start(|c| {
        c.jwt_keys = json!([{"alg": "HS256", "secret": DASHBOARD_SECRET}]).to_string().parse().expect("keys");
    })
    .await;
    let token = dashboard_token(json!(["admin"]));
    let admin = server.api().with_token(&token);
    admin.create_topic("private", 1).await;
    let browser = Browser::start("token").await;
    browser.goto(&server.url("/")).await;
    browser.wait_for("the token prompt", WAIT, "return document.getElementById('token-dialog').open").await;
    browser.screenshot("prompt").await;

    browser.type_into("#token-input", "wrong").await;
    browser.click("#token-form button[type=submit]").await;
    browser
        .wait_for(
            "the prompt again, saying the token was refused",
            WAIT,
            "return document.getElementById('token-dialog').open && !document.getElementById('token-error').hidden",
        )
        .await;

    browser.type_into("#token-input", &token).await;
    browser.click("#token-form button[type=submit]").await;
    browser
        .wait_for(
            "the topics, read with the token",
            WAIT,
            "return !document.getElementById('token-dialog').open
                && document.querySelector(`tr[data-topic='private']`) !== null",
        )
        .await;
    let stored = browser.execute("return sessionStorage.getItem('tidegate.token')", vec![]).await;
    assert_eq!(stored, json!(token), "the token is kept for this tab");
    assert_eq!(browser.execute("return document.getElementById('signout').hidden", vec![]).await, json!(false));
    browser.screenshot("signed-in").await;

    // The live tail subscribes with the token too (`access_token` on the WebSocket URL).
    browser.goto(&server.url("/#/topics/private/tail")).await;
    browser
        .wait_for("the tail to go live", WAIT, "return document.getElementById('tail-status')?.textContent === 'live'")
        .await;
    admin.produce("private", &json!({"marker": "behind-auth"})).await;
    browser
        .wait_for(
            "a record in the tail of a protected topic",
            WAIT,
            "return document.querySelector('#tail-list').textContent.includes('behind-auth')",
        )
        .await;

    browser.click("#signout").await;
    browser
        .wait_for(
            "the prompt after signing out",
            WAIT,
            "return document.getElementById('token-dialog').open && sessionStorage.getItem('tidegate.token') === null",
        )
        .await;
    // The only errors are the browser's notes on the refused requests.
    let errors = browser.console_errors().await;
    assert!(!errors.is_empty(), "401 answers are logged by the browser");
    assert!(errors.iter().all(|e| e.contains("status of 401")), "only refused requests in the console: {errors:#?}");
    browser.quit().await;
}

/// The SSE stream in the browser's own `EventSource`: records arrive in order with
/// JSON values inline, and each `records` event carries the resume id a reconnecting
/// `EventSource` sends back as `Last-Event-ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_source_in_the_browser_receives_the_stream() {
    let server = TestServer::start(|_| {}).await;
    server.create_topic("es", 1).await;
    server.produce("es", &json!([{"n": 0}, {"n": 1}])).await;
    let browser = Browser::start("event_source").await;
    browser.goto(&server.url("/")).await;
    browser
        .execute(
            "window.got = []; window.ids = [];
             const es = new EventSource('/v1/topics/es/stream?from=earliest');
             es.addEventListener('records', e => {
                 window.ids.push(e.lastEventId);
                 for (const r of JSON.parse(e.data).records) window.got.push(r.value.n);
             });",
            vec![],
        )
        .await;
    browser.wait_for("the stored records", WAIT, "return window.got.length === 2").await;
    server.produce("es", &json!([{"n": 2}])).await;
    browser.wait_for("the record posted while streaming", WAIT, "return window.got.length === 3").await;
    assert_eq!(browser.execute("return window.got", vec![]).await, json!([0, 1, 2]));
    let ids = browser.execute("return window.ids", vec![]).await;
    let last = ids.as_array().and_then(|i| i.last()).and_then(Value::as_str).unwrap_or_default();
    assert!(last.starts_with("es:0:3:"), "the resume id, topic:partition:offset:incarnation: {ids}");
    browser.assert_no_console_errors().await;
    browser.quit().await;
}

/// A node whose disk is below `min_free_disk_bytes` says so on its node page: the state
/// pill reads "disk low" and the notice gives free space against the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_page_says_when_the_disk_is_low() {
    // A floor no disk reaches (1 PiB, the largest the setting takes): appends are
    // refused from the start.
    let server = TestServer::start(|c| c.min_free_disk_bytes = 1 << 50).await;
    let browser = Browser::start("disk-low").await;
    browser.goto(&server.url("/")).await;
    browser.click("[data-nav=node]").await;
    browser
        .wait_for(
            "the disk-low state",
            WAIT,
            "return document.getElementById('node-state')?.textContent === 'disk low'",
        )
        .await;
    let notice =
        browser.execute("return document.querySelector('.notice:not([hidden])')?.textContent ?? ''", vec![]).await;
    let notice = notice.as_str().unwrap_or_default().to_string();
    assert!(notice.contains("below min_free_disk_bytes") && notice.contains("appends are refused"), "{notice}");
    browser.screenshot("node").await;
    assert_clean(&browser).await;
    browser.quit().await;
}
