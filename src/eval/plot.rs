//! Tiny line charts written as PNG files, for evaluation reports (score vs budget, peak memory
//! vs document length, latency vs collection size).
//!
//! Self-contained: its own rasteriser, an embedded 5x7 bitmap font and a palette PNG encoder
//! (zlib through `flate2`, chunk CRCs through `flate2::Crc`). No anti-aliasing.

use std::io::Write;

/// One line of a chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Data points `(x, y)`, joined in order of x. Non-finite points, and non-positive values
    /// on a log axis, are skipped.
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
    /// Title, drawn at double size above the plot.
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

const WHITE: u8 = 0;
const BLACK: u8 = 1;
const GRID: u8 = 2;
const FIRST_SERIES: u8 = 3;
const PALETTE: [[u8; 3]; 11] = [
    [0xff, 0xff, 0xff],
    [0x00, 0x00, 0x00],
    [0xe4, 0xe4, 0xe4],
    [0x1f, 0x77, 0xb4],
    [0xff, 0x7f, 0x0e],
    [0x2c, 0xa0, 0x2c],
    [0xd6, 0x27, 0x28],
    [0x94, 0x67, 0xbd],
    [0x8c, 0x56, 0x4b],
    [0xe3, 0x77, 0xc2],
    [0x17, 0xbe, 0xcf],
];

fn series_colour(i: usize) -> u8 {
    FIRST_SERIES + (i % (PALETTE.len() - FIRST_SERIES as usize)) as u8
}

/// 5x7 glyphs of ASCII 32..=126: five columns each, bit 0 the top row, bit 7 a descender row.
#[rustfmt::skip]
const FONT: [[u8; 5]; 95] = [
    [0x00,0x00,0x00,0x00,0x00], [0x00,0x00,0x5f,0x00,0x00], [0x00,0x07,0x00,0x07,0x00], // space ! "
    [0x14,0x7f,0x14,0x7f,0x14], [0x24,0x2a,0x7f,0x2a,0x12], [0x23,0x13,0x08,0x64,0x62], // # $ %
    [0x36,0x49,0x55,0x22,0x50], [0x00,0x05,0x03,0x00,0x00], [0x00,0x1c,0x22,0x41,0x00], // & ' (
    [0x00,0x41,0x22,0x1c,0x00], [0x14,0x08,0x3e,0x08,0x14], [0x08,0x08,0x3e,0x08,0x08], // ) * +
    [0x00,0x50,0x30,0x00,0x00], [0x08,0x08,0x08,0x08,0x08], [0x00,0x60,0x60,0x00,0x00], // , - .
    [0x20,0x10,0x08,0x04,0x02], [0x3e,0x51,0x49,0x45,0x3e], [0x00,0x42,0x7f,0x40,0x00], // / 0 1
    [0x42,0x61,0x51,0x49,0x46], [0x21,0x41,0x45,0x4b,0x31], [0x18,0x14,0x12,0x7f,0x10], // 2 3 4
    [0x27,0x45,0x45,0x45,0x39], [0x3c,0x4a,0x49,0x49,0x30], [0x01,0x71,0x09,0x05,0x03], // 5 6 7
    [0x36,0x49,0x49,0x49,0x36], [0x06,0x49,0x49,0x29,0x1e], [0x00,0x36,0x36,0x00,0x00], // 8 9 :
    [0x00,0x56,0x36,0x00,0x00], [0x08,0x14,0x22,0x41,0x00], [0x14,0x14,0x14,0x14,0x14], // ; < =
    [0x00,0x41,0x22,0x14,0x08], [0x02,0x01,0x51,0x09,0x06], [0x32,0x49,0x79,0x41,0x3e], // > ? @
    [0x7e,0x11,0x11,0x11,0x7e], [0x7f,0x49,0x49,0x49,0x36], [0x3e,0x41,0x41,0x41,0x22], // A B C
    [0x7f,0x41,0x41,0x22,0x1c], [0x7f,0x49,0x49,0x49,0x41], [0x7f,0x09,0x09,0x09,0x01], // D E F
    [0x3e,0x41,0x49,0x49,0x7a], [0x7f,0x08,0x08,0x08,0x7f], [0x00,0x41,0x7f,0x41,0x00], // G H I
    [0x20,0x40,0x41,0x3f,0x01], [0x7f,0x08,0x14,0x22,0x41], [0x7f,0x40,0x40,0x40,0x40], // J K L
    [0x7f,0x02,0x0c,0x02,0x7f], [0x7f,0x04,0x08,0x10,0x7f], [0x3e,0x41,0x41,0x41,0x3e], // M N O
    [0x7f,0x09,0x09,0x09,0x06], [0x3e,0x41,0x51,0x21,0x5e], [0x7f,0x09,0x19,0x29,0x46], // P Q R
    [0x46,0x49,0x49,0x49,0x31], [0x01,0x01,0x7f,0x01,0x01], [0x3f,0x40,0x40,0x40,0x3f], // S T U
    [0x1f,0x20,0x40,0x20,0x1f], [0x3f,0x40,0x38,0x40,0x3f], [0x63,0x14,0x08,0x14,0x63], // V W X
    [0x07,0x08,0x70,0x08,0x07], [0x61,0x51,0x49,0x45,0x43], [0x00,0x7f,0x41,0x41,0x00], // Y Z [
    [0x02,0x04,0x08,0x10,0x20], [0x00,0x41,0x41,0x7f,0x00], [0x04,0x02,0x01,0x02,0x04], // \ ] ^
    [0x40,0x40,0x40,0x40,0x40], [0x00,0x01,0x02,0x04,0x00], [0x20,0x54,0x54,0x54,0x78], // _ ` a
    [0x7f,0x48,0x44,0x44,0x38], [0x38,0x44,0x44,0x44,0x20], [0x38,0x44,0x44,0x48,0x7f], // b c d
    [0x38,0x54,0x54,0x54,0x18], [0x08,0x7e,0x09,0x01,0x02], [0x18,0xa4,0xa4,0xa4,0x7c], // e f g
    [0x7f,0x08,0x04,0x04,0x78], [0x00,0x44,0x7d,0x40,0x00], [0x40,0x80,0x84,0x7d,0x00], // h i j
    [0x7f,0x10,0x28,0x44,0x00], [0x00,0x41,0x7f,0x40,0x00], [0x7c,0x04,0x18,0x04,0x78], // k l m
    [0x7c,0x08,0x04,0x04,0x78], [0x38,0x44,0x44,0x44,0x38], [0xfc,0x24,0x24,0x24,0x18], // n o p
    [0x18,0x24,0x24,0x24,0xfc], [0x7c,0x08,0x04,0x04,0x08], [0x48,0x54,0x54,0x54,0x20], // q r s
    [0x04,0x3f,0x44,0x40,0x20], [0x3c,0x40,0x40,0x20,0x7c], [0x1c,0x20,0x40,0x20,0x1c], // t u v
    [0x3c,0x40,0x30,0x40,0x3c], [0x44,0x28,0x10,0x28,0x44], [0x1c,0xa0,0xa0,0xa0,0x7c], // w x y
    [0x44,0x64,0x54,0x4c,0x44], [0x00,0x08,0x36,0x41,0x00], [0x00,0x00,0x7f,0x00,0x00], // z { |
    [0x00,0x41,0x36,0x08,0x00], [0x08,0x04,0x08,0x10,0x08], // } ~
];

/// Drawn for characters outside ASCII 32..=126.
const BOX: [u8; 5] = [0x7f, 0x41, 0x41, 0x41, 0x7f];

fn glyph(c: char) -> [u8; 5] {
    match c as u32 {
        i @ 32..=126 => FONT[(i - 32) as usize],
        _ => BOX,
    }
}

/// Width in pixels of `s` drawn at `scale` (6 px advance per char at scale 1).
fn text_w(s: &str, scale: i64) -> i64 {
    (s.chars().count() as i64 * 6 - 1).max(0) * scale
}

/// Inclusive pixel rectangle.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

fn rect(x0: i64, y0: i64, x1: i64, y1: i64) -> Rect {
    Rect { x0, y0, x1, y1 }
}

impl Rect {
    fn grow(self, d: i64) -> Rect {
        rect(self.x0 - d, self.y0 - d, self.x1 + d, self.y1 + d)
    }
    fn contains(&self, x: i64, y: i64) -> bool {
        (self.x0..=self.x1).contains(&x) && (self.y0..=self.y1).contains(&y)
    }
}

/// Palette-indexed raster.
struct Canvas {
    w: i64,
    h: i64,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: i64, h: i64) -> Canvas {
        let px = vec![WHITE; (w * h) as usize];
        Canvas { w, h, px }
    }

    fn set(&mut self, x: i64, y: i64, c: u8) {
        if (0..self.w).contains(&x) && (0..self.h).contains(&y) {
            self.px[(y * self.w + x) as usize] = c;
        }
    }

    /// Fills `w` x `h` pixels from `(x, y)`, cut to the canvas.
    fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: u8) {
        for yy in y.max(0)..(y + h).min(self.h) {
            for xx in x.max(0)..(x + w).min(self.w) {
                self.px[(yy * self.w + xx) as usize] = c;
            }
        }
    }

    fn outline(&mut self, r: Rect, c: u8) {
        self.fill(r.x0, r.y0, r.x1 - r.x0 + 1, 1, c);
        self.fill(r.x0, r.y1, r.x1 - r.x0 + 1, 1, c);
        self.fill(r.x0, r.y0, 1, r.y1 - r.y0 + 1, c);
        self.fill(r.x1, r.y0, 1, r.y1 - r.y0 + 1, c);
    }

    /// Horizontal text with its top-left corner at `(x, y)`.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: u8) {
        for (i, ch) in s.chars().enumerate() {
            let ox = x + i as i64 * 6 * scale;
            for (col, bits) in glyph(ch).iter().enumerate() {
                for row in 0..8 {
                    if (bits >> row) & 1 == 1 {
                        self.fill(ox + col as i64 * scale, y + row * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    /// Text turned 90 degrees anticlockwise, reading upwards from `(x, y)`; glyph tops face left.
    fn text_up(&mut self, x: i64, y: i64, s: &str, c: u8) {
        for (i, ch) in s.chars().enumerate() {
            for (col, bits) in glyph(ch).iter().enumerate() {
                for row in 0..8 {
                    if (bits >> row) & 1 == 1 {
                        self.set(x + row, y - (i as i64 * 6 + col as i64), c);
                    }
                }
            }
        }
    }

    /// A filled square of side `2 * r + 1` centred on `(x, y)`, cut to `clip`; none if the
    /// centre lies outside `clip`.
    fn square(&mut self, x: i64, y: i64, r: i64, clip: Rect, c: u8) {
        if !clip.contains(x, y) {
            return;
        }
        for yy in y - r..=y + r {
            for xx in x - r..=x + r {
                if clip.contains(xx, yy) {
                    self.set(xx, yy, c);
                }
            }
        }
    }

    /// A 2-px line from `a` to `b`, cut to `clip`.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), clip: Rect, c: u8) {
        let Some((a, b)) = clip_segment(a, b, clip) else {
            return;
        };
        let (mut x, mut y) = (a.0.round() as i64, a.1.round() as i64);
        let (x1, y1) = (b.0.round() as i64, b.1.round() as i64);
        let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
        let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                if clip.contains(x + ox, y + oy) {
                    self.set(x + ox, y + oy, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
}

/// Liang-Barsky: the part of segment `a`-`b` inside `r`, if any.
fn clip_segment(a: (f64, f64), b: (f64, f64), r: Rect) -> Option<((f64, f64), (f64, f64))> {
    if ![a.0, a.1, b.0, b.1].iter().all(|v| v.is_finite()) {
        return None;
    }
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - r.x0 as f64),
        (dx, r.x1 as f64 - a.0),
        (-dy, a.1 - r.y0 as f64),
        (dy, r.y1 as f64 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else if p < 0.0 {
            t0 = t0.max(q / p);
        } else {
            t1 = t1.min(q / p);
        }
    }
    let at = |t: f64| (a.0 + t * dx, a.1 + t * dy);
    (t0 <= t1).then(|| (at(t0), at(t1)))
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

/// A tick at `pos` (in axis space: log10 of the value on log axes), labelled or minor.
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    pos: f64,
    label: Option<String>,
}

/// One axis: its span `lo..hi` in axis space and its ticks.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    log: bool,
    lo: f64,
    hi: f64,
    ticks: Vec<Tick>,
}

impl Axis {
    /// An axis over the data range `range` (None: no data), `len` pixels long.
    fn new(range: Option<(f64, f64)>, log: bool, len: f64, horizontal: bool) -> Axis {
        let (lo, hi) = range.unwrap_or(if log { (1.0, 10.0) } else { (0.0, 1.0) });
        let (lo, hi, ticks) = match log {
            true => log_ticks(lo, hi, len, horizontal),
            false => linear_ticks(lo, hi, len, horizontal),
        };
        Axis { log, lo, hi, ticks }
    }

    /// Where value `v` falls: 0 at `lo`, 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let t = if self.log { v.log10() } else { v };
        (t - self.lo) / (self.hi - self.lo)
    }

    /// Pixel of tick `t` on an axis drawn from pixel `from` (at `lo`) to `to` (at `hi`).
    fn tick_px(&self, t: &Tick, from: i64, to: i64) -> Option<i64> {
        let f = (t.pos - self.lo) / (self.hi - self.lo);
        let px = from + (f * (to - from) as f64).round() as i64;
        (-1e-9..=1.0 + 1e-9).contains(&f).then_some(px)
    }
}

/// Round ticks (1, 2 or 5 times a power of 10), as many as fit in `len` pixels, and the range
/// widened to whole steps.
fn linear_ticks(lo: f64, hi: f64, len: f64, horizontal: bool) -> (f64, f64, Vec<Tick>) {
    let (mut lo, mut hi) = (lo, hi);
    if hi <= lo {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo, hi) = (lo - pad, hi + pad);
        if hi <= lo {
            (lo, hi) = (lo - 1.0, hi + 1.0);
        }
    }
    let mut n = (len / if horizontal { 80.0 } else { 45.0 }).clamp(2.0, 200.0) as i64;
    loop {
        let raw = (hi - lo) / n as f64;
        let mag = 10f64.powf(raw.log10().floor());
        let nice = [1.0, 2.0, 5.0].into_iter().find(|m| raw / mag <= *m);
        let step = mag * nice.unwrap_or(10.0);
        let (a, b) = ((lo / step).floor(), (hi / step).ceil());
        let (nlo, nhi) = (a * step, b * step);
        if !(step > 0.0 && nlo.is_finite() && nhi.is_finite() && b > a && b - a <= 1000.0) {
            return (lo, hi, Vec::new());
        }
        let ticks: Vec<Tick> = (a as i64..=b as i64)
            .map(|k| k as f64 * step)
            .map(|pos| Tick {
                pos,
                label: Some(fmt_num(pos, step)),
            })
            .collect();
        let labels = ticks.iter().flat_map(|t| &t.label);
        let widest = labels
            .map(|l| if horizontal { text_w(l, 1) } else { 8 })
            .max();
        let need = widest.unwrap_or(0) + if horizontal { 14 } else { 12 };
        if n <= 1 || len / (b - a) >= need as f64 {
            return (nlo, nhi, ticks);
        }
        n -= 1;
    }
}

/// Ticks over whole decades: labels at 1-2-5 multiples, every decade or every k-th decade,
/// whatever fits in `len` pixels; unlabelled minor ticks where there is room.
fn log_ticks(lo: f64, hi: f64, len: f64, horizontal: bool) -> (f64, f64, Vec<Tick>) {
    let (mut a, mut b) = (lo.log10().floor() as i64, hi.log10().ceil() as i64);
    if b <= a {
        (a, b) = (a - 1, b + 1);
    }
    let per_decade = len / (b - a) as f64;
    let need = if horizontal { 45.0 } else { 22.0 };
    let every = (need / per_decade).ceil().max(1.0) as i64;
    let mut ticks = Vec::new();
    for e in a..=b {
        for m in (1..=9).take(if e == b { 1 } else { 9 }) {
            let labelled = match per_decade * 0.3 >= need {
                true => matches!(m, 1 | 2 | 5),
                false => m == 1 && (e - a) % every == 0,
            };
            if labelled || per_decade >= 30.0 || (m == 1 && b - a <= 100) {
                let v = m as f64 * 10f64.powi(e as i32);
                let labelled = labelled && v.is_normal();
                let (pos, label) = (
                    e as f64 + (m as f64).log10(),
                    labelled.then(|| fmt_num(v, v)),
                );
                ticks.push(Tick { pos, label });
            }
        }
    }
    (a as f64, b as f64, ticks)
}

/// Where everything goes, for one image size.
struct Frame {
    plot: Rect,
    x: Axis,
    y: Axis,
    legend: usize,
}

impl Frame {
    /// Pixel position of data point `p`.
    fn to_px(&self, p: (f64, f64)) -> (f64, f64) {
        let r = self.plot;
        let x = r.x0 as f64 + self.x.frac(p.0) * (r.x1 - r.x0) as f64;
        let y = r.y1 as f64 - self.y.frac(p.1) * (r.y1 - r.y0) as f64;
        (x, y)
    }
}

impl Chart {
    fn valid(&self, p: (f64, f64)) -> bool {
        let pos = (!self.log_x || p.0 > 0.0) && (!self.log_y || p.1 > 0.0);
        p.0.is_finite() && p.1.is_finite() && pos
    }

    fn range(&self, pick: fn((f64, f64)) -> f64) -> Option<(f64, f64)> {
        let points = self.series.iter().flat_map(|s| &s.points);
        let vals = points.filter(|p| self.valid(**p)).map(|p| pick(*p));
        vals.fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((v.min(lo), v.max(hi))),
        })
    }

    fn frame(&self, w: i64, h: i64) -> Frame {
        let top = if self.title.is_empty() { 12 } else { 34 };
        let bottom = 17 + if self.x_label.is_empty() { 8 } else { 25 };
        let longest = self.series.iter().map(|s| s.label.chars().count()).max();
        let legend = longest.unwrap_or(0).min(((w / 4 - 36) / 6).max(4) as usize);
        let right = if self.series.is_empty() {
            16
        } else {
            legend as i64 * 6 + 56
        };
        let plot_h = (h - top - bottom).max(1);
        let y = Axis::new(self.range(|p| p.1), self.log_y, plot_h as f64, false);
        let labels = y.ticks.iter().flat_map(|t| &t.label);
        let widest = labels.map(|l| text_w(l, 1)).max().unwrap_or(0);
        let left = 18 + widest + if self.y_label.is_empty() { 0 } else { 15 };
        let plot_w = (w - left - right).max(1);
        let x = Axis::new(self.range(|p| p.0), self.log_x, plot_w as f64, true);
        let plot = rect(left, top, left + plot_w, top + plot_h);
        Frame { plot, x, y, legend }
    }

    fn render(&self, w: u32, h: u32) -> Canvas {
        let (w, h) = (i64::from(w.max(1)), i64::from(h.max(1)));
        let (mut cv, f) = (Canvas::new(w, h), self.frame(w, h));
        let r = f.plot;
        for t in &f.x.ticks {
            let Some(x) = f.x.tick_px(t, r.x0, r.x1) else {
                continue;
            };
            match &t.label {
                Some(l) => {
                    cv.fill(x, r.y0, 1, r.y1 - r.y0, GRID);
                    cv.fill(x, r.y1 + 1, 1, 5, BLACK);
                    cv.text(x - text_w(l, 1) / 2, r.y1 + 9, l, 1, BLACK);
                }
                None => cv.fill(x, r.y1 + 1, 1, 3, BLACK),
            }
        }
        for t in &f.y.ticks {
            let Some(y) = f.y.tick_px(t, r.y1, r.y0) else {
                continue;
            };
            match &t.label {
                Some(l) => {
                    cv.fill(r.x0, y, r.x1 - r.x0, 1, GRID);
                    cv.fill(r.x0 - 5, y, 5, 1, BLACK);
                    cv.text(r.x0 - 8 - text_w(l, 1), y - 3, l, 1, BLACK);
                }
                None => cv.fill(r.x0 - 3, y, 3, 1, BLACK),
            }
        }
        cv.outline(r, BLACK);
        let clip = r.grow(3);
        for (i, s) in self.series.iter().enumerate() {
            let c = series_colour(i);
            let mut data: Vec<_> = s.points.iter().filter(|p| self.valid(**p)).collect();
            data.sort_by(|a, b| a.0.total_cmp(&b.0));
            let pts: Vec<_> = data.into_iter().map(|p| f.to_px(*p)).collect();
            for pair in pts.windows(2) {
                cv.line(pair[0], pair[1], clip, c);
            }
            for &(x, y) in &pts {
                cv.square(x.round() as i64, y.round() as i64, 2, clip, c);
            }
        }
        if !self.series.is_empty() {
            let (lx, n) = (r.x1 + 12, self.series.len() as i64);
            let lbox = rect(lx, r.y0, lx + f.legend as i64 * 6 + 36, r.y0 + 7 + n * 14);
            cv.outline(lbox, BLACK);
            for (i, s) in self.series.iter().enumerate() {
                let (c, y) = (series_colour(i), r.y0 + 7 + i as i64 * 14);
                cv.fill(lx + 6, y + 3, 19, 2, c);
                cv.square(lx + 15, y + 3, 2, lbox, c);
                let label: String = s.label.chars().take(f.legend).collect();
                cv.text(lx + 31, y, &label, 1, BLACK);
            }
        }
        let (mid_x, xl, yl) = ((r.x0 + r.x1) / 2, &self.x_label, &self.y_label);
        // The title at double size where it fits the image, else at single size.
        let scale = if text_w(&self.title, 2) <= w - 8 {
            2
        } else {
            1
        };
        let title_w = text_w(&self.title, scale);
        let title_x = (mid_x - title_w / 2).min(w - 4 - title_w).max(4);
        cv.text(title_x, 10 + 4 * (2 - scale), &self.title, scale, BLACK);
        cv.text(mid_x - text_w(xl, 1) / 2, r.y1 + 26, xl, 1, BLACK);
        cv.text_up(8, (r.y0 + r.y1) / 2 + text_w(yl, 1) / 2, yl, BLACK);
        cv
    }

    /// Renders the chart as a PNG image of `width` x `height` pixels (8-bit palette; a zero
    /// size is taken as 1).
    pub fn to_png(&self, width: u32, height: u32) -> Vec<u8> {
        encode_png(&self.render(width, height))
    }

    /// Writes the PNG to `path`.
    pub fn save_png(&self, path: &std::path::Path, width: u32, height: u32) -> std::io::Result<()> {
        std::fs::write(path, self.to_png(width, height))
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// PNG: colour type 3 (palette), 8-bit indices, filter 0 on every row.
fn encode_png(cv: &Canvas) -> Vec<u8> {
    let mut raw = Vec::with_capacity(cv.px.len() + cv.h as usize);
    for row in cv.px.chunks(cv.w as usize) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).expect("zlib into a Vec cannot fail");
    let idat = z.finish().expect("zlib into a Vec cannot fail");
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&(cv.w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(cv.h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"PLTE", PALETTE.as_flattened());
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Bitwise CRC-32 (IEEE), independent of the encoder's.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg());
            }
        }
        !c
    }

    struct Decoded {
        kinds: Vec<String>,
        w: usize,
        h: usize,
        palette: Vec<[u8; 3]>,
        px: Vec<u8>,
    }

    /// Parses the PNG, checks signature, CRCs, IHDR and the inflated size; panics on any fault.
    fn decode(png: &[u8]) -> Decoded {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let (mut at, mut kinds, mut idat, mut ihdr, mut palette) =
            (8, vec![], vec![], vec![], vec![]);
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let body = &png[at + 4..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(body), "bad CRC");
            let (kind, data) = (String::from_utf8(body[..4].to_vec()).unwrap(), &body[4..]);
            match kind.as_str() {
                "IHDR" => ihdr = data.to_vec(),
                "PLTE" => palette = data.chunks(3).map(|c| [c[0], c[1], c[2]]).collect(),
                "IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            kinds.push(kind);
            at += 12 + len;
        }
        assert_eq!(at, png.len());
        assert_eq!(ihdr.len(), 13);
        let w = u32::from_be_bytes(ihdr[0..4].try_into().unwrap()) as usize;
        let h = u32::from_be_bytes(ihdr[4..8].try_into().unwrap()) as usize;
        assert_eq!(&ihdr[8..], &[8, 3, 0, 0, 0]);
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), h * (1 + w));
        let mut px = Vec::with_capacity(w * h);
        for row in raw.chunks(w + 1) {
            assert_eq!(row[0], 0, "filter type");
            px.extend_from_slice(&row[1..]);
        }
        assert!(px.iter().all(|&i| (i as usize) < palette.len()));
        Decoded {
            kinds,
            w,
            h,
            palette,
            px,
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

    /// Black pixels of the title's rows (above the top tick label), as (first column, last
    /// column, count).
    fn title_ink(chart: &Chart, w: u32) -> (usize, usize, usize) {
        let d = decode(&chart.to_png(w, 300));
        let mut cols = Vec::new();
        for y in 0..26 {
            for x in 0..d.w {
                if d.palette[d.px[y * d.w + x] as usize] == [0, 0, 0] {
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
        let narrow = title_ink(&chart, 800);
        assert!(
            narrow.0 >= 4 && narrow.1 < 800 - 3,
            "inside the image: {narrow:?}"
        );
        // At double size it needs 826 px: in a wide image it is drawn at double size, with
        // four times the ink of the single-size title.
        let wide = title_ink(&chart, 1200);
        assert_eq!(wide.2, 4 * narrow.2, "{wide:?} vs {narrow:?}");
        // A short title stays at double size.
        let short = title_ink(&one_line(), 800);
        assert!(short.1 - short.0 > 2 * 6 * 14, "{short:?}");
    }

    #[test]
    fn png_chunks_are_valid() {
        let d = decode(&one_line().to_png(320, 200));
        assert_eq!(d.kinds, ["IHDR", "PLTE", "IDAT", "IEND"]);
        assert_eq!((d.w, d.h), (320, 200));
        assert_eq!(d.palette.len(), PALETTE.len());
        assert_eq!(d.palette[0], [0xff, 0xff, 0xff]);
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }

    #[test]
    fn series_pixels_lie_on_the_line() {
        let chart = one_line();
        let (w, h) = (400, 300);
        let d = decode(&chart.to_png(w, h));
        let f = chart.frame(i64::from(w), i64::from(h));
        let at = |p: (f64, f64)| {
            d.palette[d.px[p.1.round() as usize * d.w + p.0.round() as usize] as usize]
        };
        let blue = [0x1f, 0x77, 0xb4];
        let pts: Vec<_> = chart.series[0].points.iter().map(|p| f.to_px(*p)).collect();
        for p in &pts {
            assert_eq!(at(*p), blue, "marker at {p:?}");
        }
        let (pts, end) = ([pts[1], pts[2], pts[0]], pts[0]);
        assert_eq!(at((end.0 + 2.0, end.1 - 2.0)), blue, "marker corner");
        assert_eq!(at((end.0 + 2.0, end.1 + 2.0)), blue, "marker corner");
        assert_ne!(at((end.0 + 4.0, end.1)), blue, "past the marker");
        assert_ne!(
            at(f.to_px((5.0, 1.5))),
            blue,
            "points are joined in order of x"
        );
        let mid = ((pts[0].0 + pts[1].0) / 2.0, (pts[0].1 + pts[1].1) / 2.0);
        assert_eq!(at(mid), blue, "line midpoint");
        let off = (mid.0, (mid.1 + f.plot.y0 as f64) / 2.0 - 3.0);
        assert_ne!(at(off), blue, "above the line");
        let (x0, y1) = (f.plot.x0 as usize, f.plot.y1 as usize);
        assert_eq!(
            d.palette[d.px[y1 * d.w + x0 + 50] as usize],
            [0, 0, 0],
            "x axis"
        );
    }

    #[test]
    fn bad_inputs_do_not_panic() {
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
                for (w, h) in [(0, 0), (1, 1), (10, 10), (800, 500)] {
                    let d = decode(&chart.to_png(w, h));
                    assert_eq!((d.w, d.h), (w.max(1) as usize, h.max(1) as usize));
                }
            }
        }
    }

    #[test]
    fn no_finite_points_draws_axes_only() {
        let chart = Chart {
            series: vec![Series {
                label: "x".into(),
                points: vec![(f64::NAN, 1.0)],
            }],
            ..Chart::default()
        };
        let d = decode(&chart.to_png(300, 200));
        let r = chart.frame(300, 200).plot;
        let inside = |x: usize, y: usize| r.contains(x as i64, y as i64);
        let mut frame = 0;
        for (i, &c) in d.px.iter().enumerate() {
            if inside(i % d.w, i / d.w) {
                assert!(c < FIRST_SERIES, "series colour in an empty plot");
                frame += usize::from(c == BLACK);
            }
        }
        assert!(frame > 400, "frame drawn");
        assert!(d.px.contains(&FIRST_SERIES), "legend swatch");
    }

    #[test]
    fn log_axis_labels_are_compact_powers() {
        let axis = Axis::new(Some((1e3, 1e6)), true, 600.0, true);
        let labels: Vec<_> = axis.ticks.iter().flat_map(|t| t.label.clone()).collect();
        for want in ["1k", "2k", "5k", "10k", "100k", "1M"] {
            assert!(
                labels.iter().any(|l| l == want),
                "{want} missing from {labels:?}"
            );
        }
        assert_eq!((axis.lo, axis.hi), (3.0, 6.0));
        let narrow = Axis::new(Some((1.0, 1e12)), true, 200.0, true);
        assert!(narrow.ticks.iter().filter(|t| t.label.is_some()).count() <= 5);
    }

    #[test]
    fn linear_ticks_are_round_and_cover_the_data() {
        let axis = Axis::new(Some((0.13, 0.87)), false, 400.0, false);
        assert!(axis.lo <= 0.13 && axis.hi >= 0.87);
        let labels: Vec<_> = axis.ticks.iter().flat_map(|t| t.label.clone()).collect();
        let want: Vec<_> = (1..=9).map(|i| format!("0.{i}")).collect();
        assert_eq!(labels, want);
        let flat = Axis::new(Some((7.0, 7.0)), false, 400.0, true);
        assert!(flat.lo < 7.0 && flat.hi > 7.0);
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
    fn text_draws_glyphs_and_boxes() {
        let mut cv = Canvas::new(20, 10);
        cv.text(0, 0, "\u{e9}", 1, BLACK);
        let lit: Vec<_> = (0..7)
            .map(|y| (0..5).filter(|&x| cv.px[y * 20 + x] == BLACK).count())
            .collect();
        assert_eq!(lit, [5, 2, 2, 2, 2, 2, 5]);
        let mut cv = Canvas::new(20, 10);
        cv.text(0, 0, "1", 1, BLACK);
        assert_eq!(cv.px.iter().filter(|&&c| c == BLACK).count(), 10);
    }

    #[test]
    fn save_png_writes_the_same_bytes() {
        let path = std::env::temp_dir().join(format!("plot-test-{}.png", std::process::id()));
        let chart = one_line();
        chart.save_png(&path, 200, 150).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(bytes, chart.to_png(200, 150));
    }
}
