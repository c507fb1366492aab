//! The pipeline SubmitPipeline takes (`Pipeline`), checked as a DAG by the
//! contract's rules, and the CAMP pipeline `camp pipeline camp` builds from its
//! flags (`PipelineCampArgs`).

use std::collections::HashSet;
use std::path::PathBuf;

use camp_proto::pipeline::{topological_order, Node};
use camp_proto::spec::{DeviceRequest, Stage};
use camp_proto::v1::{self, SubmitPipelineRequest};
use camp_proto::JobSpec;
use clap::Args;

use crate::exit::UsageError;
use crate::input_files::apply_compress_file;
use crate::spec_flags::{check_spec, RequestIdArg};
use crate::values::parse_device;
use camp_proto::text::exact;

#[derive(Debug, Args)]
pub struct PipelineCampArgs {
    /// Architecture: preact_resnet{20,32,44,56,110}_cifar.
    #[arg(short, long)]
    pub arch: String,
    /// Data set: cifar10, cifar100 or fashion-mnist.
    #[arg(long, default_value_t = JobSpec::default().dataset)]
    pub dataset: String,
    /// The rl stage's alphas, one rl job each.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0.01,0.05,0.1,0.2,0.5", allow_negative_numbers = true)]
    pub alphas: Vec<f64>,
    /// Epochs of every stage not given its own below.
    #[arg(long, default_value_t = JobSpec::default().epochs)]
    pub epochs: u32,
    /// Epochs of the baseline job [default: --epochs].
    #[arg(long)]
    pub baseline_epochs: Option<u32>,
    /// Epochs of the qat jobs [default: --epochs].
    #[arg(long)]
    pub qat_epochs: Option<u32>,
    /// Epochs of the sp job [default: --epochs].
    #[arg(long)]
    pub sp_epochs: Option<u32>,
    /// Epochs of the rl jobs [default: --epochs].
    #[arg(long)]
    pub rl_epochs: Option<u32>,
    /// Experiment name [default: camp-<arch>-<dataset>].
    #[arg(long)]
    pub name: Option<String>,
    /// Mini-batch size of every job [default: the stages', 128].
    #[arg(short = 'b', long)]
    pub batch_size: Option<u32>,
    /// Train on the first N training images only (0 = all).
    #[arg(long)]
    pub train_limit: Option<u32>,
    /// Test on the first N test images only (0 = all).
    #[arg(long)]
    pub test_limit: Option<u32>,
    /// Which kind of worker may run the jobs: any, cpu or cuda.
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceRequest>,
    /// Random seed of every job.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps between step metrics.
    #[arg(short = 'p', long)]
    pub print_freq: Option<u32>,
    /// Scheduling priority of every job; higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Attempts per job before it fails for good [default: the coordinator's].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Distiller schedule for the qat4 job.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress_qat4: Option<PathBuf>,
    /// Distiller schedule for the qat1 job.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress_qat1: Option<PathBuf>,
    /// Distiller schedule for the sp job.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress_sp: Option<PathBuf>,
    /// Distiller schedule for the rl jobs.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress_rl: Option<PathBuf>,
    #[command(flatten)]
    pub request_id: RequestIdArg,
}

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

/// Checks the DAG by the contract's rules (`camp_proto::pipeline`, which the
/// coordinator applies again) and returns the nodes parents first.
pub fn check_dag(nodes: &[Node]) -> Result<Vec<Node>, UsageError> {
    let order = topological_order(nodes).map_err(|err| UsageError(err.to_string()))?;
    Ok(order.into_iter().map(|i| nodes[i].clone()).collect())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use crate::commands::pipeline::PipelineAction;
    use clap::Parser;

    pub fn camp_args(line: &[&str]) -> PipelineCampArgs {
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
}
