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
