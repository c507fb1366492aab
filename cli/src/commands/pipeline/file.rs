//! The YAML pipeline file of `camp pipeline submit`: `{name, max_attempts?,
//! nodes: [{key, name?, after?, init_from?, priority?, spec}]}`, read into a
//! `Pipeline`, each node's spec from its stage's defaults.

use camp_proto::pipeline::Node;
use camp_proto::{JobSpec, ValidSpec};
use serde::Deserialize;

use super::build::{check_dag, Pipeline};
use crate::exit::UsageError;

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
    JobSpec::from_yaml(value).map(ValidSpec::into_inner).map_err(|err| match err.key.as_str() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use camp_proto::spec::Stage;

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
}
