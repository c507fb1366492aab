//! `camp results`: an experiment's jobs as rows of results (a table, CSV or
//! JSON); `camp plot` draws the same rows.

use camp_proto::results::{rows, rows_csv, ResultRow};
use camp_proto::v1::{self, GetExperimentRequest};
use clap::Args;

use crate::client;
use crate::global_opts::GlobalOpts;
use crate::output::{number, percent, print_json, Table};

#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// The experiment id.
    pub id: i64,
    /// Print CSV (node,job_id,stage,bits_weights,bits_activations,alpha,top1,normalized_energy,fullbit_share,state); takes precedence over --json.
    #[arg(long)]
    pub csv: bool,
}

pub fn rows_table(rows: &[ResultRow]) -> Table {
    let mut table = Table::new(&["node", "job", "stage", "bits/alpha", "top-1", "energy", "4-bit", "state"]);
    for row in rows {
        table.push(vec![
            row.node.clone(),
            row.job_id.to_string(),
            row.stage.clone(),
            row.variant(),
            row.top1.map(percent).unwrap_or_default(),
            row.normalized_energy.map(number).unwrap_or_default(),
            row.fullbit_share.map(percent).unwrap_or_default(),
            row.state.clone(),
        ]);
    }
    table
}

pub async fn experiment(opts: &GlobalOpts, id: i64) -> anyhow::Result<v1::Experiment> {
    Ok(client::connect(opts).await?.get_experiment(GetExperimentRequest { id }).await?.into_inner())
}

pub async fn results(opts: &GlobalOpts, args: &ResultsArgs) -> anyhow::Result<()> {
    let rows = rows(&experiment(opts, args.id).await?);
    if args.csv {
        print!("{}", rows_csv(&rows));
    } else if opts.json {
        print_json(&serde_json::to_value(&rows)?)?;
    } else {
        print!("{}", rows_table(&rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use camp_proto::results::examples::example_experiment;

    #[test]
    fn the_table_shows_each_row_for_people() {
        let rows = rows(&example_experiment());
        let text = rows_table(&rows).to_string();
        let line: Vec<&str> = text.lines().nth(5).unwrap().split_whitespace().collect();
        assert_eq!(line, ["rl-0.1", "14", "rl", "α=0.1", "89.90%", "0.4100", "29.00%", "succeeded"]);
    }
}
