//! The accuracy/energy curve of an experiment, as in the reference's figure:
//! top-1 against normalised energy on a log axis; the fixed-precision networks
//! (1-bit, 4-bit, fp32) joined by a line, the co-adaptive ones (sp, rl) as
//! markers labelled with their alpha. `points` makes the points from an
//! experiment's result rows; `svg` and `draw` draw them.

use std::path::Path;

use camp_proto::results::ResultRow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{axis_number, register_font, FigureError, Format, FONT};

pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 650;
const FIXED_COLOUR: RGBColor = RGBColor(76, 114, 176);
const CAMP_COLOUR: RGBColor = RGBColor(150, 16, 50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// baseline and qat: one precision for the whole network.
    Fixed,
    /// sp and rl: the dual-path network, its gates choosing per image.
    CoAdaptive,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub label: String,
    pub series: Series,
    pub energy: f64,
    /// Top-1 in percent.
    pub top1: f64,
}

/// Room a point label takes, in pixels, when labels are kept apart.
const LABEL_WIDTH: i32 = 70;
const LABEL_HEIGHT: i32 = 18;

/// The plottable rows: succeeded jobs with a top-1 and a positive energy.
pub fn points(rows: &[ResultRow]) -> Vec<Point> {
    rows.iter()
        .filter(|row| row.state == "succeeded")
        .filter_map(|row| {
            let (top1, energy) = (row.top1?, row.normalized_energy?);
            if !(top1.is_finite() && energy.is_finite() && energy > 0.0) {
                return None;
            }
            let (series, label) = match row.stage.as_str() {
                "baseline" => (Series::Fixed, "fp32".to_owned()),
                "qat" => (
                    Series::Fixed,
                    match (row.bits_weights, row.bits_activations) {
                        (Some(w), Some(a)) if w == a => format!("{w}-bit"),
                        (Some(w), Some(a)) => format!("w{w}/a{a}"),
                        _ => "qat".to_owned(),
                    },
                ),
                "sp" => (Series::CoAdaptive, "sp".to_owned()),
                "rl" => (Series::CoAdaptive, row.alpha.map_or("rl".to_owned(), |a| format!("α={a}"))),
                _ => return None,
            };
            Some(Point { label, series, energy, top1: 100.0 * top1 })
        })
        .collect()
}

/// The curve as an SVG document.
pub fn svg(points: &[Point], title: &str) -> Result<String, FigureError> {
    if points.is_empty() {
        return Err(FigureError::Empty);
    }
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        draw_on(&root, points, title)?;
        root.present().map_err(|err| FigureError::Draw(err.to_string()))?;
    }
    Ok(out)
}

/// Writes the curve to `path` as SVG or PNG.
pub fn draw(points: &[Point], title: &str, path: &Path, format: Format) -> Result<(), FigureError> {
    if points.is_empty() {
        return Err(FigureError::Empty);
    }
    register_font();
    match format {
        Format::Svg => {
            let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw_on(&root, points, title)?;
            root.present().map_err(|err| FigureError::Write { path: path.to_path_buf(), reason: err.to_string() })?;
        }
        Format::Png => {
            let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
            draw_on(&root, points, title)?;
            root.present().map_err(|err| FigureError::Write { path: path.to_path_buf(), reason: err.to_string() })?;
        }
    }
    Ok(())
}

/// `(lo, hi)` of a log axis: a margin around the data, at least a decade wide.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = (lo / 1.6, hi * 1.6);
    if hi / lo < 10.0 {
        let centre = (lo * hi).sqrt();
        (centre / 10f64.sqrt(), centre * 10f64.sqrt())
    } else {
        (lo, hi)
    }
}

/// `(lo, hi)` of the top-1 axis: a margin around the data, whole percent.
fn top1_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let margin = ((hi - lo) * 0.12).max(0.5);
    ((lo - margin).floor().max(0.0), (hi + margin).ceil().min(100.0))
}

fn draw_on<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, points: &[Point], title: &str) -> Result<(), FigureError>
where
    DB::ErrorType: 'static,
{
    let fail = |err: DrawingAreaErrorKind<DB::ErrorType>| FigureError::Draw(err.to_string());
    root.fill(&WHITE).map_err(fail)?;
    let (x_lo, x_hi) = log_range(points.iter().map(|p| p.energy));
    let (y_lo, y_hi) = top1_range(points.iter().map(|p| p.top1));
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 24))
        .margin(24)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), y_lo..y_hi)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("Energy (normalised to the ResNet 4-bit blocks, log scale)")
        .y_desc("Top-1 accuracy (%)")
        .x_label_formatter(&|v| axis_number(*v))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(205, 205, 205))
        .draw()
        .map_err(fail)?;

    let label_style = TextStyle::from((FONT, 16).into_font()).color(&BLACK);
    let mut fixed: Vec<&Point> = points.iter().filter(|p| p.series == Series::Fixed).collect();
    fixed.sort_by(|a, b| a.energy.total_cmp(&b.energy));
    let camp: Vec<&Point> = points.iter().filter(|p| p.series == Series::CoAdaptive).collect();

    if !fixed.is_empty() {
        chart.draw_series(LineSeries::new(fixed.iter().map(|p| (p.energy, p.top1)), FIXED_COLOUR.stroke_width(2))).map_err(fail)?;
        chart
            .draw_series(fixed.iter().map(|p| TriangleMarker::new((p.energy, p.top1), 9, FIXED_COLOUR.filled())))
            .map_err(fail)?
            .label("Fixed precision (fp32, qat)")
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 7, FIXED_COLOUR.filled()));
    }
    if !camp.is_empty() {
        chart
            .draw_series(camp.iter().map(|p| Circle::new((p.energy, p.top1), 7, CAMP_COLOUR.filled())))
            .map_err(fail)?
            .label("CAMP (sp, rl by alpha)")
            .legend(|(x, y)| Circle::new((x + 10, y), 6, CAMP_COLOUR.filled()));
    }
    // Labels beside each point: fixed ones below-right (on the line's lower side),
    // co-adaptive ones left (they sit above and left of the line). Points of a short
    // run crowd together: a label that would overlap one already placed moves down
    // a line and gets a leader to its point.
    let mut ordered: Vec<&Point> = fixed.iter().chain(camp.iter()).copied().collect();
    ordered[fixed.len()..].sort_by(|a, b| b.top1.total_cmp(&a.top1));
    let mut placed: Vec<(i32, i32)> = Vec::new();
    for p in ordered {
        let (px, py) = chart.backend_coord(&(p.energy, p.top1));
        let (dx, dy, style) = match p.series {
            Series::Fixed => (10, 4, label_style.pos(Pos::new(HPos::Left, VPos::Top))),
            Series::CoAdaptive => (-11, 0, label_style.pos(Pos::new(HPos::Right, VPos::Center))),
        };
        let x = px + dx;
        let mut y = py + dy;
        while placed.iter().any(|&(ox, oy)| (ox - x).abs() < LABEL_WIDTH && (oy - y).abs() < LABEL_HEIGHT) {
            y += LABEL_HEIGHT;
        }
        placed.push((x, y));
        if y != py + dy {
            root.draw(&PathElement::new(vec![(px, py), (x, y)], RGBColor(150, 150, 150))).map_err(fail)?;
        }
        root.draw(&Text::new(p.label.clone(), (x, y), style)).map_err(fail)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(node: &str, stage: &str, bits: u32, alpha: Option<f64>, top1: f64, energy: f64) -> ResultRow {
        ResultRow {
            node: node.into(),
            job_id: 1,
            stage: stage.into(),
            bits_weights: Some(bits),
            bits_activations: Some(bits),
            alpha,
            top1: Some(top1),
            normalized_energy: Some(energy),
            fullbit_share: None,
            state: "succeeded".into(),
        }
    }

    fn sample_rows() -> Vec<ResultRow> {
        let mut failed = row("rl-0.5", "rl", 1, Some(0.5), 0.5, 0.2);
        failed.state = "failed".into();
        vec![
            row("baseline", "baseline", 32, None, 0.9186, 70.77),
            row("qat4", "qat", 4, None, 0.912, 1.0),
            row("qat1", "qat", 1, None, 0.85, 0.106),
            row("sp", "sp", 1, None, 0.905, 0.62),
            row("rl-0.01", "rl", 1, Some(0.01), 0.909, 0.71),
            row("rl-0.1", "rl", 1, Some(0.1), 0.899, 0.41),
            row("rl-0.2", "rl", 1, Some(0.2), 0.89, 0.3),
            failed,
        ]
    }

    #[test]
    fn only_succeeded_jobs_with_results_are_points() {
        let points = points(&sample_rows());
        assert_eq!(points.len(), 7);
        assert_eq!(points, sample_points(), "the points plot's own test draws");
        let labels: Vec<&str> = points.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["fp32", "4-bit", "1-bit", "sp", "α=0.01", "α=0.1", "α=0.2"]);
        assert_eq!(points[0].series, Series::Fixed);
        assert_eq!(points[5].series, Series::CoAdaptive);
        assert!((points[0].top1 - 91.86).abs() < 1e-9);
        let mut no_energy = row("x", "qat", 4, None, 0.9, 1.0);
        no_energy.normalized_energy = None;
        assert!(super::points(&[no_energy]).is_empty());
    }

    /// The points of a camp run: fixed precision (fp32, 4-bit, 1-bit) and co-adaptive (sp, rl by alpha).
    fn sample_points() -> Vec<Point> {
        let point = |label: &str, series, energy, top1: f64| Point { label: label.into(), series, energy, top1: 100.0 * top1 };
        vec![
            point("fp32", Series::Fixed, 70.77, 0.9186),
            point("4-bit", Series::Fixed, 1.0, 0.912),
            point("1-bit", Series::Fixed, 0.106, 0.85),
            point("sp", Series::CoAdaptive, 0.62, 0.905),
            point("α=0.01", Series::CoAdaptive, 0.71, 0.909),
            point("α=0.1", Series::CoAdaptive, 0.41, 0.899),
            point("α=0.2", Series::CoAdaptive, 0.3, 0.89),
        ]
    }
    #[test]
    fn writes_an_svg_with_the_labels_and_a_png_that_is_not_blank() {
        let points = sample_points();
        let dir = tempfile::tempdir().unwrap();

        let svg = dir.path().join("curve.svg");
        draw(&points, "camp-r20: preact_resnet20_cifar on cifar10", &svg, Format::Svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.descendants().filter(|d| d.is_text()).filter_map(|d| d.text()).collect::<String>().trim().to_owned())
            .collect();
        for want in [
            "fp32",
            "4-bit",
            "1-bit",
            "sp",
            "α=0.01",
            "α=0.1",
            "α=0.2",
            "Top-1 accuracy (%)",
            "Fixed precision (fp32, qat)",
            "CAMP (sp, rl by alpha)",
            "camp-r20: preact_resnet20_cifar on cifar10",
        ] {
            assert!(texts.iter().any(|t| t == want), "no text '{want}' in {texts:?}");
        }
        assert!(!texts.iter().any(|t| t.contains("α=0.5")), "a failed job is not plotted");
        assert!(texts.iter().any(|t| t == "100"), "log axis has decades: {texts:?}");

        let png = dir.path().join("curve.png");
        draw(&points, "camp-r20", &png, Format::Png).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        let pixels = &buf[..info.buffer_size()];
        let channels = info.color_type.samples();
        let white = pixels.chunks(channels).filter(|p| p.iter().all(|&c| c == 255)).count();
        let total = pixels.len() / channels;
        assert!(white < total * 99 / 100, "only {} of {total} pixels are not white", total - white);
        let camp_red = pixels.chunks(channels).filter(|p| p[0] == CAMP_COLOUR.0 && p[1] == CAMP_COLOUR.1 && p[2] == CAMP_COLOUR.2).count();
        assert!(camp_red > 100, "the CAMP markers are drawn ({camp_red} pixels)");
    }

    #[test]
    fn an_svg_string_is_the_same_figure_and_nothing_is_an_error() {
        let text = svg(&sample_points(), "camp-r20").unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        let circles = doc.descendants().filter(|n| n.has_tag_name("circle")).count();
        assert_eq!(circles, 4 + 1, "one per CAMP point and one in the legend");
        assert!(matches!(svg(&[], "x"), Err(FigureError::Empty)));
        assert_eq!(Format::from_path(Path::new("a/curve.PNG")), Some(Format::Png));
        assert_eq!(Format::from_path(Path::new("curve.pdf")), None);
    }
}
