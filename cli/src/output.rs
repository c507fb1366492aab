//! Output for people: aligned tables, ages, sizes and numbers (what programs
//! read back, JSON numbers and CSV cells, is `camp_proto::text`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A plain text table: left-aligned columns two spaces apart.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Table { headers: headers.to_vec(), rows: Vec::new() }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

impl Table {
    /// The lines as printed, without their line breaks: the headers in capitals,
    /// then the rows; each column as wide as its widest cell, two spaces apart.
    pub fn lines(&self) -> Vec<String> {
        let header: Vec<String> = self.headers.iter().map(|h| h.to_uppercase()).collect();
        let lines: Vec<&[String]> = std::iter::once(header.as_slice()).chain(self.rows.iter().map(Vec::as_slice)).collect();
        let mut widths = vec![0; self.headers.len()];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        lines
            .into_iter()
            .map(|line| {
                let cells: Vec<String> = line.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
                cells.join("  ").trim_end().to_owned()
            })
            .collect()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.lines() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Prints a JSON value for scripts (pretty, one document).
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `3m ago` for a `*_ms` timestamp; `-` when unset (0).
pub fn age(at_ms: i64, now_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".into();
    }
    let seconds = (now_ms - at_ms).max(0) / 1000;
    format!("{} ago", duration_short(Duration::from_secs(seconds as u64)))
}

/// `45s`, `3m`, `5h`, `2d`: the largest unit only.
pub fn duration_short(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m", seconds / 60),
        3600..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// `45s`, `3m12s`, `1h05m`: for an ETA.
pub fn duration_precise(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

/// `512 B`, `1.5 KiB`, `44.2 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A top-1/top-5 fraction (0..1, as the worker reports it) as a percentage: `91.23%`; `-` for NaN.
pub fn percent(fraction: f64) -> String {
    if fraction.is_nan() {
        "-".into()
    } else {
        format!("{:.2}%", 100.0 * fraction)
    }
}

/// `40,551,040`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Magnitudes from which `number` and `whole` switch to the short exponent form
/// (`1e308`, not 309 digits).
const HUGE: f64 = 1e15;
const TINY: f64 = 1e-15;

/// A metric value for people: 4 significant digits or so, `-` for NaN; huge
/// and tiny magnitudes in the short exponent form (`1e308`, `1e-300`).
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if value.is_nan() {
        "-".into()
    } else if value == 0.0 || magnitude >= 1000.0 {
        whole(value)
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else if magnitude >= 1e-3 {
        format!("{value:.4}")
    } else if magnitude >= TINY {
        format!("{value:.2e}")
    } else {
        short_exponent(value)
    }
}

/// A value rounded to a whole number (`8900`), `1e308` for a huge one, `inf` and `NaN` as such.
pub fn whole(value: f64) -> String {
    if value.is_finite() && value.abs() >= HUGE {
        short_exponent(value)
    } else {
        format!("{value:.0}")
    }
}

/// At most 4 significant digits in exponent form, without trailing zeros: `1e308`, `1.798e308`.
fn short_exponent(value: f64) -> String {
    let text = format!("{value:.3e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if mantissa.contains('.') => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["id", "name"]);
        table.push(vec!["7".into(), "a".into()]);
        table.push(vec!["1234".into(), "long name".into()]);
        assert_eq!(table.to_string(), "ID    NAME\n7     a\n1234  long name\n");
    }

    #[test]
    fn ages_and_durations_read_well() {
        assert_eq!(age(0, 5_000), "-");
        assert_eq!(age(1_000, 46_000), "45s ago");
        assert_eq!(age(1, 180_001), "3m ago");
        assert_eq!(age(10_000, 5_000), "0s ago");
        assert_eq!(duration_short(Duration::from_secs(5 * 3600)), "5h");
        assert_eq!(duration_short(Duration::from_secs(3 * 86_400)), "3d");
        assert_eq!(duration_precise(Duration::from_secs(192)), "3m12s");
        assert_eq!(duration_precise(Duration::from_secs(3900)), "1h05m");
    }

    #[test]
    fn sizes_and_numbers_read_well() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(number(91.234), "91.23");
        assert_eq!(number(0.1), "0.1000");
        assert_eq!(number(2e-4), "2.00e-4");
        assert_eq!(number(8900.4), "8900");
        assert_eq!(number(f64::NAN), "-");
        assert_eq!(percent(0.91234), "91.23%");
        assert_eq!(percent(f64::NAN), "-");
        assert_eq!(thousands(40_551_040), "40,551,040");
        assert_eq!(thousands(640), "640");
        assert_eq!(thousands(1000), "1,000");
    }

    #[test]
    fn huge_and_tiny_numbers_print_compactly() {
        assert_eq!(number(1e308), "1e308");
        assert_eq!(number(-1e308), "-1e308");
        assert_eq!(number(f64::MAX), "1.798e308");
        assert_eq!(number(1e-300), "1e-300");
        assert_eq!(number(2e-4), "2.00e-4");
        assert_eq!(number(123_456_789.0), "123456789");
        assert_eq!((number(f64::INFINITY), number(f64::NEG_INFINITY)), ("inf".into(), "-inf".into()));
        assert_eq!(whole(8900.4), "8900");
        assert_eq!(whole(2.5e20), "2.5e20");
    }
}
