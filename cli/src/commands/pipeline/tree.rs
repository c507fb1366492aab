//! `camp pipeline show`'s drawing: an experiment's DAG as a tree of its jobs,
//! each with its state, progress and key result, laid out by `output::Table`.

use std::collections::HashMap;

use camp_proto::v1;

use crate::output::{age, number, percent, Table};
use camp_proto::wire;

/// `3 succeeded, 1 running, 5 queued`.
pub fn state_counts(jobs: &[v1::Job]) -> String {
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
        let result = job.result.as_ref();
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
                result.map(|r| percent(r.best_top1)).unwrap_or_default(),
                result.map(|r| number(r.normalized_energy)).unwrap_or_default(),
                result.and_then(|r| r.fullbit_share).map(percent).unwrap_or_default(),
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
    let mut table = Table::new(&["node", "job", "stage", "state", "attempt", "epoch", "top-1", "energy", "4-bit"]);
    // The header line has no message; each row's follows its line.
    let mut messages = vec![None];
    for row in rows {
        let mut cells = vec![row.label];
        cells.extend(row.cells);
        table.push(cells);
        messages.push(row.message);
    }
    let mut out = format!(
        "experiment {} {} (owner {}, created {}): {} jobs, {}\n",
        experiment.id,
        experiment.name,
        experiment.owner,
        age(experiment.created_at_ms, now_ms),
        jobs.len(),
        state_counts(jobs)
    );
    for (line, message) in table.lines().into_iter().zip(messages) {
        out.push_str(&line);
        out.push('\n');
        if let Some((prefix, message)) = message {
            out.push_str(&format!("{prefix}  ↳ {message}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_draws_children_under_parents_with_results_and_messages() {
        let mut experiment = camp_proto::results::examples::example_experiment();
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
