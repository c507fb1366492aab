//! Reading the files the CLI is given: any input file, capped and named by its
//! flag (`read_input_file`); distiller schedules (`--compress`); energy tables
//! (`--energy-table`).

use std::path::Path;

use camp_proto::energy::EnergyTable;
use camp_proto::limits;
use camp_proto::schedule::CompressSchedule;
use camp_proto::JobSpec;

use crate::exit::UsageError;

/// Reads a file the CLI is given (`--compress`, `--energy-table`, `--rows`, a
/// pipeline file): at most `limits::MAX_CONFIG_FILE_BYTES` of UTF-8 text, so
/// that `--compress /dev/zero` fails at once. The error names the flag and the path (exit 2).
pub fn read_input_file(flag: &str, path: &Path) -> Result<String, UsageError> {
    limits::read_config_file(path).map_err(|err| UsageError(format!("{flag} {}: {err}", path.display())))
}

/// Reads a distiller schedule and applies it to `spec` (for `spec.epochs` epochs).
/// Whoever changes the spec's bits afterwards calls `apply_bits_overrides` on
/// the schedule returned, so that the file's entries without `wts` or `acts` follow.
pub fn apply_compress_file(path: &Path, spec: &mut JobSpec, flag: &str) -> Result<CompressSchedule, UsageError> {
    let text = read_input_file(flag, path)?;
    let schedule =
        camp_proto::schedule::parse(&text, spec.epochs).map_err(|err| UsageError(format!("{flag} {}: {err}", path.display())))?;
    schedule.apply(spec);
    Ok(schedule)
}

/// Reads an energy table: YAML with every one of name, fp32_pj, int8_mult_pj, int8_add_pj.
pub fn read_energy_table(path: &Path) -> Result<EnergyTable, UsageError> {
    let fail = |reason: String| UsageError(format!("--energy-table {}: {reason}", path.display()));
    let text = read_input_file("--energy-table", path)?;
    parse_energy_table(&text).map_err(fail)
}

pub fn parse_energy_table(text: &str) -> Result<EnergyTable, String> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|err| err.to_string())?;
    let map = value.as_mapping().ok_or("expected a mapping")?;
    for key in ["name", "fp32_pj", "int8_mult_pj", "int8_add_pj"] {
        if !map.contains_key(key) {
            return Err(format!("{key}: missing"));
        }
    }
    let table: EnergyTable = serde_yaml::from_value(value).map_err(|err| err.to_string())?;
    table.validate().map_err(|err| err.reason)?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec_flags::tests::{invalid, spec_of};

    #[test]
    fn energy_table_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        std::fs::write(&path, "name: 7nm\nfp32_pj: 1.0\nint8_mult_pj: 0.05\nint8_add_pj: 0.01\n").unwrap();
        let spec = spec_of("qat", &["--energy-table", path.to_str().unwrap()]);
        assert_eq!(spec.energy_table.name, "7nm");
        assert_eq!(spec.energy_table.fp32_pj, 1.0);
        assert!(parse_energy_table("name: x\nfp32_pj: 1\nint8_mult_pj: 1\n").unwrap_err().contains("int8_add_pj"));
        assert!(parse_energy_table("name: x\nfp32_pj: 1\nint8_mult_pj: 1\nint8_add_pj: 1\nextra: 2\n").unwrap_err().contains("extra"));
        assert!(parse_energy_table("name: x\nfp32_pj: -1\nint8_mult_pj: 1\nint8_add_pj: 1\n").unwrap_err().contains("fp32_pj"));
    }

    #[test]
    fn files_the_cli_reads_are_capped_and_name_their_flag() {
        let err = invalid("qat", &["--compress", "/dev/zero"]);
        assert!(err.starts_with("--compress /dev/zero: larger than"), "{err}");
        let err = invalid("qat", &["--energy-table", "/dev/zero"]);
        assert!(err.starts_with("--energy-table /dev/zero: larger than"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("schedule.yaml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let err = read_input_file("--compress", &binary).unwrap_err().0;
        assert!(err.contains("--compress") && err.contains("not UTF-8"), "{err}");
    }
}
