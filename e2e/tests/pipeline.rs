//! The method end to end: `camp pipeline camp` runs baseline, 4- and 1-bit QAT,
//! the supervised gates and one REINFORCE job per alpha through real processes,
//! the coordinator handing each child its parent's checkpoint; then the results
//! table and the accuracy-energy plot.

use std::time::Duration;

use camp_e2e::Cluster;
use serde_json::Value;
use sqlx::PgPool;

fn jobs(c: &Cluster, exp: i64) -> Vec<Value> {
    c.camp_json(&["pipeline", "show", &exp.to_string()])["jobs"].as_array().unwrap().clone()
}

fn wait_all_done(c: &Cluster, exp: i64, within: Duration) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let js = jobs(c, exp);
        if js.iter().all(|j| ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap())) {
            return js;
        }
        assert!(std::time::Instant::now() < deadline, "experiment {exp} still running: {js:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn by_node<'a>(js: &'a [Value], key: &str) -> &'a Value {
    js.iter().find(|j| j["node"] == key).unwrap_or_else(|| panic!("no node {key}"))
}

const TINY: &[&str] = &[
    "--arch",
    "preact_resnet20_cifar",
    "--dataset",
    "cifar10",
    "--epochs",
    "1",
    "-b",
    "64",
    "--train-limit",
    "128",
    "--test-limit",
    "64",
    "--device",
    "cpu",
    "--print-freq",
    "1",
];

#[sqlx::test(migrations = false)]
async fn the_camp_pipeline_runs_end_to_end_and_plots(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 128, 64, 1).unwrap();
    let _w1 = c.worker("w1");
    let _w2 = c.worker("w2");
    let mut args = vec!["pipeline", "camp", "--alphas", "0.1,0.5", "--name", "tiny-camp"];
    args.extend_from_slice(TINY);
    let exp = c.camp_json(&args)["id"].as_i64().unwrap();

    let js = wait_all_done(&c, exp, Duration::from_secs(600));
    for j in &js {
        assert_eq!(j["state"], "succeeded", "{} ended {}: {}", j["node"], j["state"], j["message"]);
    }
    let nodes: Vec<&str> = js.iter().map(|j| j["node"].as_str().unwrap()).collect();
    for key in ["baseline", "qat4", "qat1", "sp", "rl-0.1", "rl-0.5"] {
        assert!(nodes.contains(&key), "{key} missing from {nodes:?}");
    }
    // The hand-offs were made by the system: each child names its parent's job.
    let id = |key: &str| by_node(&js, key)["id"].as_i64().unwrap();
    assert_eq!(by_node(&js, "sp")["spec"]["init_from"].as_i64(), Some(id("qat4")));
    assert_eq!(by_node(&js, "rl-0.5")["spec"]["init_from"].as_i64(), Some(id("sp")));

    let rows = c.camp_json(&["results", &exp.to_string()]);
    let rows = rows.as_array().unwrap();
    let row = |key: &str| rows.iter().find(|r| r["node"] == key).unwrap();
    let energy = |key: &str| row(key)["normalized_energy"].as_f64().unwrap();
    assert!((energy("qat4") - 1.0).abs() < 1e-9);
    assert!((energy("qat1") - 0.106).abs() < 1e-3);
    assert!((energy("baseline") - 70.77).abs() < 0.01);
    for key in ["sp", "rl-0.1", "rl-0.5"] {
        let share = row(key)["fullbit_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share), "{key}: {share}");
        assert!(energy(key) > energy("qat1"), "{key}: the gates and the 1-bit path always run");
    }

    let svg = c.dir.path().join("curve.svg");
    let png = c.dir.path().join("curve.png");
    for path in [&svg, &png] {
        let out = c.camp(&["plot", &exp.to_string(), "-o", path.to_str().unwrap()]);
        assert!(out.status.success(), "plot {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let labels: String = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(labels.contains("0.1") && labels.contains("0.5"), "alpha labels in the SVG: {labels}");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().expect("a valid PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert!(info.width >= 400 && info.height >= 300);
    assert!(pixels.iter().any(|&p| p != pixels[0]), "the PNG is not blank");
}

#[sqlx::test(migrations = false)]
async fn a_failed_parent_cancels_its_descendants_in_pipeline_show(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 128, 64, 1).unwrap();
    // A damaged test file: every job on this worker fails while loading its data.
    let test_file = c.data_dir().join("cifar10").join("test_batch.bin");
    let bytes = std::fs::read(&test_file).unwrap();
    std::fs::write(&test_file, &bytes[..bytes.len() - 100]).unwrap();
    let _w = c.worker("w1");
    let mut args = vec!["pipeline", "camp", "--alphas", "0.1", "--name", "doomed"];
    args.extend_from_slice(TINY);
    let exp = c.camp_json(&args)["id"].as_i64().unwrap();
    let js = wait_all_done(&c, exp, Duration::from_secs(120));
    let qat4 = by_node(&js, "qat4");
    assert_eq!(qat4["state"], "failed", "{qat4}");
    for key in ["sp", "rl-0.1"] {
        let j = by_node(&js, key);
        assert_eq!(j["state"], "cancelled", "{key}: {j}");
        assert!(j["message"].as_str().unwrap().contains(&format!("parent job {} failed", qat4["id"])), "{key}: {}", j["message"]);
    }
    let shown = c.camp(&["pipeline", "show", &exp.to_string()]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("cancelled") && text.contains(&format!("parent job {} failed", qat4["id"])),
        "pipeline show gives the reason:\n{text}"
    );
}
