//! Line charts of metric series: one line (a 2 px polyline) per series (a job's loss by step;
//! several jobs' test top-1 by epoch on the dashboard's compare page), every
//! point drawn a small circle so a reader sees where the data is, and a
//! legend (square swatches, so circles are only data) when there are several.
//! Long series are thinned before they come here: the dashboard asks the store
//! for at most a thousand points a series.

use plotters::prelude::*;

use crate::{linear_axis_number, register_font, FigureError, FONT};

pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 380;

/// Colours of the lines, in order (matplotlib's tab10, which readers know).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One series: its name in the legend and its `(x, y)` points in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub lines: &'a [Line],
}

/// `(lo, hi)` around `values`, never empty (a flat series gets a unit of room).
fn range(values: impl Iterator<Item = f64>, margin: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !(lo.is_finite() && hi.is_finite()) {
        return None;
    }
    if hi - lo < 1e-12 {
        let room = lo.abs().max(1.0) * 0.05;
        return Some((lo - room, hi + room));
    }
    let pad = (hi - lo) * margin;
    Some((lo - pad, hi + pad))
}

/// The chart as an SVG document. Points that are not finite (a NaN loss) are
/// left out; a chart with no finite point is `Empty`.
pub fn svg(chart: &Chart) -> Result<String, FigureError> {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let lines: Vec<(&Line, Vec<(f64, f64)>)> =
        chart.lines.iter().map(|line| (line, line.points.iter().copied().filter(finite).collect::<Vec<_>>())).collect();
    let all = || lines.iter().flat_map(|(_, points)| points.iter().copied());
    let (Some((x_lo, x_hi)), Some((y_lo, y_hi))) = (range(all().map(|p| p.0), 0.0), range(all().map(|p| p.1), 0.06)) else {
        return Err(FigureError::Empty);
    };
    register_font();
    let mut out = String::new();
    {
        let fail = |err: DrawingAreaErrorKind<_>| FigureError::Draw(err.to_string());
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(fail)?;
        let (x_label, y_label) = (linear_axis_number(x_lo, x_hi), linear_axis_number(y_lo, y_hi));
        let mut plot = ChartBuilder::on(&root)
            .caption(chart.title, (FONT, 18))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(fail)?;
        plot.configure_mesh()
            .x_desc(chart.x_desc)
            .y_desc(chart.y_desc)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(fail)?;
        for (i, (line, points)) in lines.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let drawn = plot.draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2))).map_err(fail)?;
            if lines.len() > 1 {
                drawn.label(line.label.as_str()).legend(move |(x, y)| Rectangle::new([(x + 2, y - 5), (x + 12, y + 5)], colour.filled()));
            }
            plot.draw_series(points.iter().map(|&p| Circle::new(p, 2, colour.filled()))).map_err(fail)?;
        }
        if lines.len() > 1 {
            plot.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(190, 190, 190))
                .draw()
                .map_err(fail)?;
        }
        root.present().map_err(fail)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(svg: &str, tag: &str) -> usize {
        roxmltree::Document::parse(svg).unwrap().descendants().filter(|n| n.has_tag_name(tag)).count()
    }

    /// The series' lines: polylines 2 px wide (the grid's are 1 px).
    fn drawn_lines(svg: &str) -> usize {
        let doc = roxmltree::Document::parse(svg).unwrap();
        doc.descendants().filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2")).count()
    }

    #[test]
    fn every_finite_point_is_one_circle_and_every_series_one_line() {
        let loss = Line { label: "job 1".into(), points: (0..50).map(|i| (i as f64 * 10.0, 2.0 / (1.0 + i as f64))).collect() };
        let mut other = Line { label: "job 2".into(), points: (0..20).map(|i| (i as f64 * 25.0, 1.5 - 0.01 * i as f64)).collect() };
        other.points.push((600.0, f64::NAN));
        let lines = [loss, other];
        let text = svg(&Chart { title: "loss", x_desc: "step", y_desc: "loss", lines: &lines }).unwrap();
        assert_eq!(count(&text, "circle"), 70, "the NaN point is left out");
        assert_eq!(drawn_lines(&text), 2);
        assert!(text.contains("job 2"), "a legend names the series");

        let one = [Line { label: "flat".into(), points: vec![(1.0, 0.5)] }];
        let text = svg(&Chart { title: "t", x_desc: "epoch", y_desc: "top-1", lines: &one }).unwrap();
        assert_eq!(count(&text, "circle"), 1, "a single point still draws");
        assert!(!text.contains(">flat<"), "one series needs no legend");

        let none = [Line { label: "nan".into(), points: vec![(1.0, f64::NAN)] }];
        assert!(matches!(svg(&Chart { title: "t", x_desc: "x", y_desc: "y", lines: &none }), Err(FigureError::Empty)));
    }

    #[test]
    fn labels_are_escaped() {
        let lines = [
            Line { label: "<script>alert(1)</script>".into(), points: vec![(1.0, 1.0)] },
            Line { label: "a & b".into(), points: vec![(2.0, 2.0)] },
        ];
        let text = svg(&Chart { title: "\"quoted\" <title>", x_desc: "x", y_desc: "y", lines: &lines }).unwrap();
        assert!(!text.contains("<script>"), "{text}");
        roxmltree::Document::parse(&text).expect("well-formed XML whatever the labels");
    }
}
