//! `camp energy`: the energy model (docs/method.md, "Energy") for one network and bits plan,
//! computed here from the architecture's layer shapes; no coordinator, no training.

use std::path::PathBuf;

use camp_proto::energy::{self, EnergyReport};
use camp_proto::spec::Stage;
use camp_proto::text::exact;
use camp_proto::{wire, JobSpec};
use clap::{Args, ValueEnum};

use crate::global_opts::GlobalOpts;
use crate::input_files::read_energy_table;
use crate::output::{number, print_json, thousands, Table};
use crate::spec_flags::{check_spec, spec_error_with_flag, BitsArgs};
use crate::values::BitsOverrideArg;

#[derive(Debug, Args)]
pub struct EnergyArgs {
    /// Architecture: preact_resnet{20,32,44,56,110}_cifar.
    #[arg(short, long)]
    pub arch: String,
    /// Data set: cifar10, cifar100 or fashion-mnist.
    #[arg(long, default_value_t = JobSpec::default().dataset)]
    pub dataset: String,
    /// The stage's network and bits: sp and rl are dual path [default: qat when bits are given, else baseline].
    #[arg(long, value_enum)]
    pub stage: Option<StageArg>,
    #[command(flatten)]
    pub bits: BitsArgs,
    /// Bits of the modules whose path matches PATTERN (as for submit); repeatable.
    #[arg(long = "bits-override", value_name = "PATTERN=W[/A]")]
    pub bits_overrides: Vec<BitsOverrideArg>,
    /// Energy table (YAML with keys name, fp32_pj, int8_mult_pj, int8_add_pj) [default: horowitz-45nm].
    #[arg(long, value_name = "FILE.yaml")]
    pub energy_table: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    Baseline,
    Qat,
    Sp,
    Rl,
}

impl From<StageArg> for Stage {
    fn from(stage: StageArg) -> Self {
        match stage {
            StageArg::Baseline => Stage::Baseline,
            StageArg::Qat => Stage::Qat,
            StageArg::Sp => Stage::Sp,
            StageArg::Rl => Stage::Rl,
        }
    }
}

pub fn run(opts: &GlobalOpts, args: &EnergyArgs) -> anyhow::Result<()> {
    let spec = spec_for(args)?;
    let report = energy::report(&spec).map_err(spec_error_with_flag)?;
    if opts.json {
        return print_json(&wire::energy_report(&spec, &report));
    }
    print!("{}", report_text(&spec, &report));
    Ok(())
}

/// The spec whose network and bits the flags describe.
pub fn spec_for(args: &EnergyArgs) -> anyhow::Result<JobSpec> {
    let bits_given = args.bits.bits.is_some() || args.bits.bits_weights.is_some() || args.bits.bits_activations.is_some();
    let stage = match args.stage {
        Some(stage) => Stage::from(stage),
        None if bits_given => Stage::Qat,
        None => Stage::Baseline,
    };
    let mut spec = JobSpec::defaults_for(stage);
    spec.arch = args.arch.clone();
    spec.dataset = args.dataset.clone();
    args.bits.apply(&mut spec);
    spec.bits_overrides = args.bits_overrides.iter().map(|o| o.0.clone()).collect();
    if let Some(path) = &args.energy_table {
        spec.energy_table = read_energy_table(path)?;
    }
    check_spec(&spec)?;
    Ok(spec)
}

/// The per-layer table, then the totals, for people.
pub fn report_text(spec: &JobSpec, report: &EnergyReport) -> String {
    let mut table = Table::new(&["path", "role", "macs", "bits", "pJ"]);
    for layer in &report.layers {
        table.push(vec![
            layer.path.clone(),
            serde_json::to_value(layer.role).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            thousands(layer.macs),
            layer.bits.map_or("fp32".into(), |b| b.to_string()),
            number(layer.energy_pj),
        ]);
    }
    let t = &spec.energy_table;
    let mut out = table.to_string();
    out.push('\n');
    let bits = if spec.stage == Stage::Baseline {
        "fp32".to_owned()
    } else {
        format!("weights {} bits, activations {} bits", spec.weight_bits(), spec.activation_bits())
    };
    let mut lines: Vec<(&str, String)> = vec![
        ("network", format!("{} on {} (stage {}, {bits})", report.arch, spec.dataset, spec.stage.as_str())),
        (
            "table",
            format!(
                "{} (fp32 {} pJ/MAC; int8 mult {} pJ, add {} pJ)",
                t.name,
                exact(t.fp32_pj),
                exact(t.int8_mult_pj),
                exact(t.int8_add_pj)
            ),
        ),
        ("MACs", format!("{} per image", thousands(report.macs))),
    ];
    let all_on = report.all_blocks_pj();
    if spec.stage.is_dual_path() {
        let all_off = report.blocks_pj(&vec![0.0; report.fullbit_pj.len()]);
        lines.push((
            "blocks pJ",
            format!("{} with all gates off (1-bit path and gates), {} with all on, per image", number(all_off), number(all_on)),
        ));
        lines.push(("stem+head pJ", number(report.stem_head_pj)));
        lines.push((
            "normalised",
            format!(
                "{} all off, {} all on (blocks / the blocks at 4 bits, {} pJ)",
                number(report.normalized(all_off)),
                number(report.normalized(all_on)),
                number(report.reference_4bit_pj)
            ),
        ));
    } else {
        lines.push(("blocks pJ", format!("{} per image", number(all_on))));
        lines.push(("stem+head pJ", number(report.stem_head_pj)));
        lines.push((
            "normalised",
            format!("{} (blocks / the blocks at 4 bits, {} pJ)", number(report.normalized(all_on)), number(report.reference_4bit_pj)),
        ));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in lines {
        out.push_str(&format!("{key:<width$}  {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;
    use serde_json::Value;

    fn energy_json(line: &[&str]) -> Value {
        let cli = Cli::try_parse_from(["camp", "energy"].iter().chain(line)).unwrap();
        let Command::Energy(args) = cli.command else { panic!("not energy") };
        let spec = spec_for(&args).unwrap();
        wire::energy_report(&spec, &energy::report(&spec).unwrap())
    }

    #[test]
    fn resnet20_figures_match_the_spec() {
        let r20 = ["-a", "preact_resnet20_cifar"];
        let fp32 = energy_json(&r20);
        assert_eq!(fp32["macs"], 40_551_040);
        assert_eq!(fp32["stage"], "baseline");
        let norm = fp32["normalized_energy"].as_f64().unwrap();
        assert!((norm - 70.77).abs() < 0.01, "{norm}");
        assert_eq!(fp32["table"]["name"], "horowitz-45nm");
        assert_eq!(fp32["layers"].as_array().unwrap().len(), 20);
        assert_eq!(fp32["layers"][0]["path"], "conv1");
        assert_eq!(fp32["layers"][0]["role"], "stem");
        assert_eq!(fp32["layers"][0]["macs"], 442_368);
        assert_eq!(fp32["layers"][0]["bits"], 32);
        let stem_head = fp32["stem_head_pj"].as_f64().unwrap();
        assert!((stem_head - (442_368.0 + 640.0) * 4.6).abs() < 1e-6);

        let one_bit = energy_json(&[r20[0], r20[1], "--bits", "1"]);
        assert_eq!(one_bit["stage"], "qat");
        let norm = one_bit["normalized_energy"].as_f64().unwrap();
        assert!((norm - 0.106).abs() < 0.001, "{norm}");
        assert_eq!(one_bit["layers"][1]["bits"], 1);
        assert_eq!(one_bit["layers"][0]["bits"], 32, "the stem stays fp32");
        assert!(one_bit.get("fullbit_pj").is_none());

        let four = energy_json(&[r20[0], r20[1], "--stage", "qat"]);
        assert!((four["normalized_energy"].as_f64().unwrap() - 1.0).abs() < 1e-12);
        let weights_only = energy_json(&[r20[0], r20[1], "--bits-weights", "1"]);
        assert_eq!(weights_only["normalized_energy"], one_bit["normalized_energy"]);
    }

    #[test]
    fn dual_path_reports_gates_off_and_on() {
        let sp = energy_json(&["-a", "preact_resnet20_cifar", "--stage", "sp"]);
        assert_eq!(sp["fullbit_pj"].as_array().unwrap().len(), 9);
        let off = sp["normalized_energy_all_off"].as_f64().unwrap();
        let on = sp["normalized_energy"].as_f64().unwrap();
        assert!(off > 0.106 && off < 0.3, "1-bit path and 4-bit gates: {off}");
        assert!((on - off - 1.0).abs() < 1e-9, "the 4-bit paths add the 4-bit blocks: {on}");
        let text = report_text(&JobSpec::defaults_for(Stage::Sp), &energy::report(&JobSpec::defaults_for(Stage::Sp)).unwrap());
        assert!(text.contains("all gates off") && text.contains("layer3.2.gate.conv2"), "{text}");
    }

    #[test]
    fn overrides_and_tables_change_the_figures() {
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("t.yaml");
        std::fs::write(&table, "name: half\nfp32_pj: 2.3\nint8_mult_pj: 0.1\nint8_add_pj: 0.015\n").unwrap();
        let fp32 = energy_json(&["-a", "preact_resnet20_cifar", "--energy-table", table.to_str().unwrap()]);
        assert_eq!(fp32["table"]["name"], "half");
        assert!((fp32["normalized_energy"].as_f64().unwrap() - 70.77).abs() < 0.01);
        let eight = energy_json(&["-a", "preact_resnet20_cifar", "--bits", "4", "--bits-override", "layer3.*=8"]);
        assert!(eight["normalized_energy"].as_f64().unwrap() > 1.5);

        std::fs::write(&table, "fp32_pj: 2.3\nint8_mult_pj: 0.1\nint8_add_pj: 0.015\n").unwrap();
        let err = read_energy_table(&table).unwrap_err().to_string();
        assert!(err.contains("--energy-table") && err.contains("name"), "{err}");
    }
}
