//! Quantisation-aware training through the whole system, driven by a schedule
//! file in the reference's (distiller's) format.

use std::time::Duration;

use camp_e2e::Cluster;
use sqlx::PgPool;

/// A schedule with the keys of the reference's configs/preact_resnet20_cifar_pact_fp4.yaml.
const FP4_SCHEDULE: &str = include_str!("../../testdata/distiller/preact_resnet20_cifar_pact_fp4.yaml");

const SMALL: &[&str] = &[
    "-a",
    "preact_resnet20_cifar",
    "--dataset",
    "cifar10",
    "--epochs",
    "2",
    "-b",
    "64",
    "--lr",
    "0.05",
    "-p",
    "2",
    "--seed",
    "3",
    "--device",
    "cpu",
    "--train-limit",
    "256",
    "--test-limit",
    "128",
];

#[sqlx::test(migrations = false)]
async fn a_reference_schedule_drives_a_qat_job_end_to_end(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    let schedule = c.dir.path().join("preact_resnet20_cifar_pact_fp4.yaml");
    std::fs::write(&schedule, FP4_SCHEDULE).unwrap();
    let _worker = c.worker("w1");

    let mut args = vec!["submit", "qat", "--compress", schedule.to_str().unwrap()];
    args.extend_from_slice(SMALL);
    let job = c.camp_json(&args);
    let id = job["id"].as_i64().unwrap();
    assert_eq!((job["spec"]["bits_weights"].as_u64(), job["spec"]["bits_overrides"].as_array().map(Vec::len)), (Some(4), Some(4)));

    let done = c.wait_state(id, "succeeded", Duration::from_secs(120));
    let result = &done["result"];
    assert!((result["normalized_energy"].as_f64().unwrap() - 1.0).abs() < 1e-9, "4-bit QAT is the energy unit: {result}");
    assert_eq!(result["energy_table"], "horowitz-45nm");
    let metrics = c.camp_json(&["metrics", &id.to_string(), "--name", "normalized_energy"]);
    assert_eq!(metrics.as_array().unwrap().len(), 2, "one energy figure per evaluated epoch");

    let path = c.dir.path().join("qat.safetensors");
    let out = c.camp(&["checkpoint", "download", &id.to_string(), "--latest", "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    camp_worker::checkpoint::verify(&std::fs::read(&path).unwrap()).expect("the qat checkpoint rebuilds its quantised network");

    // A 1-bit job starting from the 4-bit one's checkpoint, handed over by the coordinator.
    let mut one_bit = vec!["submit", "qat", "--bits", "1", "--init-from"];
    let id_text = id.to_string();
    one_bit.push(&id_text);
    one_bit.extend_from_slice(SMALL);
    let child = c.camp_json(&one_bit)["id"].as_i64().unwrap();
    let done = c.wait_state(child, "succeeded", Duration::from_secs(120));
    assert!((done["result"]["normalized_energy"].as_f64().unwrap() - 0.006875 / 0.065).abs() < 1e-9, "{}", done["result"]);

    // A schedule camp cannot honour is refused before anything is stored.
    std::fs::write(&schedule, FP4_SCHEDULE.replace("DorefaQuantizer", "WRPNQuantizer")).unwrap();
    let out = c.camp(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("quantizers.pact_quantizer.class"), "{}", String::from_utf8_lossy(&out.stderr));
}
