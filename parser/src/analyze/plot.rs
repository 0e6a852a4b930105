//! Plots, drawn with plotters' SVG backend into strings: line charts,
//! grouped bar charts and heatmaps, in one palette so that the same series
//! (a bundle, a kind of bytes) has the same colour in every plot.

use plotters::prelude::*;

use super::Plot;

/// Plot size in pixels.
const W: u32 = 860;
const H: u32 = 360;

/// Colour `i` of the palette (Tableau 10).
pub fn color(i: usize) -> RGBColor {
    const P: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let (r, g, b) = P[i % P.len()];
    RGBColor(r, g, b)
}

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
    /// Drawn dashed (the second bundle of a side-by-side run).
    pub dashed: bool,
}

fn finish(file: &str, caption: &str, svg: String) -> Plot {
    Plot {
        file: file.to_string(),
        caption: caption.to_string(),
        svg,
    }
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    (lo, hi)
}

/// A line chart; y starts at 0 unless `y_from_min`.
pub fn lines(file: &str, caption: &str, x_label: &str, y_label: &str, series: &[Series]) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = draw_lines(&root, caption, x_label, y_label, series);
        let _ = root.present();
    }
    finish(file, caption, svg)
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (x0, x1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (_, y1) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..y1 * 1.08)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for s in series {
        let c = color(s.color);
        let style = ShapeStyle::from(&c).stroke_width(2);
        let anno = if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style))?
        } else {
            chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?
        };
        anno.label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        if s.points.len() <= 64 {
            chart.draw_series(
                s.points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 2, c.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// A grouped bar chart: one group of bars per category, one bar per
/// series (`groups[i].1[j]` is series i at category j).
pub fn bars(
    file: &str,
    caption: &str,
    y_label: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
    log_y: bool,
) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = draw_bars(&root, caption, y_label, categories, groups, log_y);
        let _ = root.present();
    }
    finish(file, caption, svg)
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_label: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
    log_y: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    // x in hundredths of a category: category j is centred at 100 j.
    let n = categories.len().max(1) as i32;
    let k = groups.len().max(1) as i32;
    let t = |v: f64| if log_y { (v.max(0.0) + 1.0).log10() } else { v };
    let (_, y1) = range(groups.iter().flat_map(|g| g.1.iter().map(|&v| t(v))));
    let labels: Vec<String> = categories.to_vec();
    let every = (n / 30).max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-50..n * 100 - 50, 0.0..y1 * 1.1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE.mix(0.0))
        .x_labels((n as usize).min(60))
        .x_label_formatter(&|x| {
            let j = x / 100;
            if x % 100 == 0 && j >= 0 && (j as usize) < labels.len() && j % every == 0 {
                labels[j as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(if log_y {
            format!("log10(1 + {y_label})")
        } else {
            y_label.to_string()
        })
        .draw()?;
    let width = 80 / k;
    for (gi, (name, vals)) in groups.iter().enumerate() {
        let c = color(gi);
        chart
            .draw_series(vals.iter().enumerate().map(|(j, &v)| {
                let x0 = j as i32 * 100 - 40 + gi as i32 * width;
                Rectangle::new([(x0, 0.0), (x0 + width - 2, t(v))], c.filled())
            }))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// A heatmap of `grid[y][x]` (row 0 at the bottom) over x in `x_range` and
/// y in `y_range`, log-scaled colour, with horizontal marks at `hlines`
/// (y values).
#[allow(clippy::too_many_arguments)]
pub fn heatmap(
    file: &str,
    caption: &str,
    x_label: &str,
    y_label: &str,
    grid: &[Vec<u64>],
    x_range: (f64, f64),
    y_range: (f64, f64),
    hlines: &[f64],
) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, 420)).into_drawing_area();
        let _ = draw_heatmap(
            &root, caption, x_label, y_label, grid, x_range, y_range, hlines,
        );
        let _ = root.present();
    }
    finish(file, caption, svg)
}

#[allow(clippy::too_many_arguments)]
fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    x_label: &str,
    y_label: &str,
    grid: &[Vec<u64>],
    x_range: (f64, f64),
    y_range: (f64, f64),
    hlines: &[f64],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (x0, x1) = if x_range.1 > x_range.0 {
        x_range
    } else {
        (x_range.0, x_range.0 + 1.0)
    };
    let (y0, y1) = if y_range.1 > y_range.0 {
        y_range
    } else {
        (y_range.0, y_range.0 + 1.0)
    };
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()?;
    let ny = grid.len().max(1);
    let nx = grid.first().map(|r| r.len()).unwrap_or(0).max(1);
    let max = grid
        .iter()
        .flat_map(|r| r.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let dx = (x1 - x0) / nx as f64;
    let dy = (y1 - y0) / ny as f64;
    let cells = grid.iter().enumerate().flat_map(|(yi, row)| {
        row.iter()
            .enumerate()
            .filter(|(_, &v)| v > 0)
            .map(move |(xi, &v)| {
                // Log scale: the smallest non-zero cell is still visible.
                let f = ((v as f64).ln_1p() / max.ln_1p()).clamp(0.05, 1.0);
                let c = HSLColor(0.66 - 0.66 * f, 0.9, 0.35 + 0.2 * f);
                let (ax, ay) = (x0 + xi as f64 * dx, y0 + yi as f64 * dy);
                Rectangle::new([(ax, ay), (ax + dx, ay + dy)], c.filled())
            })
    });
    chart.draw_series(cells)?;
    chart.draw_series(
        hlines
            .iter()
            .map(|&y| PathElement::new(vec![(x0, y), (x1, y)], BLACK.mix(0.18).stroke_width(1))),
    )?;
    Ok(())
}
