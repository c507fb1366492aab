//! `camp pipeline`: experiments as DAGs of jobs. `camp` builds the method's
//! pipeline from flags, `submit` any DAG from YAML; `show`, `list` and `cancel`
//! work with what the coordinator has.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use camp_proto::pipeline::{topological_order, Node};
use camp_proto::spec::Stage;
use camp_proto::v1::{self, CancelExperimentRequest, GetExperimentRequest, SubmitPipelineRequest};
use camp_proto::JobSpec;
use serde::Deserialize;
use serde_json::Value;

use crate::args::{apply_compress_file, check_spec, read_input_file, GlobalOpts, PipelineCampArgs, RequestIdArg};
use crate::client;
use crate::exit::UsageError;
use crate::output::{age, exact, now_ms, number, percent, print_json, Table};
use crate::pages;
use crate::wire;

/// A whole pipeline: what SubmitPipeline takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub name: String,
    pub max_attempts: u32,
    pub nodes: Vec<Node>,
}

impl Pipeline {
    pub fn to_request(&self, request_id: String) -> SubmitPipelineRequest {
        SubmitPipelineRequest {
            name: self.name.clone(),
            max_attempts: self.max_attempts,
            request_id,
            nodes: self
                .nodes
                .iter()
                .map(|node| v1::PipelineNode {
                    key: node.key.clone(),
                    name: node.name.clone(),
                    spec: Some(node.spec.to_proto()),
                    after: node.after.clone(),
                    init_from: node.init_from.clone().unwrap_or_default(),
                    priority: node.priority,
                })
                .collect(),
        }
    }
}

/// The key of the rl node for `alpha`: `rl-0.1` (`rl-1e-300`, not 300 digits).
pub fn rl_key(alpha: f64) -> String {
    format!("rl-{}", exact(alpha))
}

/// The CAMP pipeline (DESIGN "Jobs"): baseline fp32; qat4 and qat1 from scratch;
/// sp from qat4; one rl per alpha from sp. Each stage starts from
/// `JobSpec::defaults_for(stage)`, then the flags.
pub fn camp_pipeline(args: &PipelineCampArgs) -> Result<Pipeline, UsageError> {
    if args.alphas.is_empty() {
        return Err(UsageError("--alphas: give at least one alpha".into()));
    }
    let name = args.name.clone().unwrap_or_else(|| format!("camp-{}-{}", args.arch, args.dataset));
    let stage_spec = |stage: Stage, epochs: Option<u32>| {
        let mut spec = JobSpec::defaults_for(stage);
        spec.arch = args.arch.clone();
        spec.dataset = args.dataset.clone();
        spec.epochs = epochs.unwrap_or(args.epochs);
        if let Some(v) = args.batch_size {
            spec.batch_size = v;
        }
        if let Some(v) = args.train_limit {
            spec.train_limit = v;
        }
        if let Some(v) = args.test_limit {
            spec.test_limit = v;
        }
        if let Some(v) = args.device {
            spec.device = v;
        }
        if let Some(v) = args.seed {
            spec.seed = v;
        }
        if let Some(v) = args.print_freq {
            spec.print_freq = v;
        }
        spec
    };
    // `bits`: the node's own bits (qat4, qat1), set over the file's; the file's
    // entries without wts or acts then take them.
    let compress = |spec: &mut JobSpec, path: &Option<std::path::PathBuf>, flag: &str, bits: Option<u32>| {
        let schedule = path.as_ref().map(|path| apply_compress_file(path, spec, flag)).transpose()?;
        if let Some(bits) = bits {
            spec.bits_weights = Some(bits);
            spec.bits_activations = Some(bits);
        }
        if let Some(schedule) = schedule {
            schedule.apply_bits_overrides(spec);
        }
        Ok::<(), UsageError>(())
    };
    let node = |key: &str, spec: JobSpec, init_from: &str| Node {
        key: key.to_owned(),
        name: format!("{name}/{key}"),
        spec,
        after: Vec::new(),
        init_from: (!init_from.is_empty()).then(|| init_from.to_owned()),
        priority: args.priority,
    };

    let baseline = stage_spec(Stage::Baseline, args.baseline_epochs);
    let mut qat4 = stage_spec(Stage::Qat, args.qat_epochs);
    compress(&mut qat4, &args.compress_qat4, "--compress-qat4", Some(4))?;
    let mut qat1 = stage_spec(Stage::Qat, args.qat_epochs);
    compress(&mut qat1, &args.compress_qat1, "--compress-qat1", Some(1))?;
    let mut sp = stage_spec(Stage::Sp, args.sp_epochs);
    compress(&mut sp, &args.compress_sp, "--compress-sp", None)?;
    let mut rl = stage_spec(Stage::Rl, args.rl_epochs);
    compress(&mut rl, &args.compress_rl, "--compress-rl", None)?;

    let mut nodes = vec![node("baseline", baseline, ""), node("qat4", qat4, ""), node("qat1", qat1, ""), node("sp", sp, "qat4")];
    let mut seen = HashSet::new();
    for &alpha in &args.alphas {
        let key = rl_key(alpha);
        if !seen.insert(key.clone()) {
            return Err(UsageError(format!("--alphas: {} is given twice", exact(alpha))));
        }
        nodes.push(node(&key, JobSpec { alpha, ..rl.clone() }, "sp"));
    }
    for node in &nodes {
        check_spec(&node.spec).map_err(|err| UsageError(format!("node '{}': {err}", node.key)))?;
    }
    let pipeline = Pipeline { name, max_attempts: args.max_attempts.unwrap_or(0), nodes };
    check_dag(&pipeline.nodes)?;
    Ok(pipeline)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    name: Option<String>,
    #[serde(default)]
    max_attempts: u32,
    nodes: Vec<NodeFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    key: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    init_from: Option<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    spec: serde_yaml::Value,
}

/// A node's spec: `JobSpec::defaults_for(stage)` under the keys given (JobSpec's
/// serde: unknown keys refused), validated. Errors name the node and the key.
fn node_spec(key: &str, value: &serde_yaml::Value) -> Result<JobSpec, UsageError> {
    let fail = |what: String| UsageError(format!("node '{key}': {what}"));
    // A node names its stage (a spec file on its own may leave it out for the baseline).
    if value.as_mapping().is_some_and(|map| !map.contains_key("stage")) {
        return Err(fail("spec.stage: missing (baseline, qat, sp or rl)".into()));
    }
    JobSpec::from_yaml(value).map_err(|err| match err.key.as_str() {
        "spec" => fail(format!("spec: {}", err.reason)),
        key => fail(format!("spec.{key}: {}", err.reason)),
    })
}

/// Reads a pipeline file: `{name, max_attempts?, nodes: [{key, name?, after?, init_from?, priority?, spec}]}`.
pub fn parse_pipeline(text: &str, default_name: &str) -> Result<Pipeline, UsageError> {
    let file: PipelineFile = serde_yaml::from_str(text).map_err(|err| UsageError(err.to_string()))?;
    let name = file.name.unwrap_or_else(|| default_name.to_owned());
    let mut nodes = Vec::with_capacity(file.nodes.len());
    for node in file.nodes {
        let spec = node_spec(&node.key, &node.spec)?;
        nodes.push(Node {
            name: node.name.unwrap_or_else(|| format!("{name}/{}", node.key)),
            key: node.key,
            spec,
            after: node.after,
            init_from: node.init_from,
            priority: node.priority,
        });
    }
    let nodes = check_dag(&nodes)?;
    Ok(Pipeline { name, max_attempts: file.max_attempts, nodes })
}

/// Checks the DAG by the contract's rules (`camp_proto::pipeline`, which the
/// coordinator applies again) and returns the nodes parents first.
pub fn check_dag(nodes: &[Node]) -> Result<Vec<Node>, UsageError> {
    let order = topological_order(nodes).map_err(|err| UsageError(err.to_string()))?;
    Ok(order.into_iter().map(|i| nodes[i].clone()).collect())
}

pub async fn camp(opts: &GlobalOpts, args: &PipelineCampArgs) -> anyhow::Result<()> {
    submit(opts, &camp_pipeline(args)?, &args.request_id).await
}

pub async fn submit_file(opts: &GlobalOpts, path: &Path, request_id: &RequestIdArg) -> anyhow::Result<()> {
    let text = read_input_file("pipeline file", path)?;
    let default_name = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let pipeline = parse_pipeline(&text, &default_name).map_err(|err| UsageError(format!("{}: {err}", path.display())))?;
    submit(opts, &pipeline, request_id).await
}

/// Submits under the request id (`--request-id`, else a fresh UUID), retried
/// while the coordinator is unavailable.
async fn submit(opts: &GlobalOpts, pipeline: &Pipeline, request_id: &RequestIdArg) -> anyhow::Result<()> {
    let request = pipeline.to_request(request_id.get_or_new());
    let experiment = client::with_retries("submitting the pipeline", || {
        let request = request.clone();
        async move {
            let experiment = client::connect(opts).await?.submit_pipeline(request).await?.into_inner();
            Ok(experiment)
        }
    })
    .await?;
    if opts.json {
        return print_json(&wire::experiment(&experiment));
    }
    let jobs: Vec<String> = experiment.jobs.iter().map(|job| format!("{} #{}", job.node, job.id)).collect();
    println!("submitted experiment {} ({}, {} jobs): {}", experiment.id, experiment.name, experiment.jobs.len(), jobs.join(", "));
    Ok(())
}

pub async fn show(opts: &GlobalOpts, id: i64) -> anyhow::Result<()> {
    let experiment = client::connect(opts).await?.get_experiment(GetExperimentRequest { id }).await?.into_inner();
    if opts.json {
        return print_json(&wire::experiment(&experiment));
    }
    print!("{}", render_experiment(&experiment, now_ms()));
    Ok(())
}

/// `3 succeeded, 1 running, 5 queued`.
fn state_counts(jobs: &[v1::Job]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for job in jobs {
        let state = wire::state_name(job.state);
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => counts.push((state, 1)),
        }
    }
    counts.iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", ")
}

struct TreeRow {
    label: String,
    cells: Vec<String>,
    /// The prefix of the line below, and the job's message.
    message: Option<(String, String)>,
}

/// Walks an experiment's jobs depth first, each under the parent it starts from
/// (else its first parent).
struct Tree<'a> {
    jobs: &'a [v1::Job],
    index: HashMap<i64, usize>,
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    visited: Vec<bool>,
    rows: Vec<TreeRow>,
}

impl<'a> Tree<'a> {
    fn new(jobs: &'a [v1::Job]) -> Self {
        let index: HashMap<i64, usize> = jobs.iter().enumerate().map(|(i, job)| (job.id, i)).collect();
        let mut parent = vec![None; jobs.len()];
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
        for (i, job) in jobs.iter().enumerate() {
            // Under the job it starts from where it has one, else its first parent.
            let init_from = job.spec.as_ref().map_or(0, |spec| spec.init_from);
            let first = index
                .get(&init_from)
                .copied()
                .filter(|_| job.parents.contains(&init_from))
                .or_else(|| job.parents.iter().find_map(|p| index.get(p).copied()));
            if let Some(p) = first.filter(|&p| p != i) {
                parent[i] = Some(p);
                children[p].push(i);
            }
        }
        Tree { jobs, index, parent, children, visited: vec![false; jobs.len()], rows: Vec::new() }
    }

    fn rows(mut self) -> Vec<TreeRow> {
        for i in 0..self.jobs.len() {
            if self.parent[i].is_none() {
                self.walk(i, "", "");
            }
        }
        // A job only reachable through a cycle of parents (not expected): listed flat.
        for i in 0..self.jobs.len() {
            self.walk(i, "", "");
        }
        self.rows
    }

    fn walk(&mut self, i: usize, lead: &str, cont: &str) {
        if self.visited[i] {
            return;
        }
        self.visited[i] = true;
        let job = &self.jobs[i];
        let spec = job.spec.clone().unwrap_or_default();
        let result = wire::embedded_json(&job.result_json);
        let name_of = |j: usize| {
            if self.jobs[j].node.is_empty() {
                format!("#{}", self.jobs[j].id)
            } else {
                self.jobs[j].node.clone()
            }
        };
        let others: Vec<String> = job
            .parents
            .iter()
            .filter(|&&p| self.parent[i].is_none_or(|first| self.jobs[first].id != p))
            .map(|p| match self.index.get(p) {
                Some(&j) => name_of(j),
                None => format!("#{p}"),
            })
            .collect();
        let mut label = format!("{lead}{}", name_of(i));
        if !others.is_empty() {
            label.push_str(&format!(" (also after {})", others.join(", ")));
        }
        let f = |key: &str| result.get(key).and_then(Value::as_f64);
        let kids = self.children[i].clone();
        let message = job.message.split_whitespace().collect::<Vec<_>>().join(" ");
        self.rows.push(TreeRow {
            label,
            cells: vec![
                format!("#{}", job.id),
                spec.stage.clone(),
                wire::state_name(job.state).to_owned(),
                format!("{}/{}", job.attempt, job.max_attempts),
                format!("{}/{}", job.epoch, spec.epochs),
                wire::best_top1(&result).map(percent).unwrap_or_default(),
                f("normalized_energy").map(number).unwrap_or_default(),
                f("fullbit_share").map(percent).unwrap_or_default(),
            ],
            message: (!message.is_empty()).then(|| {
                let below = if kids.is_empty() { "   " } else { "│  " };
                (format!("{cont}{below}"), message)
            }),
        });
        for (n, &child) in kids.iter().enumerate() {
            let (l, c) = if n + 1 == kids.len() { ("└─ ", "   ") } else { ("├─ ", "│  ") };
            self.walk(child, &format!("{cont}{l}"), &format!("{cont}{c}"));
        }
    }
}

/// The DAG as a tree: each job under the parent it starts from, else its first
/// parent in the experiment (other parents named), with its state, attempt, progress and key result (best
/// top-1, normalised energy, 4-bit share), and its message on the line below.
pub fn render_experiment(experiment: &v1::Experiment, now_ms: i64) -> String {
    let jobs = &experiment.jobs;
    let rows = Tree::new(jobs).rows();
    let headers = ["node", "job", "stage", "state", "attempt", "epoch", "top-1", "energy", "4-bit"];
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        widths[0] = widths[0].max(row.label.chars().count());
        for (w, cell) in widths[1..].iter_mut().zip(&row.cells) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| {
                let pad = width.saturating_sub(cell.chars().count());
                format!("{cell}{}", " ".repeat(pad))
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = format!(
        "experiment {} {} (owner {}, created {}): {} jobs, {}\n",
        experiment.id,
        experiment.name,
        experiment.owner,
        age(experiment.created_at_ms, now_ms),
        jobs.len(),
        state_counts(jobs)
    );
    out.push_str(&line(headers.iter().map(|h| h.to_uppercase()).collect()));
    for row in rows {
        let mut cells = vec![row.label];
        cells.extend(row.cells);
        out.push_str(&line(cells));
        if let Some((prefix, message)) = row.message {
            out.push_str(&format!("{prefix}  ↳ {message}\n"));
        }
    }
    out
}

pub async fn list(opts: &GlobalOpts, limit: Option<u32>) -> anyhow::Result<()> {
    let client = client::connect(opts).await?;
    let experiments = pages::experiments(&client, limit.map_or(100, |n| n as usize)).await?;
    if opts.json {
        return print_json(&Value::Array(experiments.iter().map(wire::experiment).collect()));
    }
    let now = now_ms();
    let mut table = Table::new(&["id", "name", "owner", "age"]);
    for experiment in &experiments {
        table.push(vec![experiment.id.to_string(), experiment.name.clone(), experiment.owner.clone(), age(experiment.created_at_ms, now)]);
    }
    print!("{table}");
    Ok(())
}

pub async fn cancel(opts: &GlobalOpts, id: i64) -> anyhow::Result<()> {
    let experiment = client::connect(opts).await?.cancel_experiment(CancelExperimentRequest { id }).await?.into_inner();
    if opts.json {
        return print_json(&wire::experiment(&experiment));
    }
    println!("experiment {}: {}", experiment.id, state_counts(&experiment.jobs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command, PipelineAction};
    use clap::Parser;

    fn camp_args(line: &[&str]) -> PipelineCampArgs {
        let cli = Cli::try_parse_from(["camp", "pipeline", "camp"].iter().chain(line)).unwrap();
        match cli.command {
            Command::Pipeline { action: PipelineAction::Camp(args) } => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn node<'a>(pipeline: &'a Pipeline, key: &str) -> &'a Node {
        pipeline.nodes.iter().find(|n| n.key == key).unwrap_or_else(|| panic!("no node {key}"))
    }

    #[test]
    fn camp_pipeline_has_the_method_dag() {
        let pipeline = camp_pipeline(&camp_args(&[
            "-a",
            "preact_resnet44_cifar",
            "--dataset",
            "cifar100",
            "--alphas",
            "0.01,0.05,0.1,0.2,0.5",
            "--epochs",
            "30",
            "--sp-epochs",
            "20",
            "--rl-epochs",
            "10",
            "-b",
            "64",
            "--train-limit",
            "512",
            "--device",
            "cuda",
            "--seed",
            "4",
        ]))
        .unwrap();
        assert_eq!(pipeline.name, "camp-preact_resnet44_cifar-cifar100");
        let keys: Vec<&str> = pipeline.nodes.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(keys, ["baseline", "qat4", "qat1", "sp", "rl-0.01", "rl-0.05", "rl-0.1", "rl-0.2", "rl-0.5"]);
        let edges: Vec<(&str, &str)> = pipeline.nodes.iter().filter_map(|n| Some((n.init_from.as_deref()?, n.key.as_str()))).collect();
        assert_eq!(edges, [("qat4", "sp"), ("sp", "rl-0.01"), ("sp", "rl-0.05"), ("sp", "rl-0.1"), ("sp", "rl-0.2"), ("sp", "rl-0.5")]);
        assert!(pipeline.nodes.iter().all(|n| n.after.is_empty()));

        let baseline = &node(&pipeline, "baseline").spec;
        assert_eq!((baseline.stage, baseline.epochs, baseline.weight_bits()), (Stage::Baseline, 30, 32));
        let qat4 = &node(&pipeline, "qat4").spec;
        assert_eq!((qat4.stage, qat4.epochs, qat4.bits_weights, qat4.bits_activations), (Stage::Qat, 30, Some(4), Some(4)));
        let qat1 = &node(&pipeline, "qat1").spec;
        assert_eq!((qat1.bits_weights, qat1.bits_activations), (Some(1), Some(1)));
        let sp = &node(&pipeline, "sp").spec;
        assert_eq!(
            sp,
            &JobSpec {
                arch: "preact_resnet44_cifar".into(),
                dataset: "cifar100".into(),
                epochs: 20,
                batch_size: 64,
                train_limit: 512,
                device: camp_proto::spec::DeviceRequest::Cuda,
                seed: 4,
                ..JobSpec::defaults_for(Stage::Sp)
            }
        );
        let rl = &node(&pipeline, "rl-0.2").spec;
        assert_eq!((rl.stage, rl.alpha, rl.epochs, rl.lr, rl.init_from), (Stage::Rl, 0.2, 10, 0.01, 0));
        assert!(pipeline.nodes.iter().all(|n| n.spec.arch == "preact_resnet44_cifar" && n.spec.batch_size == 64));
        assert_eq!(node(&pipeline, "qat1").name, "camp-preact_resnet44_cifar-cifar100/qat1");

        let request = pipeline.to_request("retry-key-1".into());
        assert_eq!(request.request_id, "retry-key-1");
        assert_eq!(request.nodes.len(), 9);
        assert_eq!(request.nodes[3].init_from, "qat4");
        assert_eq!(request.nodes[3].spec.as_ref().unwrap().stage, "sp");
        assert_eq!(request.nodes[8].spec.as_ref().unwrap().alpha, Some(0.5));
    }

    #[test]
    fn camp_pipeline_defaults_and_mistakes() {
        let pipeline = camp_pipeline(&camp_args(&["-a", "preact_resnet20_cifar", "--name", "r20", "--qat-epochs", "5"])).unwrap();
        assert_eq!(pipeline.name, "r20");
        assert_eq!(pipeline.nodes.len(), 4 + 5);
        assert_eq!(node(&pipeline, "baseline").spec.epochs, 200);
        assert_eq!(node(&pipeline, "qat4").spec.epochs, 5);
        assert_eq!(node(&pipeline, "sp").spec.epochs, 200);
        assert_eq!(node(&pipeline, "sp").spec.lr_schedule, JobSpec::defaults_for(Stage::Sp).lr_schedule);

        let err = camp_pipeline(&camp_args(&["-a", "preact_resnet20_cifar", "--alphas", "0.1,0.1"])).unwrap_err();
        assert!(err.0.contains("--alphas"), "{err}");
        let err = camp_pipeline(&camp_args(&["-a", "resnet9000"])).unwrap_err();
        assert!(err.0.contains("node 'baseline'") && err.0.contains("arch"), "{err}");
        let err = camp_pipeline(&camp_args(&["-a", "preact_resnet20_cifar", "--alphas", "-1"])).unwrap_err();
        assert!(err.0.contains("node 'rl--1'") && err.0.contains("alpha"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "pruners: {}\n").unwrap();
        let err = camp_pipeline(&camp_args(&["-a", "preact_resnet20_cifar", "--compress-sp", bad.to_str().unwrap()])).unwrap_err();
        assert!(err.0.contains("--compress-sp") && err.0.contains("pruners"), "{err}");
    }

    #[tokio::test]
    async fn pipeline_files_and_schedules_are_capped() {
        let err = camp_pipeline(&camp_args(&["-a", "preact_resnet20_cifar", "--compress-rl", "/dev/zero"])).unwrap_err().0;
        assert!(err.starts_with("--compress-rl /dev/zero: larger than"), "{err}");
        let cli = Cli::try_parse_from(["camp", "--addr", "http://127.0.0.1:1", "pipeline", "submit", "/dev/zero"]).unwrap();
        let err = submit_file(&cli.global, Path::new("/dev/zero"), &RequestIdArg::default()).await.unwrap_err();
        assert_eq!(crate::exit::code_for_error(&err), crate::exit::USAGE);
        assert!(err.to_string().starts_with("pipeline file /dev/zero: larger than"), "{err}");
    }

    #[test]
    fn rl_keys_stay_short_for_tiny_alphas() {
        assert_eq!(rl_key(0.1), "rl-0.1");
        assert_eq!(rl_key(1e-300), "rl-1e-300");
    }

    #[test]
    fn camp_pipeline_takes_schedules_per_stage() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("bool.yaml");
        std::fs::write(
            &one,
            "
quantizers:
  q:
    class: PACTQuantizer
    bits_weights: 2
    bits_activations: 2
    bits_overrides:
      layer3.*: {acts: null}
      fc: {wts: null, acts: null}
lr_schedulers:
  lr:
    class: MultiStepMultiGammaLR
    milestones: [2]
    gammas: [0.5]
policies:
  - quantizer: {instance_name: q}
    starting_epoch: 0
    ending_epoch: 10
    frequency: 1
  - lr_scheduler: {instance_name: lr}
    starting_epoch: 0
    ending_epoch: 10
    frequency: 1
",
        )
        .unwrap();
        let pipeline =
            camp_pipeline(&camp_args(&["-a", "preact_resnet20_cifar", "--epochs", "10", "--compress-qat1", one.to_str().unwrap()]))
                .unwrap();
        let qat1 = &node(&pipeline, "qat1").spec;
        assert_eq!(qat1.act_quant, camp_proto::spec::ActQuant::Pact);
        assert_eq!(qat1.lr_schedule, vec![camp_proto::spec::LrStep { epoch: 2, gamma: 0.5 }]);
        // qat1 is 1-bit whatever the file says; layer3's entry gives no wts, so it takes those bits.
        assert_eq!((qat1.bits_weights, qat1.bits_activations), (Some(1), Some(1)));
        assert_eq!(
            qat1.bits_overrides,
            vec![
                camp_proto::spec::BitsOverride { pattern: "layer3.*".into(), wts: Some(1), acts: None },
                camp_proto::spec::BitsOverride { pattern: "fc".into(), wts: None, acts: None },
            ]
        );
        // The file's list is the whole list, as distiller reads it: conv1, which it
        // does not list, is quantised (camp's defaults used to keep it full precision).
        assert!(!qat1.default_overrides);
        let report = camp_proto::energy::report(qat1).unwrap();
        assert_eq!((report.layers[0].path.as_str(), report.layers[0].bits), ("conv1", Some(1)));
        assert_eq!(node(&pipeline, "qat4").spec.act_quant, camp_proto::spec::ActQuant::Dorefa);
        assert!(node(&pipeline, "qat4").spec.default_overrides, "no file, camp's defaults");
    }

    const PIPELINE: &str = "
name: sweep
max_attempts: 2
nodes:
  - key: q4
    spec: {stage: qat, arch: preact_resnet20_cifar, dataset: fashion-mnist, epochs: 3, train_limit: 256}
  - key: base
    priority: 5
    spec: {stage: baseline, epochs: 2}
  - key: dual
    name: the sp job
    init_from: q4
    after: [base]
    spec: {stage: sp, dataset: fashion-mnist, epochs: 2, energy_table: {name: x, fp32_pj: 3.0}}
  - key: r
    init_from: dual
    spec:
      stage: rl
      dataset: fashion-mnist
      alpha: 0.3
      bits_overrides: [{pattern: 'layer3.*.gate.*', wts: 8, acts: null}]
";

    #[test]
    fn pipeline_yaml_takes_stage_defaults_under_the_keys_given() {
        let pipeline = parse_pipeline(PIPELINE, "file").unwrap();
        assert_eq!((pipeline.name.as_str(), pipeline.max_attempts), ("sweep", 2));
        let keys: Vec<&str> = pipeline.nodes.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(keys, ["q4", "base", "dual", "r"]);
        let q4 = &pipeline.nodes[0];
        assert_eq!(q4.spec, JobSpec { dataset: "fashion-mnist".into(), epochs: 3, train_limit: 256, ..JobSpec::defaults_for(Stage::Qat) });
        assert_eq!(q4.name, "sweep/q4");
        assert_eq!((pipeline.nodes[1].priority, pipeline.nodes[1].spec.epochs), (5, 2));
        let dual = &pipeline.nodes[2];
        assert_eq!(
            (dual.name.as_str(), dual.init_from.as_deref(), dual.after.clone()),
            ("the sp job", Some("q4"), vec!["base".to_string()])
        );
        assert_eq!((dual.spec.lr, dual.spec.epochs), (0.01, 2));
        assert_eq!(
            (dual.spec.energy_table.name.as_str(), dual.spec.energy_table.fp32_pj, dual.spec.energy_table.int8_mult_pj),
            ("x", 3.0, 0.2)
        );
        let r = &pipeline.nodes[3];
        assert_eq!((r.spec.stage, r.spec.alpha, r.spec.gamma), (Stage::Rl, 0.3, 1.0));
        assert_eq!(r.spec.bits_overrides[0].wts, Some(8));
    }

    #[test]
    fn pipeline_yaml_is_put_in_dependency_order() {
        let yaml = "name: x\nnodes:\n  - {key: r, init_from: s, spec: {stage: rl}}\n  - {key: s, init_from: q, spec: {stage: sp}}\n  - {key: q, spec: {stage: qat}}\n";
        let keys: Vec<String> = parse_pipeline(yaml, "f").unwrap().nodes.into_iter().map(|n| n.key).collect();
        assert_eq!(keys, ["q", "s", "r"]);
        let named = parse_pipeline("nodes:\n  - {key: a, spec: {stage: baseline}}\n", "from-file").unwrap();
        assert_eq!(named.name, "from-file");
    }

    #[test]
    fn pipeline_yaml_errors_name_the_node_and_key() {
        let err = |yaml: &str| parse_pipeline(yaml, "f").unwrap_err().0;
        let one = |spec: &str| format!("name: x\nnodes:\n  - key: a\n    spec: {spec}\n");
        let e = err(&one("{stage: qat, archh: x}"));
        assert!(e.contains("node 'a': spec.archh: unknown field"), "{e}");
        let e = err(&one("{stage: qat, lr: -1}"));
        assert!(e.contains("node 'a'") && e.contains("spec.lr"), "{e}");
        let e = err(&one("{stage: pretrain}"));
        assert!(e.contains("node 'a'") && e.contains("spec.stage") && e.contains("pretrain"), "{e}");
        let e = err(&one("{arch: preact_resnet20_cifar}"));
        assert!(e.contains("node 'a'") && e.contains("spec.stage: missing"), "{e}");
        let e = err(&one("{stage: qat, bits_weights: 9}"));
        assert!(e.contains("spec.bits_weights"), "{e}");
        let e = err(&one("{stage: qat, bits_overrides: [{pattern: 'layer9.*', wts: 2, acts: 2}]}"));
        assert!(e.contains("spec.bits_overrides") && e.contains("layer9.*"), "{e}");
        let e = err(&one("{stage: qat, lr: fast}"));
        assert!(e.contains("node 'a': spec.lr: invalid type"), "{e}");
        let e = err("name: x\nnodes:\n  - key: a\n    spec: {stage: qat}\n    parent: b\n");
        assert!(e.contains("parent"), "{e}");
        let e = err("name: x\nnodes: []\n");
        assert!(e.contains("no node"), "{e}");
        let e = err("name: x\nnodes:\n  - {key: a, spec: {stage: qat}}\n  - {key: a, spec: {stage: qat}}\n");
        assert!(e.contains("node 'a': key: used twice"), "{e}");
        let e = err("name: x\nnodes:\n  - {key: a, after: [b], spec: {stage: qat}}\n");
        assert!(e.contains("node 'a': after: no node 'b'"), "{e}");
        let e = err("name: x\nnodes:\n  - {key: s, init_from: q, spec: {stage: sp}}\n");
        assert!(e.contains("node 's': init_from: no node 'q'"), "{e}");
        let e = err("name: x\nnodes:\n  - {key: s, spec: {stage: sp}}\n");
        assert!(e.contains("node 's': init_from") && e.contains("qat"), "{e}");
        let e = err("name: x\nnodes:\n  - {key: b, spec: {stage: baseline}}\n  - {key: s, init_from: b, spec: {stage: sp}}\n");
        assert!(e.contains("node 's': init_from: 'b': stage sp starts from a qat job, not a baseline job"), "{e}");
        let e = err("name: x\nnodes:\n  - {key: q, spec: {stage: qat, arch: preact_resnet32_cifar}}\n  - {key: s, init_from: q, spec: {stage: sp}}\n");
        assert!(e.contains("node 's': init_from") && e.contains("preact_resnet32_cifar"), "{e}");
        let e = err("name: x\nnodes:\n  - {key: a, after: [b], spec: {stage: qat}}\n  - {key: b, after: [a], spec: {stage: qat}}\n");
        assert!(e.contains("cycle") && e.contains("'a'") && e.contains("'b'"), "{e}");
        // A job id instead of a node key is for stand-alone jobs (the coordinator refuses it in a pipeline).
        let e = err("name: x\nnodes:\n  - {key: s, spec: {stage: sp, init_from: 42}}\n");
        assert!(e.contains("node 's': init_from: a node starts from another node (init_from: KEY), not from job 42"), "{e}");
    }

    #[test]
    fn show_draws_children_under_parents_with_results_and_messages() {
        let mut experiment = super::super::results::tests::sample_experiment();
        let parents = [(13, vec![11]), (14, vec![13]), (15, vec![13])];
        for (id, ps) in parents {
            experiment.jobs.iter_mut().find(|j| j.id == id).unwrap().parents = ps;
        }
        let rl05 = experiment.jobs.iter_mut().find(|j| j.id == 15).unwrap();
        rl05.message = "cancelled by ada".into();
        rl05.max_attempts = 3;
        let text = render_experiment(&experiment, 61_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("experiment 3 camp-r20 (owner ada, created 1m ago): 6 jobs, 4 succeeded, 1 failed, 1 cancelled"),
            "{text}"
        );
        assert!(lines[1].starts_with("NODE") && lines[1].contains("TOP-1") && lines[1].contains("4-BIT"), "{text}");
        assert!(lines[2].starts_with("baseline ") && lines[2].contains("91.86%") && lines[2].contains("70.77"), "{text}");
        assert!(lines[3].starts_with("qat4 "), "{text}");
        assert!(lines[4].starts_with("└─ sp ") && lines[4].contains("48.00%"), "{text}");
        assert!(lines[5].starts_with("   ├─ rl-0.1 ") && lines[5].contains("89.90%") && lines[5].contains("0.4100"), "{text}");
        assert!(lines[6].starts_with("   └─ rl-0.5 ") && lines[6].contains("cancelled") && lines[6].contains("0/3"), "{text}");
        assert_eq!(lines[7].trim_start(), "↳ cancelled by ada", "{text}");
        assert!(lines[8].starts_with("qat1 ") && lines[8].contains("failed"), "{text}");
        assert_eq!(lines.len(), 9, "{text}");

        // Under the job it starts from, the other parent named.
        let rl = experiment.jobs.iter_mut().find(|j| j.id == 14).unwrap();
        rl.parents = vec![12, 13];
        let text = render_experiment(&experiment, 61_000);
        assert!(text.contains("   ├─ rl-0.1 (also after qat1)  #14"), "{text}");
    }
}
