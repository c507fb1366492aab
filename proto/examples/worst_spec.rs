//! How long the coordinator (and the CLI, and the worker) take to validate the
//! costliest spec the limits allow: 64 bits-override patterns of 256 bytes
//! each, full of `*`, `?`, classes and alternations, matched against every
//! module of the largest network; and the two patterns that froze or killed
//! the coordinator before globs were compiled to automata.
//!
//!     cargo run --release -p camp-proto --example worst_spec

use std::time::{Duration, Instant};

use camp_proto::limits::{MAX_OVERRIDES, MAX_PATTERN_BYTES};
use camp_proto::spec::{BitsOverride, JobSpec, Stage};
use camp_proto::ValidSpec;

fn time(what: &str, runs: usize, mut f: impl FnMut()) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    println!("{what}: median {:?}, max {:?} over {runs} runs", times[runs / 2], times[runs - 1]);
}

fn spec(patterns: Vec<String>) -> JobSpec {
    JobSpec {
        stage: Stage::Sp,
        arch: "preact_resnet110_cifar".into(),
        bits_overrides: patterns.into_iter().map(|pattern| BitsOverride { pattern, wts: Some(4), acts: None }).collect(),
        ..JobSpec::defaults_for(Stage::Sp)
    }
}

fn main() {
    // Every group may match nothing, so the pattern matches (it must: a pattern
    // that matches no module is refused) after trying every split of the path.
    let worst = format!("*{}conv1", "{*,?*,[a-z]*}".repeat((MAX_PATTERN_BYTES - 6) / 13));
    assert!(worst.len() <= MAX_PATTERN_BYTES);
    let full = spec(vec![worst; MAX_OVERRIDES]);
    time("64 worst patterns of 256 bytes, ValidSpec::new (fields, plan, energy report) (preact_resnet110 dual path)", 20, || {
        ValidSpec::new(full.clone()).unwrap();
    });
    let thirty = spec(vec![format!("{}conv1", "*".repeat(30))]);
    time("thirty '*' then 'conv1', ValidSpec::new (fields, plan, energy report)", 20, || {
        ValidSpec::new(thirty.clone()).unwrap();
    });
    let huge = spec(vec!["*".repeat(100_000)]);
    time("100,000 '*' (refused by length)", 20, || {
        assert_eq!(ValidSpec::new(huge.clone()).unwrap_err().field, "bits_overrides");
    });
}
