//! Screenshots of a running dashboard's pages, for the README (`docs/dashboard/`):
//!
//!     cargo run -p camp-e2e --example dashboard_screenshots -- http://127.0.0.1:8080 EXPERIMENT JOB [JOB ...]
//!
//! Each page is opened in headless Chromium, read once it has drawn its data
//! (`body[data-ready]`), and saved as `<target>/screenshots/doc-*.png`. The
//! compare page shows the jobs given after the first.

use std::time::Duration;

use camp_e2e::browser::Browser;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, experiment, job, compared @ ..] = args.as_slice() else {
        eprintln!("usage: dashboard_screenshots URL EXPERIMENT_ID JOB_ID [JOB_ID ...]");
        std::process::exit(2);
    };
    let base = base.trim_end_matches('/');
    let compare = if compared.is_empty() { job.clone() } else { compared.join(",") };
    let b = Browser::start().await;
    for (name, path, settle) in [
        ("jobs", "/jobs".to_string(), 1),
        ("job", format!("/jobs/{job}"), 3),
        ("experiment", format!("/experiments/{experiment}"), 3),
        ("compare", format!("/compare?jobs={compare}&metric=test_top1"), 3),
        ("workers", "/workers".to_string(), 1),
    ] {
        b.goto(&format!("{base}{path}")).await;
        b.wait_ready(Duration::from_secs(30)).await;
        // Figures arrive after the page's first render.
        tokio::time::sleep(Duration::from_secs(settle)).await;
        println!("{}", b.screenshot(&format!("doc-{name}")).await.display());
    }
    b.close().await;
}
