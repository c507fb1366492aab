//! A pipeline's rules, written once: the CLI checks a pipeline with them
//! before sending it (early, offline errors) and the coordinator, the
//! authority, checks it again with the very same function before storing a
//! job. A pipeline is a DAG of nodes; a node waits for the nodes it names in
//! `after` and starts from the weights of its `init_from` node (docs/method.md:
//! sp starts from a qat node, rl from an sp node, of the same network).

use crate::spec::JobSpec;

/// One node of a pipeline, as the CLI builds it and the coordinator stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub key: String,
    /// The job's name.
    pub name: String,
    pub spec: JobSpec,
    /// The keys of the nodes this one waits for.
    pub after: Vec<String>,
    /// The key of the node whose best checkpoint this one starts from.
    pub init_from: Option<String>,
    pub priority: i32,
}

/// What is wrong with a pipeline: the node (its index and key) when one is to
/// blame, the field (`key`, `after`, `init_from`, `nodes`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {reason}", match node { Some((_, key)) => format!("node '{key}': "), None => String::new() })]
pub struct DagError {
    pub node: Option<(usize, String)>,
    pub field: &'static str,
    pub reason: String,
}

/// Checks the nodes' keys and edges: at least one node; keys non-empty,
/// without spaces, unique; `after` and `init_from` name other nodes; sp and rl
/// start from a node of the stage before theirs (`Stage::required_parent`) that
/// trains the same network on the same data; a node's spec names no job id of
/// its own (`spec.init_from`: that is for stand-alone jobs); no cycle.
///
/// Returns the indices of the nodes in an order where each comes after every
/// node it names, the given order where that leaves a choice.
pub fn topological_order(nodes: &[Node]) -> Result<Vec<usize>, DagError> {
    if nodes.is_empty() {
        return Err(DagError { node: None, field: "nodes", reason: "the pipeline has no node".into() });
    }
    let fail = |i: usize, field: &'static str, reason: String| DagError { node: Some((i, nodes[i].key.clone())), field, reason };
    let mut index = std::collections::HashMap::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        if node.key.is_empty() || node.key.contains(char::is_whitespace) {
            return Err(fail(i, "key", "must be non-empty, without spaces".into()));
        }
        if index.insert(node.key.as_str(), i).is_some() {
            return Err(fail(i, "key", "used twice".into()));
        }
    }
    let mut parents: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let mut mine = Vec::new();
        for key in &node.after {
            if *key == node.key {
                return Err(fail(i, "after", "a node cannot wait for itself".into()));
            }
            mine.push(*index.get(key.as_str()).ok_or_else(|| fail(i, "after", format!("no node '{key}'")))?);
        }
        let spec = &node.spec;
        if spec.init_from != 0 {
            return Err(fail(
                i,
                "init_from",
                format!("a node starts from another node (init_from: KEY), not from job {} (spec.init_from)", spec.init_from),
            ));
        }
        match node.init_from.as_deref() {
            Some(key) => {
                if key == node.key {
                    return Err(fail(i, "init_from", "a node cannot start from itself".into()));
                }
                let p = *index.get(key).ok_or_else(|| fail(i, "init_from", format!("no node '{key}'")))?;
                spec.check_init_parent(Some(&nodes[p].spec)).map_err(|e| fail(i, "init_from", format!("'{key}': {}", e.reason)))?;
                mine.push(p);
            }
            None => spec.check_init_parent(None).map_err(|e| fail(i, "init_from", e.reason))?,
        }
        parents.push(mine);
    }
    // Kahn's algorithm, taking the earliest ready node in the given order each time.
    let mut placed = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    while order.len() < nodes.len() {
        let Some(next) = (0..nodes.len()).find(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p])) else {
            let stuck: Vec<String> = (0..nodes.len()).filter(|&i| !placed[i]).map(|i| format!("'{}'", nodes[i].key)).collect();
            return Err(DagError { node: None, field: "nodes", reason: format!("a cycle among {} (after / init_from)", stuck.join(", ")) });
        };
        placed[next] = true;
        order.push(next);
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Stage;

    fn node(key: &str, stage: Stage, after: &[&str], init_from: &str) -> Node {
        Node {
            key: key.into(),
            name: key.into(),
            spec: JobSpec::defaults_for(stage),
            after: after.iter().map(|k| k.to_string()).collect(),
            init_from: (!init_from.is_empty()).then(|| init_from.into()),
            priority: 0,
        }
    }

    fn error(nodes: &[Node]) -> String {
        topological_order(nodes).unwrap_err().to_string()
    }

    #[test]
    fn the_camp_pipeline_is_ordered_parents_first_and_file_order_where_free() {
        let nodes = [
            node("rl", Stage::Rl, &[], "sp"),
            node("baseline", Stage::Baseline, &[], ""),
            node("sp", Stage::Sp, &[], "qat4"),
            node("qat4", Stage::Qat, &["baseline"], ""),
            node("qat1", Stage::Qat, &["baseline"], ""),
        ];
        let order: Vec<&str> = topological_order(&nodes).unwrap().into_iter().map(|i| nodes[i].key.as_str()).collect();
        assert_eq!(order, ["baseline", "qat4", "sp", "rl", "qat1"]);
    }

    #[test]
    fn keys_must_be_present_unique_and_without_spaces() {
        assert_eq!(error(&[]), "nodes: the pipeline has no node");
        assert_eq!(error(&[node("", Stage::Qat, &[], "")]), "node '': key: must be non-empty, without spaces");
        assert_eq!(error(&[node("a b", Stage::Qat, &[], "")]), "node 'a b': key: must be non-empty, without spaces");
        let dup = topological_order(&[node("a", Stage::Qat, &[], ""), node("a", Stage::Qat, &[], "")]).unwrap_err();
        assert_eq!((dup.node, dup.field, dup.reason.as_str()), (Some((1, "a".to_string())), "key", "used twice"));
    }

    #[test]
    fn edges_must_name_other_nodes() {
        assert_eq!(error(&[node("a", Stage::Qat, &["b"], "")]), "node 'a': after: no node 'b'");
        assert_eq!(error(&[node("a", Stage::Qat, &["a"], "")]), "node 'a': after: a node cannot wait for itself");
        assert_eq!(error(&[node("s", Stage::Sp, &[], "q")]), "node 's': init_from: no node 'q'");
        assert_eq!(error(&[node("s", Stage::Sp, &[], "s")]), "node 's': init_from: a node cannot start from itself");
    }

    #[test]
    fn sp_and_rl_start_from_the_stage_before_on_the_same_network() {
        let e = error(&[node("b", Stage::Baseline, &[], ""), node("s", Stage::Sp, &[], "b")]);
        assert_eq!(e, "node 's': init_from: 'b': stage sp starts from a qat job, not a baseline job");
        let e = error(&[node("s", Stage::Sp, &[], "")]);
        assert_eq!(e, "node 's': init_from: stage sp starts from a qat job: name it (init_from)");
        let mut other = node("q", Stage::Qat, &[], "");
        other.spec.dataset = "cifar100".into();
        let e = error(&[other, node("s", Stage::Sp, &[], "q")]);
        assert!(e.starts_with("node 's': init_from: 'q': that job trained preact_resnet20_cifar on cifar100"), "{e}");
        let mut by_id = node("s", Stage::Sp, &[], "");
        by_id.spec.init_from = 7;
        assert_eq!(
            error(&[by_id]),
            "node 's': init_from: a node starts from another node (init_from: KEY), not from job 7 (spec.init_from)"
        );
    }

    #[test]
    fn a_cycle_names_every_node_on_it() {
        let nodes = [node("x", Stage::Baseline, &[], ""), node("a", Stage::Qat, &["b"], ""), node("b", Stage::Qat, &["a"], "")];
        assert_eq!(error(&nodes), "nodes: a cycle among 'a', 'b' (after / init_from)");
    }
}
