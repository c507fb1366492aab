//! The deploy files (`deploy/k8s/*.yaml`, `deploy/slurm/camp-worker.sbatch`)
//! checked as CI can check them here, with no cluster and no schema checker
//! (none installs from the registries this project reaches): every manifest
//! parses and has what its kind needs; the coordinator's probes are gRPC
//! health on its gRPC port; the worker asks for a GPU and a grace period
//! long enough to hand its job back; the KEDA trigger's query runs against
//! camp's real schema (a coordinator's migrations on a fresh PostgreSQL
//! database) and counts what it says; every flag the files pass to
//! `camp-server` and `camp-worker` is one those binaries take; the sbatch
//! script is valid bash that `exec`s the worker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use camp_e2e::grpc::{self, Headers};
use camp_e2e::{bin, Cluster};
use camp_proto::v1;
use serde::Deserialize;
use serde_yaml::Value;
use sqlx::PgPool;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every `deploy/k8s/*.yaml`, with the file it came from.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/k8s");
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

/// The one manifest of `kind` named `name`.
fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name))
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} named {name}");
    found[0]
}

/// The first container of a Deployment's pod template.
fn container(deployment: &Value) -> &Value {
    let containers = at(deployment, &["spec", "template", "spec", "containers"]).and_then(Value::as_sequence).expect("containers");
    &containers[0]
}

/// A container's args as strings.
fn args(container: &Value) -> Vec<String> {
    at(container, &["args"])
        .and_then(Value::as_sequence)
        .expect("args")
        .iter()
        .map(|a| a.as_str().map(String::from).or_else(|| a.as_i64().map(|n| n.to_string())).expect("a scalar argument"))
        .collect()
}

/// The value after `flag` in `args`.
fn arg_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// The `--long-flags` among `tokens` (without any `=value`).
fn flags(tokens: impl IntoIterator<Item = String>) -> Vec<String> {
    tokens.into_iter().filter(|t| t.starts_with("--")).map(|t| t.split('=').next().unwrap().to_string()).collect()
}

/// Asserts that every flag is one `binary --help` lists.
fn assert_flags_known(binary: &str, used: &[String], source: &str) {
    let help = Command::new(bin(binary)).arg("--help").output().unwrap();
    assert!(help.status.success(), "{binary} --help failed");
    let help = String::from_utf8_lossy(&help.stdout);
    let known: Vec<&str> =
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']').filter(|w| w.starts_with("--")).collect();
    let unknown: Vec<&String> = used.iter().filter(|f| !known.contains(&f.as_str())).collect();
    assert!(unknown.is_empty(), "{source} passes {binary} flags its --help does not list: {unknown:?}\n{help}");
}

#[test]
fn every_manifest_names_its_api_kind_and_name_and_every_deployment_runs_a_container_with_an_image_and_args() {
    let docs = manifests();
    for (file, doc) in &docs {
        for field in [&["apiVersion"][..], &["kind"], &["metadata", "name"]] {
            assert!(str_at(doc, field).is_some_and(|s| !s.is_empty()), "{file}: a document without {field:?}");
        }
        if str_at(doc, &["kind"]) == Some("Deployment") {
            let name = str_at(doc, &["metadata", "name"]).unwrap();
            let selector = at(doc, &["spec", "selector", "matchLabels"]).and_then(Value::as_mapping).expect("matchLabels");
            let labels = at(doc, &["spec", "template", "metadata", "labels"]).and_then(Value::as_mapping).expect("pod labels");
            for (k, v) in selector {
                assert_eq!(labels.get(k), Some(v), "{file}: {name}'s selector does not select its own pods");
            }
            let c = container(doc);
            assert!(str_at(c, &["image"]).is_some_and(|i| i.contains(':')), "{file}: {name}'s container has no tagged image");
            assert!(!args(c).is_empty(), "{file}: {name}'s container has no args");
        }
    }
    let kinds: Vec<&str> = docs.iter().filter_map(|(_, d)| str_at(d, &["kind"])).collect();
    for kind in ["Deployment", "Service", "ScaledObject", "TriggerAuthentication"] {
        assert!(kinds.contains(&kind), "no {kind} among {kinds:?}");
    }
}

#[test]
fn the_coordinator_is_probed_by_grpc_health_on_the_port_its_service_serves_and_scraped_on_its_metrics_port() {
    let docs = manifests();
    let coordinator = find(&docs, "Deployment", "camp-coordinator");
    let c = container(coordinator);
    let args = args(c);
    let grpc_port: i64 = arg_value(&args, "--listen").and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| p.parse().ok()).expect("--listen");
    let metrics_port: i64 =
        arg_value(&args, "--metrics-listen").and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| p.parse().ok()).expect("--metrics-listen");
    assert!(args.iter().any(|a| a == "--require-auth"), "a cluster's coordinator requires tokens");
    let ports: BTreeMap<String, i64> = at(c, &["ports"])
        .and_then(Value::as_sequence)
        .expect("container ports")
        .iter()
        .map(|p| (str_at(p, &["name"]).unwrap().to_string(), at(p, &["containerPort"]).and_then(Value::as_i64).unwrap()))
        .collect();
    assert_eq!((ports.get("grpc"), ports.get("metrics")), (Some(&grpc_port), Some(&metrics_port)));
    for probe in ["livenessProbe", "readinessProbe"] {
        let port = at(c, &[probe, "grpc", "port"]).and_then(Value::as_i64);
        assert_eq!(port, Some(grpc_port), "{probe} must be a grpc probe on the gRPC port");
    }
    let annotations = at(coordinator, &["spec", "template", "metadata", "annotations"]).expect("pod annotations");
    assert_eq!(str_at(annotations, &["prometheus.io/scrape"]), Some("true"));
    assert_eq!(str_at(annotations, &["prometheus.io/port"]), Some(metrics_port.to_string().as_str()));
    assert_eq!(str_at(annotations, &["prometheus.io/path"]), Some("/metrics"));
    assert!(
        at(c, &["env"])
            .and_then(Value::as_sequence)
            .unwrap()
            .iter()
            .any(|e| str_at(e, &["name"]) == Some("DATABASE_URL") && str_at(e, &["valueFrom", "secretKeyRef", "key"]).is_some()),
        "the database URL comes from a Secret"
    );

    let service = find(&docs, "Service", "camp-coordinator");
    let selector = at(service, &["spec", "selector"]).and_then(Value::as_mapping).unwrap();
    let pod_labels = at(coordinator, &["spec", "template", "metadata", "labels"]).and_then(Value::as_mapping).unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the Service selects the coordinator's pods");
    let service_ports = at(service, &["spec", "ports"]).and_then(Value::as_sequence).unwrap();
    let grpc = service_ports.iter().find(|p| str_at(p, &["name"]) == Some("grpc")).expect("a grpc port on the Service");
    assert_eq!(str_at(grpc, &["targetPort"]), Some("grpc"));

    // The workers reach it by the Service's name and port.
    let worker_args = self::args(container(find(&docs, "Deployment", "camp-worker")));
    let service_port = at(grpc, &["port"]).and_then(Value::as_i64).unwrap();
    assert_eq!(arg_value(&worker_args, "--coordinator"), Some(format!("http://camp-coordinator:{service_port}").as_str()));
}

#[test]
fn a_worker_pod_asks_for_one_gpu_reads_its_token_from_a_secret_and_has_time_to_hand_its_job_back() {
    let docs = manifests();
    let worker = find(&docs, "Deployment", "camp-worker");
    let c = container(worker);
    assert_eq!(at(c, &["resources", "limits", "nvidia.com/gpu"]).and_then(Value::as_i64), Some(1));
    assert_eq!(arg_value(&args(c), "--device"), Some("cuda"));
    let grace = at(worker, &["spec", "template", "spec", "terminationGracePeriodSeconds"]).and_then(Value::as_i64).expect("a grace period");
    assert!(grace >= 300, "a step plus a checkpoint upload needs minutes, not {grace} s");
    let env = at(c, &["env"]).and_then(Value::as_sequence).expect("env");
    let token = env.iter().find(|e| str_at(e, &["name"]) == Some("CAMP_TOKEN")).expect("CAMP_TOKEN");
    assert!(str_at(token, &["valueFrom", "secretKeyRef", "name"]).is_some(), "the token comes from a Secret");
    assert!(str_at(token, &["value"]).is_none(), "never a token in the manifest");
}

#[test]
fn every_flag_the_deploy_files_pass_is_one_the_binaries_take() {
    let docs = manifests();
    let server = flags(args(container(find(&docs, "Deployment", "camp-coordinator"))));
    assert_flags_known("camp-server", &server, "deploy/k8s/coordinator.yaml");
    let worker = flags(args(container(find(&docs, "Deployment", "camp-worker"))));
    assert_flags_known("camp-worker", &worker, "deploy/k8s/worker.yaml");
    let sbatch = flags(sbatch_exec_command().split_whitespace().map(String::from));
    assert!(sbatch.len() >= 5, "the sbatch script's exec line: {sbatch:?}");
    assert_flags_known("camp-worker", &sbatch, "deploy/slurm/camp-worker.sbatch");
}

fn sbatch_path() -> PathBuf {
    deploy_dir().join("slurm/camp-worker.sbatch")
}

/// The script's `exec` command, its continuation lines joined.
fn sbatch_exec_command() -> String {
    let text = std::fs::read_to_string(sbatch_path()).unwrap();
    let mut lines = text.lines().skip_while(|l| !l.trim_start().starts_with("exec "));
    let mut command = String::new();
    for line in lines.by_ref() {
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(part) => command.push_str(part),
            None => {
                command.push_str(line);
                break;
            }
        }
        command.push(' ');
    }
    assert!(!command.is_empty(), "the sbatch script has no exec line");
    command
}

#[test]
fn the_sbatch_script_is_valid_bash_and_execs_one_worker_per_gpu_of_a_job_array() {
    let check = Command::new("bash").arg("-n").arg(sbatch_path()).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    let text = std::fs::read_to_string(sbatch_path()).unwrap();
    let directives: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("#SBATCH ")).map(str::trim).collect();
    for want in ["--gres=gpu:1", "--signal=B:USR1@180"] {
        assert!(directives.contains(&want), "#SBATCH {want} missing: {directives:?}");
    }
    assert!(directives.iter().any(|d| d.starts_with("--array=")), "a job array: {directives:?}");
    let exec = sbatch_exec_command();
    assert!(exec.starts_with("exec \"$CAMP_WORKER_BIN\""), "the shell becomes the worker, so SIGUSR1 reaches it: {exec}");
    for want in ["--exit-when-idle 600", "--max-jobs", "--device cuda", "--label \"slurm_job="] {
        assert!(exec.contains(want), "{want} missing from: {exec}");
    }
    assert!(exec.matches("--label").count() >= 3 && exec.contains("SLURM_"), "labels from Slurm's environment: {exec}");
}

#[sqlx::test(migrations = false)]
async fn the_keda_query_counts_the_queued_and_running_cuda_jobs_on_camps_schema(pool: PgPool) {
    let docs = manifests();
    let scaled = find(&docs, "ScaledObject", "camp-worker");
    assert_eq!(str_at(scaled, &["apiVersion"]), Some("keda.sh/v1alpha1"));
    assert_eq!(str_at(scaled, &["spec", "scaleTargetRef", "name"]), Some("camp-worker"));
    find(&docs, "Deployment", "camp-worker");
    let triggers = at(scaled, &["spec", "triggers"]).and_then(Value::as_sequence).expect("triggers");
    let trigger = triggers.iter().find(|t| str_at(t, &["type"]) == Some("postgresql")).expect("a postgresql trigger");
    let auth = str_at(trigger, &["authenticationRef", "name"]).expect("the trigger's authenticationRef");
    let auth = find(&docs, "TriggerAuthentication", auth);
    let secret_params: Vec<&str> = at(auth, &["spec", "secretTargetRef"])
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .filter_map(|r| str_at(r, &["parameter"]))
        .collect();
    assert!(secret_params.contains(&"connection"), "the connection string comes from a Secret: {secret_params:?}");
    assert_eq!(str_at(trigger, &["metadata", "targetQueryValue"]), Some("1"), "one worker per job");
    let query = str_at(trigger, &["metadata", "query"]).expect("the trigger's query").to_string();

    // camp's schema, as a coordinator makes it, with jobs it stored.
    let c = Cluster::start(&pool, 30.0);
    let count = || async { sqlx::query_scalar::<_, i64>(&query).fetch_one(&pool).await.expect("the KEDA query runs on camp's schema") };
    assert_eq!(count().await, 0);
    let cuda = ["--device", "cuda", "-a", "preact_resnet20_cifar", "--dataset", "cifar10"];
    let first = c.submit(&cuda);
    c.submit(&cuda);
    let cancelled = c.submit(&cuda);
    c.submit(&["--device", "any", "-a", "preact_resnet20_cifar", "--dataset", "cifar10"]);
    c.submit(&["--device", "cpu", "-a", "preact_resnet20_cifar", "--dataset", "cifar10"]);
    assert!(c.camp(&["cancel", &cancelled.to_string()]).status.success());
    assert_eq!(count().await, 3, "two queued cuda jobs and one for any device; not the cpu job nor the cancelled one");

    // A GPU worker takes the first: running, it still needs its worker.
    let channel = grpc::channel(&c.addr).await;
    let reply = grpc::workers(channel.clone(), Headers::default())
        .register(v1::RegisterRequest {
            name: "gpu-0".into(),
            hostname: "test".into(),
            device_kind: "cuda".into(),
            datasets: vec!["cifar10".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut worker = grpc::workers(channel, Headers::default().with("x-camp-session", &reply.session));
    let claimed = worker.claim(v1::ClaimRequest { worker_id: String::new(), wait_ms: 1_000 }).await.unwrap().into_inner();
    let assignment = claimed.assignment.expect("the gpu worker gets a job");
    assert_eq!(assignment.job_id, first);
    assert_eq!(count().await, 3, "a running cuda job keeps its worker");
    worker
        .finish(v1::FinishRequest {
            job_id: assignment.job_id,
            attempt: assignment.attempt,
            outcome: v1::Outcome::Succeeded as i32,
            message: String::new(),
            result: Some(v1::JobResult { best_top1: 0.5, energy_table: "t".into(), ..Default::default() }),
        })
        .await
        .unwrap();
    assert_eq!(count().await, 2, "a finished job needs no worker");
}
