//! Inline SVG charts for the HTML report, written by hand so the page needs no script,
//! font or stylesheet from anywhere: horizontal bars (segments, histograms, the funnel),
//! the portfolio two-by-two and a scatter. Every mark carries a `<title>` tooltip with
//! its numbers; every chart has a title and axis labels. Empty data gives a "no data"
//! note instead of an empty chart.

use std::fmt::Write as _;

use crate::docs::esc;

/// Width of every chart in pixels.
const WIDTH: f64 = 720.0;
/// Bar fill.
pub const BAR_FILL: &str = "#2b6cb0";
/// The note shown instead of a chart without data.
pub const NO_DATA: &str = "<p class=\"nodata\">no data</p>";

/// One bar: its label, its length, and the text shown beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Category or bucket.
    pub label: String,
    /// Length (a count).
    pub value: f64,
    /// Text after the bar and in its tooltip (e.g. "1,204 customers, CLV 52,310.00").
    pub detail: String,
}

/// `12345` as `12,345`.
pub fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A float for people: thousands separated with 2 decimals from 1 up, 4 significant
/// digits below 1, `-` for NaN or infinity.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let sign = if x < 0.0 { "-" } else { "" };
    let a = x.abs();
    if a >= 1.0 {
        let cents = (a * 100.0).round() as u64;
        format!("{sign}{}.{:02}", int(cents / 100), cents % 100)
    } else if a == 0.0 {
        "0".into()
    } else {
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 12) as usize;
        format!("{sign}{a:.decimals$}")
    }
}

/// [`num`] without trailing zeros (`1.00` as `1`, `0.50` as `0.5`), for edges and ticks.
pub fn short(x: f64) -> String {
    let s = num(x);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Bucket edges for a skewed non-negative quantity such as CLV: 0, then 1-2-5 steps per
/// decade from the decade of the smallest positive value (at most three decades below
/// the largest) up to the first edge above the largest. A negative minimum becomes the first edge. Empty data gives no edges; data
/// that is all one value gives the two edges around it.
pub fn log_edges(values: &[f64]) -> Vec<f64> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let (Some(min), Some(max)) = (
        finite.iter().copied().reduce(f64::min),
        finite.iter().copied().reduce(f64::max),
    ) else {
        return Vec::new();
    };
    let mut edges = vec![min.min(0.0)];
    let smallest = finite.iter().copied().filter(|v| *v > 0.0).reduce(f64::min);
    if let Some(smallest) = smallest {
        let mut exponent = smallest.max(max * 1e-3).log10().floor() as i32;
        'outer: loop {
            let decade = 10f64.powi(exponent);
            for step in [1.0, 2.0, 5.0] {
                let edge = step * decade;
                if edge > edges[edges.len() - 1] {
                    edges.push(edge);
                }
                if edge > max {
                    break 'outer;
                }
            }
            exponent += 1;
        }
    } else {
        edges.push(edges[0] + 1.0);
    }
    edges
}

/// Counts of `values` per bucket `[edges[i], edges[i+1])`, the last bucket closed;
/// values outside the edges (and NaN) are not counted.
pub fn histogram(values: &[f64], edges: &[f64]) -> Vec<u64> {
    let mut counts = vec![0u64; edges.len().saturating_sub(1)];
    let last = counts.len();
    for &v in values {
        let i = edges.partition_point(|&e| e <= v);
        if i >= 1 && i <= last {
            counts[i - 1] += 1;
        } else if i == last + 1 && last > 0 && v == edges[last] {
            counts[last - 1] += 1;
        }
    }
    counts
}

/// Labels `[a, b)` of the buckets between `edges` (the last `[a, b]`).
pub fn bucket_labels(edges: &[f64]) -> Vec<String> {
    let n = edges.len().saturating_sub(1);
    (0..n)
        .map(|i| {
            let close = if i + 1 == n { ']' } else { ')' };
            format!("[{}, {}{close}", short(edges[i]), short(edges[i + 1]))
        })
        .collect()
}

fn open(id: &str, height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"{id}\" class=\"chart\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{}\" y=\"18\" font-size=\"15\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>\n",
        WIDTH / 2.0,
        esc(title)
    )
}

/// Horizontal bars, one row each, scaled to the largest value; `centered` draws them
/// around the middle (a funnel). `y_label` names the categories, `x_label` the length.
pub fn bars(id: &str, title: &str, y_label: &str, x_label: &str, bars: &[Bar], centered: bool) -> String {
    if bars.is_empty() || bars.iter().all(|b| b.value.is_nan() || b.value <= 0.0) {
        return NO_DATA.into();
    }
    let (left, right, row, top) = (190.0, 200.0, 24.0, 44.0);
    let height = top + row * bars.len() as f64 + 40.0;
    let span = WIDTH - left - right;
    let max = bars.iter().map(|b| b.value).fold(0.0, f64::max);
    let mut svg = open(id, height, title);
    for (i, b) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let w = (b.value.max(0.0) / max * span).max(1.0);
        let x = if centered { left + (span - w) / 2.0 } else { left };
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{}\" fill=\"{BAR_FILL}\"><title>{label}: {detail}</title></rect>\
             <text x=\"{}\" y=\"{}\">{detail}</text>",
            left - 6.0,
            y + 15.0,
            row - 6.0,
            left + span + 6.0,
            y + 15.0,
            label = esc(&b.label),
            detail = esc(&b.detail)
        );
    }
    let axis_y = top + row * bars.len() as f64;
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#4a5568\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>\n</svg>\n",
        left + span,
        left + span / 2.0,
        axis_y + 24.0,
        esc(x_label),
        top + (axis_y - top) / 2.0,
        top + (axis_y - top) / 2.0,
        esc(y_label)
    );
    svg
}

/// One cell of the portfolio two-by-two.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Quadrant name.
    pub name: String,
    /// Customers in it.
    pub customers: u64,
    /// Their summed historical value.
    pub historical: f64,
    /// Their summed potential value.
    pub potential: f64,
}

/// The two-by-two grid: `cells` in the order top-left, top-right, bottom-left,
/// bottom-right (low x / high y, high / high, low / low, high / low).
pub fn quadrant(id: &str, title: &str, x_label: &str, y_label: &str, cells: &[Cell; 4]) -> String {
    let (left, top, side) = (60.0, 40.0, 220.0);
    let mut svg = open(id, top + 2.0 * side + 50.0, title);
    for (i, c) in cells.iter().enumerate() {
        let (x, y) = (left + side * (i % 2) as f64, top + side * (i / 2) as f64);
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{side}\" height=\"{side}\" fill=\"#ebf4ff\" stroke=\"#4a5568\">\
             <title>{name}: {n} customers, historical value {h}, potential value {p}</title></rect>\
             <text x=\"{cx}\" y=\"{}\" font-size=\"16\" font-weight=\"bold\" text-anchor=\"middle\">{name}</text>\
             <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{n} customers</text>\
             <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">historical {h}</text>\
             <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">potential {p}</text>",
            y + side / 2.0 - 22.0,
            y + side / 2.0,
            y + side / 2.0 + 18.0,
            y + side / 2.0 + 36.0,
            cx = x + side / 2.0,
            name = esc(&c.name),
            n = int(c.customers),
            h = num(c.historical),
            p = num(c.potential)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} (low | high)</text>\
         <text x=\"30\" y=\"{m}\" transform=\"rotate(-90 30 {m})\" text-anchor=\"middle\">{} (low | high)</text>\n</svg>\n",
        left + side,
        top + 2.0 * side + 30.0,
        esc(x_label),
        esc(y_label),
        m = top + side
    );
    svg
}

/// One scatter point: an id for its tooltip and its two coordinates.
#[derive(Debug, Clone)]
pub struct Point {
    /// Shown in the tooltip (a customer id).
    pub id: String,
    /// Horizontal value.
    pub x: f64,
    /// Vertical value.
    pub y: f64,
}

/// A scatter on `log10(1 + v)` axes (values are skewed and may be 0), with ticks at
/// 0, 1, 10, 100, ... up to the largest value.
pub fn scatter(id: &str, title: &str, x_label: &str, y_label: &str, points: &[Point]) -> String {
    let shown: Vec<&Point> = points.iter().filter(|p| p.x.is_finite() && p.y.is_finite()).collect();
    if shown.is_empty() {
        return NO_DATA.into();
    }
    let (left, top, w, h) = (80.0, 40.0, WIDTH - 110.0, 420.0);
    let scale = |v: f64| v.max(0.0).ln_1p();
    let xmax = shown.iter().map(|p| scale(p.x)).fold(f64::MIN_POSITIVE, f64::max);
    let ymax = shown.iter().map(|p| scale(p.y)).fold(f64::MIN_POSITIVE, f64::max);
    let mut svg = open(id, top + h + 60.0, title);
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#4a5568\"/>"
    );
    let mut tick = 0.0;
    while scale(tick) <= xmax.max(ymax) {
        let (tx, ty) = (left + scale(tick) / xmax * w, top + h - scale(tick) / ymax * h);
        if scale(tick) <= xmax {
            let _ = write!(
                svg,
                "<text x=\"{tx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                top + h + 16.0,
                short(tick)
            );
        }
        if scale(tick) <= ymax {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                left - 6.0,
                ty + 4.0,
                short(tick)
            );
        }
        tick = if tick == 0.0 { 1.0 } else { tick * 10.0 };
    }
    for p in shown {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{BAR_FILL}\" fill-opacity=\"0.5\"><title>{}: {}, {}</title></circle>",
            left + scale(p.x) / xmax * w,
            top + h - scale(p.y) / ymax * h,
            esc(&p.id),
            num(p.x),
            num(p.y)
        );
    }
    let _ = write!(
        svg,
        "\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} (log scale)</text>\
         <text x=\"16\" y=\"{m}\" transform=\"rotate(-90 16 {m})\" text-anchor=\"middle\">{} (log scale)</text>\n</svg>\n",
        left + w / 2.0,
        top + h + 40.0,
        esc(x_label),
        esc(y_label),
        m = top + h / 2.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(int(0), "0");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(num(1234.567), "1,234.57");
        assert_eq!(num(-2.5), "-2.50");
        assert_eq!(num(0.2431), "0.2431");
        assert_eq!(num(0.000123456), "0.0001235");
        assert_eq!(num(f64::NAN), "-");
    }

    #[test]
    fn log_edges_cover_the_data_in_1_2_5_steps() {
        assert_eq!(log_edges(&[0.0, 3.0, 47.0]), vec![0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]);
        assert_eq!(log_edges(&[0.3, 0.9]), vec![0.0, 0.1, 0.2, 0.5, 1.0]);
        assert_eq!(log_edges(&[0.0, 0.0]), vec![0.0, 1.0]);
        assert_eq!(log_edges(&[-5.0, 5.0]), vec![-5.0, 1.0, 2.0, 5.0, 10.0]);
        let tiny = log_edges(&[1e-300, 1.0]);
        assert_eq!(tiny.len(), 12, "0, three decades of three steps, 1, 2: {tiny:?}");
        assert!((tiny[1] - 1e-3).abs() < 1e-15, "{tiny:?}");
        assert!(log_edges(&[]).is_empty());
        let values = [0.0, 0.5, 1.0, 1.5, 20.0, 49.99, 50.0];
        let edges = log_edges(&values);
        let counts = histogram(&values, &edges);
        assert_eq!(
            counts.iter().sum::<u64>(),
            values.len() as u64,
            "every value in a bucket"
        );
        assert_eq!(counts, vec![1, 0, 0, 1, 2, 0, 0, 0, 2, 1]);
    }

    #[test]
    fn histogram_closes_the_last_bucket_and_skips_values_outside() {
        let edges: Vec<f64> = (0..=10).map(|i| i as f64 / 10.0).collect();
        let counts = histogram(&[0.0, 0.05, 0.1, 0.95, 1.0, 1.5, -0.1, f64::NAN], &edges);
        assert_eq!(counts.len(), 10);
        assert_eq!(counts[0], 2);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[9], 2, "1.0 falls in the last, closed bucket");
        assert_eq!(counts.iter().sum::<u64>(), 5);
        assert_eq!(bucket_labels(&[0.0, 0.5, 2.0]), vec!["[0, 0.5)", "[0.5, 2]"]);
        assert!(histogram(&[1.0], &[]).is_empty());
    }

    #[test]
    fn charts_escape_user_text_and_say_no_data_when_empty() {
        let evil = Bar {
            label: "<script>alert('x')</script>&".into(),
            value: 3.0,
            detail: "3 \"customers\"".into(),
        };
        let svg = bars("b", "Segments <1>", "segment", "customers", &[evil], false);
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(
            svg.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"),
            "{svg}"
        );
        assert!(svg.contains("Segments &lt;1&gt;") && svg.contains("3 &quot;customers&quot;"));
        assert!(svg.contains("<title>") && svg.contains(">segment</text>") && svg.contains(">customers</text>"));
        assert_eq!(bars("b", "t", "y", "x", &[], false), NO_DATA);
        let zero = Bar {
            label: "a".into(),
            value: 0.0,
            detail: "0".into(),
        };
        assert_eq!(bars("b", "t", "y", "x", &[zero], true), NO_DATA);
        assert_eq!(scatter("s", "t", "x", "y", &[]), NO_DATA);
        let p = Point {
            id: "<b>".into(),
            x: 0.0,
            y: 0.0,
        };
        let svg = scatter("s", "t", "x", "y", &[p]);
        assert!(
            svg.contains("<circle") && svg.contains("&lt;b&gt;") && !svg.contains("NaN"),
            "{svg}"
        );
    }
}
