//! A real browser for the dashboard's tests: Debian's headless Chromium driven
//! through its WebDriver (`/usr/bin/chromedriver`, installed by
//! `scripts/common.sh`'s `ensure_chromium`) with fantoccini.
//!
//! `Browser::start` runs `chromedriver --port=FREE` as a `Proc` in a process
//! group of its own, with Chromium's profile in a fresh folder; dropping the
//! `Browser` kills the group (the driver and every Chromium process it started)
//! and removes the folder. `close` ends the WebDriver session politely first.
//! Every wait is bounded, and a wait that times out panics with the page's URL,
//! its `#error` text, the start of its text and the browser's console.
//!
//! Screenshots go to `<target dir>/screenshots/NAME.png`: test artefacts, kept
//! out of the repository by `target/` being ignored.

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::cookies::Cookie;
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::{bin_dir, free_port, Proc};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The longest one WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(100);

/// A headless Chromium under its own chromedriver, for one test.
pub struct Browser {
    client: Option<Client>,
    // Dropped after `Drop::drop` has killed the process group: reaps the driver
    // (printing its log if the test failed), then removes the profile folder.
    driver: Proc,
    dir: tempfile::TempDir,
    driver_url: String,
    session: String,
}

/// Runs one WebDriver command with a bound on its time; panics naming `what` on error or timeout.
async fn bounded<T>(what: &str, fut: impl Future<Output = Result<T, CmdError>>) -> T {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("browser: {what}: {e}"),
        Err(_) => panic!("browser: {what}: no answer within {COMMAND_TIMEOUT:?}"),
    }
}

/// Whether a command failed because the element it was given went away (the
/// page re-rendered it): worth looking again, not a failure.
fn is_stale(e: &CmdError) -> bool {
    matches!(e, CmdError::Standard(wd) if wd.error == fantoccini::error::ErrorStatus::StaleElementReference)
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session of headless Chromium
    /// (1366x900, no sandbox, no GPU, its profile in a fresh folder).
    pub async fn start() -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).is_file(),
                "{path} is missing: install Debian's chromium and chromium-driver (scripts/test.sh does: ensure_chromium)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"));
        // Its own process group: Drop kills Chromium's processes with the driver.
        cmd.process_group(0);
        // The temporary folders of the driver and of Chromium go with the test's.
        cmd.env("TMPDIR", dir.path());
        let mut driver = Proc::spawn("chromedriver", cmd, dir.path());
        let driver_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = driver.child.try_wait().unwrap() {
                panic!("chromedriver exited ({status}) instead of listening:\n{}", driver.log_text());
            }
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port} within 20 s:\n{}", driver.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let profile = dir.path().join("profile");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1366,900",
                    format!("--user-data-dir={}", profile.display()),
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-sync",
                    "--metrics-recording-only",
                    "--password-store=basic",
                ],
            }),
        );
        // The page's console (JS errors), for the failure messages.
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let connecting = builder.connect(&driver_url);
        let client = match tokio::time::timeout(Duration::from_secs(60), connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("starting headless Chromium through chromedriver: {e}\n{}", driver.log_text()),
            Err(_) => panic!("headless Chromium did not start within 60 s\n{}", driver.log_text()),
        };
        let session = bounded("session id", client.session_id()).await.unwrap_or_default();
        bounded(
            "setting timeouts",
            client.update_timeouts(TimeoutConfiguration::new(
                Some(Duration::from_secs(10)),
                Some(COMMAND_TIMEOUT - Duration::from_secs(5)),
                Some(Duration::ZERO),
            )),
        )
        .await;
        Browser { client: Some(client), driver, dir, driver_url, session }
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) {
        bounded(&format!("opening {url}"), self.client().goto(url)).await;
    }

    /// The address the page is at now.
    pub async fn url(&self) -> String {
        bounded("reading the URL", self.client().current_url()).await.to_string()
    }

    /// The path (and query) of the page now: `/jobs`, `/login?next=...`.
    pub async fn path(&self) -> String {
        let url = bounded("reading the URL", self.client().current_url()).await;
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    async fn find_all(&self, css: &str) -> Vec<Element> {
        bounded(&format!("finding {css}"), self.client().find_all(Locator::Css(css))).await
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        self.find_all(css).await.len()
    }

    /// Whether some element matches `css` now.
    pub async fn exists(&self, css: &str) -> bool {
        self.count(css).await > 0
    }

    /// Runs `f` on the first element matching `css`, looking again if the page
    /// re-rendered it in between; panics if none matches.
    async fn with_first<T, F, Fut>(&self, css: &str, what: &str, f: F) -> T
    where
        F: Fn(Element) -> Fut,
        Fut: Future<Output = Result<T, CmdError>>,
    {
        for _ in 0..20 {
            let Some(el) = self.find_all(css).await.into_iter().next() else {
                panic!("browser: no element matches {css} (for {what}){}", self.describe().await);
            };
            match tokio::time::timeout(COMMAND_TIMEOUT, f(el)).await {
                Ok(Ok(value)) => return value,
                Ok(Err(e)) if is_stale(&e) => tokio::time::sleep(POLL).await,
                Ok(Err(e)) => panic!("browser: {what} of {css}: {e}{}", self.describe().await),
                Err(_) => panic!("browser: {what} of {css}: no answer within {COMMAND_TIMEOUT:?}"),
            }
        }
        panic!("browser: {css} was re-rendered under every {what} for 2 s{}", self.describe().await)
    }

    /// The text of the first element matching `css` (its `textContent`, trimmed:
    /// the data, whatever CSS does to how it looks); panics if none matches.
    pub async fn text(&self, css: &str) -> String {
        match self.texts(css).await.into_iter().next() {
            Some(text) => text,
            None => panic!("browser: no element matches {css} (for its text){}", self.describe().await),
        }
    }

    /// The text WebDriver sees of the first element matching `css`: as rendered
    /// (hidden parts left out, CSS text-transform applied).
    pub async fn visible_text(&self, css: &str) -> String {
        self.with_first(css, "visible text", |el| async move { el.text().await }).await
    }

    /// The texts of every element matching `css`, in document order.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let script = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent.trim());";
        let value = self.execute(script, vec![json!(css)]).await;
        value.as_array().map(|a| a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default()
    }

    /// Attribute `name` of the first element matching `css` (None if it has none).
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.with_first(css, &format!("attribute {name}"), |el| async move { el.attr(name).await }).await
    }

    /// Attribute `name` of every element matching `css`, in document order.
    pub async fn attrs(&self, css: &str, name: &str) -> Vec<Option<String>> {
        let script = "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.getAttribute(arguments[1]));";
        let value = self.execute(script, vec![json!(css), json!(name)]).await;
        value.as_array().map(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        self.with_first(css, "click", |el| async move { el.click().await }).await
    }

    /// Replaces the text of the input matching `css` with `text`, typed.
    pub async fn fill(&self, css: &str, text: &str) {
        self.with_first(css, "fill", |el| async move {
            el.clear().await?;
            el.send_keys(text).await
        })
        .await
    }

    /// Chooses the option whose value is `value` in the select matching `css`.
    pub async fn select(&self, css: &str, value: &str) {
        self.with_first(css, &format!("select {value}"), |el| async move { el.select_by_value(value).await }).await
    }

    /// Sets cookie `name` for the site of the page now open (WebDriver sets
    /// cookies only for the current document's site: `goto` it first).
    pub async fn set_cookie(&self, name: &str, value: &str) {
        let url = bounded("reading the URL", self.client().current_url()).await;
        let host = url.host_str().unwrap_or_else(|| panic!("browser: set_cookie on {url}, which has no host: goto the site first"));
        // chromedriver refuses a cookie without a domain, and SameSite=None without Secure.
        let cookie = Cookie::parse(format!("{name}={value}; Domain={host}; Path=/; SameSite=Lax"))
            .unwrap_or_else(|e| panic!("browser: cookie {name}={value}: {e}"));
        bounded(&format!("setting cookie {name}"), self.client().add_cookie(cookie)).await;
    }

    /// The value of cookie `name` the browser holds for the page's site, if any
    /// (HttpOnly ones included: WebDriver sees them).
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let all = bounded("reading cookies", self.client().get_all_cookies()).await;
        all.into_iter().find(|c| c.name() == name).map(|c| c.value().to_string())
    }

    pub async fn delete_cookies(&self) {
        bounded("deleting cookies", self.client().delete_all_cookies()).await;
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page and returns its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        bounded("running a script", self.client().execute(script, args)).await
    }

    /// `fetch(path)` from the page, with its cookies: `(status, body)`.
    pub async fn fetch(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let script = r#"
            const [method, path, body, done] = arguments;
            const init = { method, credentials: "same-origin", headers: { "x-camp-csrf": "1" } };
            if (body !== null) { init.body = JSON.stringify(body); init.headers["content-type"] = "application/json"; }
            fetch(path, init).then(async r => done([r.status, await r.text()]), e => done([0, String(e)]));
        "#;
        let args = vec![json!(method), json!(path), body.cloned().unwrap_or(Value::Null)];
        let value = bounded(&format!("fetch {method} {path}"), self.client().execute_async(script, args)).await;
        (value[0].as_u64().unwrap_or(0) as u16, value[1].as_str().unwrap_or_default().to_string())
    }

    /// Waits until some element matches `css` and returns the first; panics
    /// with the page's state after `within`.
    pub async fn wait_for(&self, css: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Some(el) = self.find_all(css).await.into_iter().next() {
                return el;
            }
            if Instant::now() >= deadline {
                panic!("browser: waited {within:?} for {css}{}", self.describe().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for `body[data-ready="1"]`: the page's first render of its data.
    pub async fn wait_ready(&self, within: Duration) {
        self.wait_for(r#"body[data-ready="1"]"#, within).await;
    }

    /// Waits until no element matches `css`.
    pub async fn wait_gone(&self, css: &str, within: Duration) {
        self.wait_count(css, within, &format!("no {css}"), |n| n == 0).await;
    }

    /// Waits until the number of elements matching `css` satisfies `ok`; returns it.
    pub async fn wait_count(&self, css: &str, within: Duration, what: &str, ok: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let n = self.count(css).await;
            if ok(n) {
                return n;
            }
            if Instant::now() >= deadline {
                panic!("browser: waited {within:?} for {what} ({css}: {n} now){}", self.describe().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until attribute `name` of the first element matching `css` is `value`.
    pub async fn wait_attr(&self, css: &str, name: &str, value: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.attrs(css, name).await.into_iter().next();
            if now.as_ref().and_then(|v| v.as_deref()) == Some(value) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("browser: waited {within:?} for {css} [{name}={value:?}], last {now:?}{}", self.describe().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the text of the first element matching `css` contains `part`; returns the text.
    pub async fn wait_text(&self, css: &str, part: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let now = self.texts(css).await.into_iter().next();
            if let Some(text) = now.as_ref().filter(|t| t.contains(part)) {
                return text.clone();
            }
            if Instant::now() >= deadline {
                panic!("browser: waited {within:?} for {css} to say {part:?}, last {now:?}{}", self.describe().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the first element matching `css` has some text; returns it.
    pub async fn wait_some_text(&self, css: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(text) = self.texts(css).await.into_iter().next().filter(|t| !t.is_empty()) {
                return text;
            }
            if Instant::now() >= deadline {
                panic!("browser: waited {within:?} for text in {css}{}", self.describe().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the page's path starts with `prefix` (`/jobs`, `/login`).
    pub async fn wait_path(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let path = self.path().await;
            if path.starts_with(prefix) {
                return path;
            }
            if Instant::now() >= deadline {
                panic!("browser: waited {within:?} to be on {prefix}{}", self.describe().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Saves the page as `<target dir>/screenshots/NAME.png` and prints where; returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = bounded(&format!("screenshot {name}"), self.client().screenshot()).await;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "browser: screenshot {name} is not a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("screenshot: {}", path.display());
        path
    }

    /// The browser console's messages since the last call (JS errors among them).
    pub fn console(&self) -> Vec<String> {
        if self.session.is_empty() {
            return Vec::new();
        }
        // chromedriver's own command (not in fantoccini): POST /session/ID/se/log {"type":"browser"}.
        let answer = http_post(&self.driver_url, &format!("/session/{}/se/log", self.session), r#"{"type":"browser"}"#);
        let Some(entries) = answer.as_ref().and_then(|v| v["value"].as_array()) else {
            return Vec::new();
        };
        entries.iter().map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or(""))).collect()
    }

    /// What a failure message says of the page: URL, `#error`, the start of its text, the console.
    pub async fn describe(&self) -> String {
        let url = match tokio::time::timeout(Duration::from_secs(5), self.client().current_url()).await {
            Ok(Ok(url)) => url.to_string(),
            _ => "(unknown)".into(),
        };
        let script = r##"
            const e = document.querySelector("#error");
            const body = document.body ? document.body.innerText : "";
            return [e ? e.textContent.trim() : null, body.slice(0, 600), document.body ? (document.body.dataset.ready || null) : null];
        "##;
        let page = match tokio::time::timeout(Duration::from_secs(5), self.client().execute(script, vec![])).await {
            Ok(Ok(v)) => v,
            _ => Value::Null,
        };
        let console = self.console();
        format!(
            "\n  page: {url}\n  #error: {}\n  body[data-ready]: {}\n  text: {:?}\n  console:\n    {}",
            page[0].as_str().map_or("(none)".to_string(), |s| format!("{s:?}")),
            page[2].as_str().unwrap_or("(unset)"),
            page[1].as_str().unwrap_or(""),
            if console.is_empty() { "(empty)".to_string() } else { console.join("\n    ") },
        )
    }

    /// Ends the session (Chromium exits), then the driver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        }
    }

    /// The driver's process id, which is also its process group's (Chromium's processes are in it).
    pub fn driver_pid(&self) -> i32 {
        self.driver.pid()
    }

    /// The folder of this browser's profile and the driver's log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session cannot be awaited here; killing the group ends Chromium
        // with its driver (the Proc then reaps the driver).
        drop(self.client.take());
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.pid())]).status();
    }
}

/// `<target dir>/screenshots`: beside `target/<profile>/`, where the binaries are.
pub fn screenshot_dir() -> PathBuf {
    let bins = bin_dir();
    bins.parent().unwrap_or(&bins).join("screenshots")
}

/// A POST of `body` (JSON) to `base` + `path` over plain HTTP/1.1 on loopback; the JSON answer.
/// (chromedriver answers with a Content-Length and may keep the connection open.)
fn http_post(base: &str, path: &str, body: &str) -> Option<Value> {
    let host = base.strip_prefix("http://")?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok())?;
            if answer.len() >= end + 4 + length {
                return serde_json::from_slice(&answer[end + 4..end + 4 + length]).ok();
            }
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        answer.extend_from_slice(&buf[..n]);
    }
}
