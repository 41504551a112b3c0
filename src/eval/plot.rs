//! Line charts written as PNG files, for evaluation reports and benchmarks (score vs budget,
//! peak memory vs document length), drawn with `plotters` on its bitmap backend.
//!
//! Text is drawn with DejaVu Sans, compiled in (assets/fonts/, Bitstream Vera licence), so a
//! chart looks the same on every machine and needs no system fonts. The RGB buffer is encoded
//! by the `png` crate.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use thiserror::Error;

/// The font every chart's text is drawn with.
const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family name it is registered under.
const FONT: &str = "sans-serif";
/// The largest magnitude drawn (and on a log axis, its inverse the smallest value).
const AXIS_LIMIT: f64 = 1e300;
/// The smallest image a chart is drawn into: below it, the axes and the legend do not fit.
pub const MIN_SIZE: (u32, u32) = (240, 160);

/// The line colours, in series order (then cycling): matplotlib's tab10.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
const GRID: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);

/// What can stop a chart from being drawn or written.
#[derive(Debug, Error)]
pub enum PlotError {
    /// The image is too small for the axes and the legend.
    #[error("a chart of {width}x{height} pixels is too small (at least {}x{})", MIN_SIZE.0, MIN_SIZE.1)]
    TooSmall {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
    },
    /// The compiled-in font could not be read.
    #[error("the chart font cannot be read")]
    Font,
    /// Drawing failed.
    #[error("drawing the chart: {0}")]
    Draw(String),
    /// Encoding the PNG failed.
    #[error("encoding the chart as PNG: {0}")]
    Png(#[from] png::EncodingError),
    /// The PNG file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// One line of a chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Data points `(x, y)`, joined in order of x. Non-finite points, values beyond 1e300 in
    /// magnitude and, on a log axis, values below 1e-300 are skipped.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// Returns the series labelled `label` in `series`, appending an empty one if there is none
    /// (legend order is first appearance).
    pub fn named<'a>(series: &'a mut Vec<Series>, label: &str) -> &'a mut Series {
        match series.iter().position(|s| s.label == label) {
            Some(i) => &mut series[i],
            None => {
                series.push(Series {
                    label: label.to_string(),
                    points: Vec::new(),
                });
                series.last_mut().expect("just pushed")
            }
        }
    }
}

/// A line chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// Title, above the plot (smaller where a long one would not fit the image).
    pub title: String,
    /// Label of the horizontal axis.
    pub x_label: String,
    /// Label of the vertical axis.
    pub y_label: String,
    /// Whether the horizontal axis is logarithmic (base 10).
    pub log_x: bool,
    /// Whether the vertical axis is logarithmic (base 10).
    pub log_y: bool,
    /// The lines, coloured in order (8 colours, then cycling).
    pub series: Vec<Series>,
}

fn series_colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn draw_error(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Registers the compiled-in font once.
fn font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    ok.then_some(()).ok_or(PlotError::Font)
}

/// Formats a tick value compactly: `k`/`M`/`G`/`T` suffixes, decimals as fine as `step` needs,
/// scientific notation below 1e-4 and from 1e15.
fn fmt_num(v: f64, step: f64) -> String {
    let a = v.abs();
    if a == 0.0 || a < step.abs() * 1e-6 {
        return "0".into();
    }
    if !(1e-4..1e15).contains(&a) {
        let mut e = a.log10().floor();
        let mut m = v / 10f64.powf(e);
        if m.abs() >= 9.995 {
            (m, e) = (m / 10.0, e + 1.0);
        }
        return format!("{}e{e}", trim_zeros(format!("{m:.2}")));
    }
    let (div, suffix) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(d, _)| a >= *d)
        .unwrap_or((1.0, ""));
    let decimals = (-(step.abs() / div).log10().floor()).clamp(0.0, 9.0) as usize;
    format!(
        "{}{suffix}",
        trim_zeros(format!("{:.*}", decimals, v / div))
    )
}

/// "2.50" -> "2.5", "3.00" -> "3", "-0.0" -> "0"; integers stay as they are.
fn trim_zeros(s: String) -> String {
    let t = match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.'),
        false => &s,
    };
    if t == "-0" { "0" } else { t }.to_string()
}

/// A linear axis: the data range widened to whole steps of 1, 2 or 5 times a power of ten,
/// about `max_ticks` of them, and the step.
fn linear_axis(lo: f64, hi: f64, max_ticks: usize) -> (Range<f64>, Vec<f64>, f64) {
    let (mut lo, mut hi) = (lo, hi);
    if hi <= lo {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo, hi) = (lo - pad, hi + pad);
    }
    let raw = (hi - lo) / max_ticks.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = mag
        * [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .find(|m| raw / mag <= *m)
            .unwrap_or(10.0);
    let (a, b) = ((lo / step).floor(), (hi / step).ceil());
    if !(step.is_normal() && (a * step).is_finite() && (b * step).is_finite() && b - a <= 1e3) {
        // Values too far apart for round steps: the range as it is, its ends as ticks.
        return (lo..hi, vec![lo, hi], hi - lo);
    }
    let ticks = (a as i64..=b as i64).map(|k| k as f64 * step).collect();
    (a * step..b * step, ticks, step)
}

/// A log axis: the data range padded by a fifth of a decade, ticks at 1, 2 and 5 times powers
/// of ten inside it (every multiple when that gives fewer than three, decades alone when it
/// gives more than `max_ticks`).
fn log_axis(lo: f64, hi: f64, max_ticks: usize) -> (Range<f64>, Vec<f64>) {
    let pad = 10f64.powf(0.2);
    let (lo, hi) = ((lo / pad).max(1e-300), (hi * pad).min(1e300));
    let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
    let within = |multiples: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|e| multiples.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (lo..=hi).contains(v) && v.is_normal())
            .collect()
    };
    let mut ticks = within(&[1.0, 2.0, 5.0]);
    if ticks.len() < 3 {
        ticks = within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
    if ticks.len() > max_ticks {
        ticks = within(&[1.0]);
    }
    if ticks.len() > max_ticks {
        // Every k-th decade, so that the labels fit.
        let every = ticks.len().div_ceil(max_ticks.max(1));
        ticks = ticks.into_iter().step_by(every).collect();
    }
    (lo..hi, ticks)
}

impl Chart {
    fn valid(&self, p: (f64, f64)) -> bool {
        // Beyond these the axis range (see `axis`) would not hold the point, and plotters'
        // pixel arithmetic overflows.
        let drawable = |v: f64, log: bool| {
            v.is_finite() && v.abs() <= AXIS_LIMIT && (!log || v >= 1.0 / AXIS_LIMIT)
        };
        drawable(p.0, self.log_x) && drawable(p.1, self.log_y)
    }

    /// The drawable points of each series, in order of x.
    fn lines(&self) -> Vec<Vec<(f64, f64)>> {
        self.series
            .iter()
            .map(|s| {
                let mut pts: Vec<_> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|p| self.valid(*p))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                pts
            })
            .collect()
    }

    /// Renders the chart as a PNG image of `width` x `height` pixels (8-bit RGB).
    pub fn to_png(&self, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
        if width < MIN_SIZE.0 || height < MIN_SIZE.1 {
            return Err(PlotError::TooSmall { width, height });
        }
        font()?;
        let mut rgb = vec![0u8; width as usize * height as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(draw_error)?;
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
        Ok(out)
    }

    /// Writes the PNG to `path`.
    pub fn save_png(&self, path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
        let png = self.to_png(width, height)?;
        std::fs::write(path, png).map_err(|source| PlotError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    fn draw(&self, root: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError> {
        root.fill(&WHITE).map_err(draw_error)?;
        let (width, height) = root.dim_in_pixel();
        // The title at 22 px where it fits the image, smaller down to 12 px where it does not.
        let mut size = 22.0;
        while size > 12.0 {
            let (w, _) = root
                .estimate_text_size(&self.title, &TextStyle::from((FONT, size).into_font()))
                .map_err(draw_error)?;
            // ab_glyph's estimate runs a little short of the drawn width: keep a tenth spare.
            if w + w / 10 + 16 <= width {
                break;
            }
            size -= 1.0;
        }
        let root = if self.title.is_empty() {
            root.clone()
        } else {
            root.titled(&self.title, (FONT, size)).map_err(draw_error)?
        };
        let lines = self.lines();
        let legend_w = self.legend_width(&root, width)?;
        let (plot, legend) = root.split_horizontally(width.saturating_sub(legend_w));
        let range = |pick: fn(&(f64, f64)) -> f64| {
            let vals = lines.iter().flatten().map(pick);
            vals.fold(None, |acc: Option<(f64, f64)>, v| match acc {
                None => Some((v, v)),
                Some((lo, hi)) => Some((v.min(lo), v.max(hi))),
            })
        };
        let x_ticks = ((width - legend_w) / 90).max(2) as usize;
        let y_ticks = (height / 50).max(2) as usize;
        let x = axis(range(|p| p.0), self.log_x, x_ticks);
        let y = axis(range(|p| p.1), self.log_y, y_ticks);
        let ticks = (x_ticks, y_ticks);
        // Log axes take our 1-2-5 ticks; linear ones plotters' own, labelled to their step.
        match (x, y) {
            (Axis::Linear(xr), Axis::Linear(yr)) => self.plot(&plot, xr, yr, ticks, &lines),
            (Axis::Log(xr, xt), Axis::Linear(yr)) => {
                self.plot(&plot, xr.log_scale().with_key_points(xt), yr, ticks, &lines)
            }
            (Axis::Linear(xr), Axis::Log(yr, yt)) => {
                self.plot(&plot, xr, yr.log_scale().with_key_points(yt), ticks, &lines)
            }
            (Axis::Log(xr, xt), Axis::Log(yr, yt)) => self.plot(
                &plot,
                xr.log_scale().with_key_points(xt),
                yr.log_scale().with_key_points(yt),
                ticks,
                &lines,
            ),
        }?;
        self.legend(&legend)
    }

    /// Pixels of the legend strip on the right: the longest label, at most a third of the image.
    fn legend_width(
        &self,
        area: &DrawingArea<BitMapBackend<'_>, Shift>,
        width: u32,
    ) -> Result<u32, PlotError> {
        let mut widest = 0;
        for s in &self.series {
            let (w, _) = area
                .estimate_text_size(&s.label, &TextStyle::from((FONT, 13).into_font()))
                .map_err(draw_error)?;
            widest = widest.max(w);
        }
        Ok(if self.series.is_empty() {
            8
        } else {
            (widest + widest / 10 + 48).min(width / 3)
        })
    }

    /// Axes, grid, labels (about `ticks` of them on each axis) and the lines.
    fn plot<X, Y>(
        &self,
        area: &DrawingArea<BitMapBackend<'_>, Shift>,
        x: X,
        y: Y,
        ticks: (usize, usize),
        lines: &[Vec<(f64, f64)>],
    ) -> Result<(), PlotError>
    where
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let (x_step, y_step) = (tick_step(&x, ticks.0), tick_step(&y, ticks.1));
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(if self.x_label.is_empty() { 24 } else { 44 })
            .y_label_area_size(if self.y_label.is_empty() { 48 } else { 64 })
            .build_cartesian_2d(x, y)
            .map_err(draw_error)?;
        let label = |step: Option<f64>| move |v: &f64| fmt_num(*v, step.unwrap_or(*v));
        let (x_fmt, y_fmt) = (label(x_step), label(y_step));
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .x_labels(ticks.0)
            .y_labels(ticks.1)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .bold_line_style(GRID)
            .max_light_lines(0)
            .draw()
            .map_err(draw_error)?;
        for (i, pts) in lines.iter().enumerate() {
            let colour = series_colour(i);
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)).point_size(3))
                .map_err(draw_error)?;
        }
        Ok(())
    }

    /// The legend: a swatch and the label of each series, top down.
    fn legend(&self, area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError> {
        if self.series.is_empty() {
            return Ok(());
        }
        let style = (FONT, 13).into_font().color(&BLACK);
        for (i, s) in self.series.iter().enumerate() {
            let (c, y) = (series_colour(i), 20 + 20 * i as i32);
            area.draw(&PathElement::new(vec![(4, y), (26, y)], c.stroke_width(2)))
                .map_err(draw_error)?;
            area.draw(&Circle::new((15, y), 3, c.filled()))
                .map_err(draw_error)?;
            // A label wider than the strip (a third of the image at most) is cut at its edge.
            area.draw(&Text::new(s.label.as_str(), (32, y - 8), style.clone()))
                .map_err(draw_error)?;
        }
        Ok(())
    }
}

/// An axis before it becomes a plotters coordinate: its range, and on a log axis its ticks.
enum Axis {
    Linear(RangedCoordf64),
    Log(Range<f64>, Vec<f64>),
}

/// The axis over the data range `range` (None: no data to draw).
///
/// Values are held within 1e-300..1e300 in magnitude and a range to at least a billionth of
/// its size, so that the span of every axis is a normal number: plotters' tick search does not
/// end on an infinite or subnormal span.
fn axis(range: Option<(f64, f64)>, log: bool, max_ticks: usize) -> Axis {
    const LIMIT: f64 = AXIS_LIMIT;
    if log {
        let (lo, hi) = range.unwrap_or((1.0, 10.0));
        let (lo, hi) = (lo.clamp(1.0 / LIMIT, LIMIT), hi.clamp(1.0 / LIMIT, LIMIT));
        let (r, t) = log_axis(lo, hi, max_ticks.max(3));
        Axis::Log(r, t)
    } else {
        let (lo, hi) = range.unwrap_or((0.0, 1.0));
        let (mut lo, mut hi) = (lo.clamp(-LIMIT, LIMIT), hi.clamp(-LIMIT, LIMIT));
        let least = (lo.abs().max(hi.abs()) * 1e-9).max(1.0 / LIMIT);
        if hi - lo < least {
            let mid = lo / 2.0 + hi / 2.0;
            let pad = if mid == 0.0 { 1.0 } else { mid.abs() * 0.1 };
            (lo, hi) = (mid - pad, mid + pad);
        }
        Axis::Linear(linear_axis(lo, hi, max_ticks).0.into())
    }
}

/// The step between the labelled ticks of a linear axis (what its labels' decimals need);
/// `None` on a log axis, whose labels each carry their own precision.
fn tick_step<R: Ranged<ValueType = f64>>(axis: &R, ticks: usize) -> Option<f64> {
    let lo = axis.range().start;
    let linear: RangedCoordf64 = (lo..axis.range().end).into();
    let points = linear.key_points(ticks);
    let step = points
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    // A log axis maps values unevenly: its pixel of `lo + step` is not a step's share.
    let even = (axis.map(&(lo + step), (0, 1000)) - axis.map(&lo, (0, 1000))).abs()
        == (linear.map(&(lo + step), (0, 1000)) - linear.map(&lo, (0, 1000))).abs();
    (step.is_finite() && step > 0.0 && even).then_some(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Decoded {
        w: usize,
        h: usize,
        rgb: Vec<u8>,
    }

    impl Decoded {
        fn at(&self, x: usize, y: usize) -> [u8; 3] {
            let i = 3 * (y * self.w + x);
            [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
        }

        /// Pixels close to `colour` (anti-aliasing blends the edges).
        fn count_near(&self, colour: [u8; 3]) -> usize {
            self.rgb
                .chunks(3)
                .filter(|p| p.iter().zip(colour).all(|(a, b)| a.abs_diff(b) < 24))
                .count()
        }
    }

    fn decode(png_bytes: &[u8]) -> Decoded {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        rgb.truncate(info.buffer_size());
        Decoded {
            w: info.width as usize,
            h: info.height as usize,
            rgb,
        }
    }

    fn one_line() -> Chart {
        Chart {
            title: "Score vs budget".into(),
            x_label: "budget (tokens)".into(),
            y_label: "score".into(),
            series: vec![Series {
                label: "s3".into(),
                points: vec![(10.0, 3.0), (0.0, 0.0), (5.0, 5.0)],
            }],
            ..Chart::default()
        }
    }

    /// Dark pixels of the top rows (the title's), as (first column, last column, count).
    fn title_ink(chart: &Chart, w: u32) -> (usize, usize, usize) {
        let d = decode(&chart.to_png(w, 300).unwrap());
        let mut cols = Vec::new();
        for y in 0..30 {
            for x in 0..d.w {
                if d.at(x, y).iter().all(|&c| c < 100) {
                    cols.push(x);
                }
            }
        }
        let (lo, hi) = (cols.iter().min(), cols.iter().max());
        (*lo.unwrap(), *hi.unwrap(), cols.len())
    }

    #[test]
    fn a_long_title_shrinks_to_fit_the_image() {
        let mut chart = one_line();
        chart.title = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf: peak RSS vs document length".into();
        let narrow = title_ink(&chart, 600);
        assert!(
            narrow.0 >= 4 && narrow.1 < 600 - 3,
            "inside the image: {narrow:?}"
        );
        // In a wide image the same title is drawn larger: more ink.
        let wide = title_ink(&chart, 1400);
        assert!(wide.2 > narrow.2 * 3 / 2, "{wide:?} vs {narrow:?}");
        // A short title is drawn at full size in both.
        assert_eq!(
            title_ink(&one_line(), 600).2,
            title_ink(&one_line(), 1400).2
        );
    }

    #[test]
    fn the_png_has_the_size_asked_for_and_draws_each_series() {
        let mut chart = one_line();
        chart.series.push(Series {
            label: "bm25".into(),
            points: vec![(1.0, 1.0), (10.0, 4.0)],
        });
        let d = decode(&chart.to_png(400, 300).unwrap());
        assert_eq!((d.w, d.h), (400, 300));
        for colour in [[0x1f, 0x77, 0xb4], [0xff, 0x7f, 0x0e]] {
            assert!(d.count_near(colour) > 100, "{colour:?} drawn");
        }
        assert!(d.count_near([0x2c, 0xa0, 0x2c]) == 0, "no third series");
        assert_eq!(d.at(0, 299), [255, 255, 255], "white background");
    }

    #[test]
    fn bad_inputs_give_errors_or_charts_never_panics() {
        let s = |pts: Vec<(f64, f64)>| Series {
            label: "é long label ".repeat(20),
            points: pts,
        };
        let (nan, inf) = (f64::NAN, f64::INFINITY);
        let cases = vec![
            vec![],
            vec![s(vec![])],
            vec![s(vec![(nan, 1.0), (1.0, inf), (-inf, nan)])],
            vec![s(vec![(3.0, 4.0)])],
            vec![s(vec![(2.0, 1.0), (2.0, 5.0), (2.0, 9.0)])],
            vec![s(vec![(0.0, 0.0), (0.0, 0.0)])],
            vec![s(vec![(-1.0, -5.0), (0.0, 0.0), (10.0, 1e-300)])],
            vec![s(vec![
                (f64::MIN, f64::MAX),
                (f64::MAX, f64::MIN),
                (5e-324, 1.0),
            ])],
            vec![s(vec![(1.0, 1.0), (1e300, 1e-300)]); 12],
        ];
        for series in cases {
            for (log_x, log_y) in [(false, false), (true, true), (true, false)] {
                let chart = Chart {
                    title: "t".into(),
                    y_label: "y".into(),
                    log_x,
                    log_y,
                    series: series.clone(),
                    ..Chart::default()
                };
                for (w, h) in [(0, 0), (10, 10), (MIN_SIZE.0, MIN_SIZE.1), (800, 500)] {
                    match chart.to_png(w, h) {
                        Ok(png) => {
                            assert_eq!((decode(&png).w, decode(&png).h), (w as usize, h as usize))
                        }
                        Err(PlotError::TooSmall { .. }) => assert!(w < MIN_SIZE.0),
                        Err(e) => panic!("{e} for {series:?} at {w}x{h}"),
                    }
                }
            }
        }
    }

    #[test]
    fn log_axis_ticks_are_1_2_5_and_cover_the_data() {
        let (r, t) = log_axis(512.0, 2048.0, 10);
        assert!(r.start < 512.0 && r.end > 2048.0);
        assert_eq!(t, vec![500.0, 1000.0, 2000.0]);
        let (_, t) = log_axis(1e3, 1e6, 10);
        assert_eq!(t.first(), Some(&1e3));
        assert!(t.contains(&5e4) && t.contains(&1e6), "{t:?}");
        // Too many 1-2-5 ticks for the room: decades alone.
        let (_, t) = log_axis(1.0, 1e12, 6);
        assert!(t.iter().all(|v| v.log10().fract() == 0.0), "{t:?}");
        // A narrow range gets every multiple.
        let (_, t) = log_axis(3000.0, 4500.0, 10);
        assert!(t.len() >= 3, "{t:?}");
    }

    #[test]
    fn linear_ticks_are_round_and_cover_the_data() {
        let (r, t, step) = linear_axis(0.13, 0.87, 8);
        assert!(r.start <= 0.13 && r.end >= 0.87);
        assert_eq!(step, 0.1);
        let labels: Vec<_> = t.iter().map(|v| fmt_num(*v, step)).collect();
        let want: Vec<_> = (1..=9).map(|i| format!("0.{i}")).collect();
        assert_eq!(labels, want);
        let (r, _, _) = linear_axis(7.0, 7.0, 5);
        assert!(r.start < 7.0 && r.end > 7.0);
    }

    #[test]
    fn numbers_are_formatted_compactly() {
        let cases = [
            (1e4, 1e4, "10k"),
            (1e6, 1e6, "1M"),
            (2.5e9, 5e8, "2.5G"),
            (1500.0, 500.0, "1.5k"),
            (0.05, 0.05, "0.05"),
            (0.3000000000000001, 0.1, "0.3"),
            (-20.0, 10.0, "-20"),
            (0.0, 1.0, "0"),
            (1e-5, 1e-5, "1e-5"),
            (3e15, 3e15, "3e15"),
        ];
        for (v, step, want) in cases {
            assert_eq!(fmt_num(v, step), want, "{v} step {step}");
        }
    }

    #[test]
    fn save_png_writes_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let chart = one_line();
        chart.save_png(&path, 300, 200).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            chart.to_png(300, 200).unwrap()
        );
        let e = chart
            .save_png(&dir.path().join("no/such/dir.png"), 300, 200)
            .unwrap_err();
        assert!(e.to_string().contains("no/such/dir.png"), "{e}");
    }
}
