//! camp's figures, drawn with plotters in DejaVu Sans (shipped by the `dejavu`
//! crate, so no system font is needed): the accuracy–energy curve the method
//! exists for (`curve`), and line charts of metric series (`chart`). The CLI
//! writes them to files (`camp plot`); the coordinator's dashboard serves the
//! same figures as SVG, so a page and a file never disagree.

pub mod chart;
pub mod curve;

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::style::FontStyle;

pub(crate) const FONT: &str = "sans-serif";

/// Why a figure was not drawn.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("nothing to plot")]
    Empty,
    #[error("drawing the figure: {0}")]
    Draw(String),
    #[error("writing {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
}

/// The file formats a figure is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "svg" => Some(Format::Svg),
            "png" => Some(Format::Png),
            _ => None,
        }
    }
}

pub(crate) fn register_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // The bytes are DejaVu Sans from the dejavu crate: a valid font.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// An axis value for people: whole numbers from 1 up, else up to 4 decimals without trailing zeros.
pub(crate) fn axis_number(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{v:.1e}")
    } else if v.abs() >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        let text = format!("{v:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The labels of a linear axis over `lo..hi`: as many decimals as its tick
/// spacing needs (a loss between 2.21 and 2.29 reads 2.22, 2.24, not 2, 2),
/// without trailing zeros.
pub(crate) fn linear_axis_number(lo: f64, hi: f64) -> impl Fn(&f64) -> String {
    let tick = ((hi - lo).abs() / 10.0).max(f64::MIN_POSITIVE);
    let decimals = (-tick.log10().floor()).clamp(0.0, 8.0) as usize;
    move |v: &f64| {
        if v.abs() >= 1e6 || (v.abs() < 1e-4 && *v != 0.0 && decimals > 6) {
            return format!("{v:.2e}");
        }
        let text = format!("{v:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_have_the_decimals_their_ticks_need() {
        let narrow = linear_axis_number(2.21, 2.29);
        assert_eq!((narrow(&2.22), narrow(&2.24)), ("2.22".to_string(), "2.24".to_string()));
        let steps = linear_axis_number(0.0, 5_000.0);
        assert_eq!(steps(&1500.0), "1500");
        let share = linear_axis_number(0.0, 1.0);
        assert_eq!((share(&0.1), share(&1.0)), ("0.1".to_string(), "1".to_string()));
        assert_eq!(axis_number(0.106), "0.106");
        assert_eq!(axis_number(70.77), "71");
    }
}
