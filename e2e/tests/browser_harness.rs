//! The browser harness itself (`camp_e2e::browser`), against a tiny page served
//! by a thread of this test: headless Chromium starts, reads and types, sends
//! the cookies it is given, saves a screenshot, says where it was when a wait
//! times out, and leaves no process behind.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use camp_e2e::browser::Browser;

const SECOND: Duration = Duration::from_secs(1);

/// The page: a list drawn by its script a moment after load (then
/// `body[data-ready]`), an input and a button that copies it, and an `#error`.
const PAGE: &str = r#"<!doctype html>
<html><head><title>harness</title>
<style>body { font-family: sans-serif; background: #fafafa; } li { color: #036; } h1 { text-transform: uppercase; }</style></head>
<body>
<h1 id="title">camp harness</h1>
<ul id="items"></ul>
<input id="name" value="old"><button id="copy">copy</button>
<p id="copied"></p>
<div id="error">boom: nothing here</div>
<svg width="200" height="60"><circle cx="20" cy="30" r="8"/><circle cx="60" cy="30" r="8"/><polyline points="0,0 10,10"/></svg>
<script>
setTimeout(() => {
  for (const [id, state] of [[1, "queued"], [2, "running"], [3, "succeeded"]]) {
    const li = document.createElement("li");
    li.dataset.jobId = id; li.dataset.state = state; li.textContent = "job " + id + " " + state;
    document.getElementById("items").appendChild(li);
  }
  document.body.dataset.ready = "1";
  console.error("harness: a console message");
}, 300);
document.getElementById("copy").onclick = () => {
  document.getElementById("copied").textContent = document.getElementById("name").value;
};
</script>
</body></html>"#;

/// Serves `PAGE` at `/` and the request's `Cookie` header at `/echo`, until the test ends.
fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    addr
}

fn answer(mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut cookie = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("cookie") {
                cookie = value.trim().to_string();
            }
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, kind, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        "/echo" => ("200 OK", "text/plain", cookie),
        _ => ("404 Not Found", "text/plain", "not found".to_string()),
    };
    let _ =
        write!(stream, "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// The processes whose process group is `pgid` (Chromium's, under its driver).
fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && fields.first() != Some(&"Z") {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn headless_chromium_reads_types_sends_cookies_and_saves_a_screenshot() {
    let site = serve();
    let started = Instant::now();
    let browser = Browser::start().await;
    println!("headless Chromium started in {:.2} s", started.elapsed().as_secs_f64());
    browser.goto(&format!("{site}/")).await;
    browser.wait_ready(5 * SECOND).await;
    assert_eq!(browser.path().await, "/");
    assert_eq!(browser.text("#title").await, "camp harness");
    assert_eq!(browser.visible_text("#title").await, "CAMP HARNESS", "as drawn: text-transform applied");
    assert_eq!(browser.count("#items li").await, 3);
    assert_eq!(browser.count("svg circle").await, 2);
    assert_eq!(browser.attr("li[data-job-id='2']", "data-state").await.as_deref(), Some("running"));
    assert_eq!(browser.attrs("#items li", "data-state").await, [Some("queued".into()), Some("running".into()), Some("succeeded".into())]);
    assert_eq!(browser.texts("#items li").await, ["job 1 queued", "job 2 running", "job 3 succeeded"]);
    assert!(!browser.exists("#nothing").await);

    browser.fill("#name", "alice").await;
    browser.click("#copy").await;
    assert_eq!(browser.wait_text("#copied", "alice", 2 * SECOND).await, "alice");
    assert_eq!(browser.wait_some_text("#error", SECOND).await, "boom: nothing here");

    browser.set_cookie("camp_session", "forged").await;
    assert_eq!(browser.cookie("camp_session").await.as_deref(), Some("forged"));
    let (status, body) = browser.fetch("GET", "/echo", None).await;
    assert_eq!((status, body.as_str()), (200, "camp_session=forged"), "the page's requests carry the cookie set");
    let (status, _) = browser.fetch("GET", "/missing", None).await;
    assert_eq!(status, 404);
    assert!(browser.console().iter().any(|m| m.contains("harness: a console message")), "the console is read");

    let path = browser.screenshot("harness").await;
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().expect("a valid PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert!(info.width >= 1000 && info.height >= 600, "the window's size: {}x{}", info.width, info.height);
    assert!(pixels.iter().any(|&p| p != pixels[0]), "the screenshot is not blank");

    // Dropped (as when a test panics): the driver and every Chromium process go.
    // The driver leads a process group of its own: its pid is the group's id.
    let pgid = browser.driver_pid();
    assert!(processes_in_group(pgid).len() > 1, "Chromium runs in the driver's process group");
    drop(browser);
    let deadline = Instant::now() + 10 * SECOND;
    while !processes_in_group(pgid).is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?}", processes_in_group(pgid));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn a_wait_that_times_out_says_where_the_page_was_and_what_its_error_said() {
    let site = serve();
    let browser = Browser::start().await;
    browser.goto(&format!("{site}/")).await;
    browser.wait_ready(5 * SECOND).await;
    let message = match tokio::spawn(async move {
        browser.wait_for("#never", Duration::from_millis(300)).await;
    })
    .await
    {
        Ok(()) => panic!("waiting for #never succeeded"),
        Err(e) => {
            let payload = e.into_panic();
            payload.downcast_ref::<String>().cloned().unwrap_or_default()
        }
    };
    for part in ["#never", &format!("page: {site}/"), "#error: \"boom: nothing here\"", "job 3 succeeded", "harness: a console message"] {
        assert!(message.contains(part), "the timeout's message names {part:?}:\n{message}");
    }
}
