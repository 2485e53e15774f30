//! Headless Chromium for browser tests, driven over WebDriver by `chromedriver`.
//!
//! [`Browser::start`] spawns `chromedriver` on a free port and opens a headless
//! Chromium session; tests navigate, run JavaScript, click, wait on conditions in the
//! page, take screenshots into [`artifacts_dir`], and read the browser's console
//! errors. Outside hosts do not resolve in the browser (`--host-resolver-rules`), so a
//! page that tries to load anything from the Internet (a CDN) fails visibly.
//!
//! WebDriver (W3C) is JSON over HTTP; the few commands tests need are sent with
//! reqwest, so no WebDriver crate is needed. Chromium and chromedriver come from
//! Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them); when
//! either is missing, [`Browser::start`] fails the test with the command to install it.
//! `CHROME_BIN` and `CHROMEDRIVER` name other binaries.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// W3C WebDriver's key for element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest a single WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts to start chromedriver when its probed port was taken meanwhile.
const DRIVER_ATTEMPTS: u32 = 5;

/// Where browser tests save screenshots: `$TIDEGATE_ARTIFACTS_DIR`, else
/// `tests/artifacts/` in the source tree (ignored by git). Created on first use.
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("TIDEGATE_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// The first of `names` found on `PATH`, unless the variable `var` names a binary.
fn find_binary(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

/// How a browser is opened.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// Viewport width in CSS pixels.
    pub width: u32,
    /// Viewport height in CSS pixels.
    pub height: u32,
    /// Emulate a phone (touch, device pixel ratio 2) at this viewport size; a desktop
    /// window cannot be narrower than about 500 px.
    pub mobile: bool,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions { width: 1280, height: 860, mobile: false }
    }
}

impl BrowserOptions {
    /// A phone-sized viewport (390 × 844, like a current iPhone).
    pub fn phone() -> BrowserOptions {
        BrowserOptions { width: 390, height: 844, mobile: true }
    }
}

/// A headless Chromium session. Quit it with [`Browser::quit`]; if a test panics
/// first, dropping it ends the session and stops chromedriver and Chromium.
pub struct Browser {
    name: String,
    http: reqwest::Client,
    driver_port: u16,
    driver: Option<tokio::process::Child>,
    session: Option<String>,
    /// Severe console entries read so far (reading the browser log drains it).
    errors: Mutex<Vec<String>>,
    screenshots: Mutex<u32>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("name", &self.name).field("session", &self.session).finish()
    }
}

impl Browser {
    /// Opens a desktop-sized headless browser; `name` prefixes its screenshots.
    pub async fn start(name: &str) -> Browser {
        Self::start_with(name, BrowserOptions::default()).await
    }

    /// Opens a headless browser with `options`.
    pub async fn start_with(name: &str, options: BrowserOptions) -> Browser {
        let install = "install them with `apt-get install chromium chromium-driver` (.ci/run does)";
        let chrome =
            find_binary("CHROME_BIN", &["chromium", "chromium-browser", "google-chrome"]).unwrap_or_else(|| {
                panic!("browser tests need Chromium, which is not on PATH: {install}, or set CHROME_BIN")
            });
        let driver_bin = find_binary("CHROMEDRIVER", &["chromedriver"]).unwrap_or_else(|| {
            panic!("browser tests need chromedriver, which is not on PATH: {install}, or set CHROMEDRIVER")
        });
        let http = tidegate::tls::client_builder().no_proxy().timeout(COMMAND_TIMEOUT).build().expect("HTTP client");
        let mut browser = Browser {
            name: name.to_string(),
            http,
            driver_port: 0,
            driver: None,
            session: None,
            errors: Mutex::new(Vec::new()),
            screenshots: Mutex::new(0),
        };
        browser.spawn_driver(&driver_bin).await;
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-extensions".to_string(),
            "--no-first-run".to_string(),
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_string(),
            format!("--window-size={},{}", options.width, options.height),
        ];
        if options.mobile {
            args.push("--touch-events".to_string());
        }
        let mut chrome_options = json!({"binary": chrome.to_string_lossy(), "args": args});
        if options.mobile {
            chrome_options["mobileEmulation"] = json!({"deviceMetrics": {"width": options.width, "height": options.height, "pixelRatio": 2.0, "touch": true}});
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": chrome_options,
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"script": 30_000, "pageLoad": 60_000, "implicit": 0},
        }}});
        let created = browser.command(reqwest::Method::POST, "/session", Some(caps)).await;
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver gave no session id: {created}"))
            .to_string();
        browser.session = Some(session);
        browser
    }

    async fn spawn_driver(&mut self, bin: &Path) {
        for attempt in 1..=DRIVER_ATTEMPTS {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .expect("probe a free port")
                .port();
            let mut child = tokio::process::Command::new(bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            self.driver_port = port;
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(attempt < DRIVER_ATTEMPTS, "chromedriver exited during start-up with {status}");
                    break;
                }
                let ready = self
                    .http
                    .get(format!("http://127.0.0.1:{port}/status"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.json::<Value>());
                if let Some(body) = ready
                    && body.await.is_ok_and(|b| b["value"]["ready"] == true)
                {
                    self.driver = Some(child);
                    return;
                }
                assert!(Instant::now() < until, "chromedriver was not ready within 20 s on port {port}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn session_path(&self, tail: &str) -> String {
        format!("/session/{}{tail}", self.session.as_deref().expect("the session is open"))
    }

    /// Sends one WebDriver command and returns its `value`; panics on a WebDriver error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.driver_port);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            req = req.json(&body);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_else(|e| panic!("WebDriver {method} {path}: bad JSON: {e}"));
        if !status.is_success() {
            let v = &body["value"];
            panic!("WebDriver {method} {path} failed ({status}): {} — {}", v["error"], v["message"]);
        }
        body["value"].clone()
    }

    /// Loads `url` and waits for the page's load event.
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, &self.session_path("/url"), Some(json!({"url": url}))).await;
    }

    /// The page's current URL.
    pub async fn current_url(&self) -> String {
        self.command(reqwest::Method::GET, &self.session_path("/url"), None).await.as_str().unwrap_or("").to_string()
    }

    /// Runs `script` (a function body: use `return`, and `arguments[i]` for `args`)
    /// in the page and returns its result.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.command(
            reqwest::Method::POST,
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Runs `script` until it returns a truthy value (not null, false, 0 or ""), and
    /// returns that value. After `deadline` it saves a screenshot and panics naming
    /// `what`, with the console errors so far.
    pub async fn wait_for(&self, what: &str, deadline: Duration, script: &str) -> Value {
        let until = Instant::now() + deadline;
        let mut pause = Duration::from_millis(20);
        loop {
            let value = self.execute(script, vec![]).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= until {
                let shot = self.screenshot("timeout").await;
                let errors = self.console_errors().await;
                panic!(
                    "timed out after {deadline:?} waiting for {what} (last value {value}); screenshot {}; console errors: {errors:?}",
                    shot.display()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The element matching the CSS `selector`; panics when there is none.
    async fn find(&self, selector: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                &self.session_path("/element"),
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await;
        found[ELEMENT_KEY].as_str().unwrap_or_else(|| panic!("no element id for {selector}: {found}")).to_string()
    }

    /// Clicks the element matching `selector` (as a user would: it must be visible).
    pub async fn click(&self, selector: &str) {
        let id = self.find(selector).await;
        self.command(reqwest::Method::POST, &self.session_path(&format!("/element/{id}/click")), None).await;
    }

    /// Types `text` into the element matching `selector`.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let id = self.find(selector).await;
        self.command(
            reqwest::Method::POST,
            &self.session_path(&format!("/element/{id}/value")),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Picks `value` in the `<select>` matching `selector` (and fires `change`).
    pub async fn select(&self, selector: &str, value: &str) {
        let found = self
            .execute(
                "const s = document.querySelector(arguments[0]);
                 if (!s || ![...s.options].some(o => o.value === arguments[1])) return false;
                 s.value = arguments[1]; s.dispatchEvent(new Event('change', {bubbles: true})); return true;",
                vec![json!(selector), json!(value)],
            )
            .await;
        assert_eq!(found, json!(true), "no option {value:?} in {selector}");
    }

    /// The rendered text (`innerText`, trimmed) of the element matching `selector`.
    /// Found and read in one script turn: a page that re-renders between a WebDriver
    /// "find element" and "get text" would otherwise answer "stale element reference".
    pub async fn text(&self, selector: &str) -> String {
        let text = self
            .execute(
                "const e = document.querySelector(arguments[0]); return e === null ? null : e.innerText;",
                vec![json!(selector)],
            )
            .await;
        text.as_str().unwrap_or_else(|| panic!("no element matches {selector}")).trim().to_string()
    }

    /// Emulates the system colour scheme (`"light"` or `"dark"`) for `prefers-color-scheme`.
    pub async fn color_scheme(&self, scheme: &str) {
        let params = json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]});
        self.command(
            reqwest::Method::POST,
            &self.session_path("/goog/cdp/execute"),
            Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": params})),
        )
        .await;
    }

    /// Saves a PNG of the viewport as `<artifacts>/<browser name>-<name>.png` and
    /// returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.command(reqwest::Method::GET, &self.session_path("/screenshot"), None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("screenshot is base64 text"))
            .expect("screenshot is valid base64");
        let path = artifacts_dir().join(format!("{}-{name}.png", self.name));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        *self.screenshots.lock().expect("screenshot counter") += 1;
        path
    }

    /// Severe console entries (uncaught exceptions, `console.error`, failed loads)
    /// since the session began.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries =
            self.command(reqwest::Method::POST, &self.session_path("/se/log"), Some(json!({"type": "browser"}))).await;
        let mut errors = self.errors.lock().expect("console error list");
        for e in entries.as_array().into_iter().flatten() {
            if e["level"] == "SEVERE" {
                errors.push(e["message"].as_str().unwrap_or("").to_string());
            }
        }
        errors.clone()
    }

    /// Panics listing the console errors, if there are any.
    pub async fn assert_no_console_errors(&self) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "{}: the browser console has errors: {errors:#?}", self.name);
    }

    /// URLs the page loaded (scripts, styles, images, fetches) from anywhere other
    /// than its own origin.
    pub async fn offsite_resources(&self) -> Vec<String> {
        let urls = self
            .execute(
                "return performance.getEntriesByType('resource').map(e => e.name)
                   .filter(u => !u.startsWith(location.origin + '/') && !u.startsWith('data:')
                             && !u.startsWith(location.origin.replace(/^http/, 'ws') + '/'));",
                vec![],
            )
            .await;
        urls.as_array().into_iter().flatten().filter_map(|u| u.as_str().map(str::to_string)).collect()
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn quit(mut self) {
        if self.session.is_some() {
            let path = self.session_path("");
            self.command(reqwest::Method::DELETE, &path, None).await;
            self.session = None;
        }
        if let Some(mut driver) = self.driver.take() {
            let _ = driver.kill().await;
        }
    }
}

impl Drop for Browser {
    /// After a panic: end the session with a blocking request (Chromium would outlive
    /// a killed chromedriver otherwise), then kill chromedriver.
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let request = format!(
                "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                port = self.driver_port
            );
            if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", self.driver_port)) {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = tcp.write_all(request.as_bytes());
                let _ = tcp.read_to_end(&mut Vec::new());
            }
        }
        if let Some(driver) = self.driver.as_mut() {
            let _ = driver.start_kill();
        }
    }
}
