//! docs/benchmarks.svg: two panels drawn from the medians, jobs/s and worker CPU µs per job against
//! concurrency (log scale), one line per contender. Plain SVG written here, so no plotting tool is needed.

use std::fmt::Write as _;

use crate::contenders::Contender;
use crate::report::Summary;
use crate::stats::nice_ceiling;

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 300.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_T: f64 = 36.0;
const MARGIN_B: f64 = 44.0;
const LEGEND_H: f64 = 70.0;

fn colour(c: Contender) -> &'static str {
    match c {
        Contender::Node => "#2e7d32",
        Contender::Node5 => "#81c784",
        Contender::Bare => "#757575",
        Contender::Raw => "#212121",
        Contender::HostInProcess => "#1565c0",
        Contender::HostProcess => "#c62828",
        Contender::HostSms => "#ef6c00",
    }
}

/// One panel at x offset `left`: `value` of each contender's median at each concurrency.
fn panel(
    out: &mut String,
    summary: &Summary,
    left: f64,
    title: &str,
    value: fn(&crate::measure::Sample) -> f64,
) {
    let xs = summary.concurrencies();
    let (lo, hi) = (
        xs.iter().copied().min().unwrap_or(1).max(1) as f64,
        xs.iter().copied().max().unwrap_or(1).max(1) as f64,
    );
    let span = (hi.ln() - lo.ln()).max(1e-9);
    let plot_w = PANEL_W - MARGIN_L - 16.0;
    let plot_h = PANEL_H - MARGIN_T - MARGIN_B;
    let x = |c: usize| {
        if xs.len() < 2 {
            left + MARGIN_L + plot_w / 2.0
        } else {
            left + MARGIN_L + ((c.max(1) as f64).ln() - lo.ln()) / span * plot_w
        }
    };
    let y_max = nice_ceiling(summary.no_op.values().map(value).fold(0.0, f64::max));
    let y = |v: f64| MARGIN_T + plot_h - v / y_max * plot_h;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="20" font-size="14" font-weight="bold">{title}</text>"#,
        left + MARGIN_L
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{v:.0}</text>"##,
            left + MARGIN_L,
            left + MARGIN_L + plot_w,
            y(v),
            y(v),
            left + MARGIN_L - 6.0,
            y(v) + 4.0
        );
    }
    for &c in xs {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" font-size="11" text-anchor="middle">{c}</text>"##,
            x(c),
            MARGIN_T,
            MARGIN_T + plot_h,
            MARGIN_T + plot_h + 16.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">concurrency (log scale)</text>"#,
        left + MARGIN_L + plot_w / 2.0,
        PANEL_H - 8.0
    );
    for &contender in summary.contenders() {
        let points: Vec<String> = xs
            .iter()
            .filter_map(|&c| summary.no_op.get(&(contender, c)).map(|s| (c, value(s))))
            .map(|(c, v)| format!("{:.1},{:.1}", x(c), y(v)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let colour = colour(contender);
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').expect("x,y");
            let _ = writeln!(
                out,
                r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#
            );
        }
    }
}

/// The whole chart as an SVG document.
pub fn svg(summary: &Summary) -> String {
    let width = 2.0 * PANEL_W;
    let height = PANEL_H + LEGEND_H;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    panel(&mut out, summary, 0.0, "no-op jobs/s", |s| s.rate);
    panel(&mut out, summary, PANEL_W, "worker CPU µs per job", |s| {
        s.cpu_us_per_job
    });
    for (i, &contender) in summary.contenders().iter().enumerate() {
        let (col, row) = (i % 3, i / 3);
        let lx = MARGIN_L + col as f64 * 260.0;
        let ly = PANEL_H + 16.0 + row as f64 * 22.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            lx + 24.0,
            colour(contender),
            lx + 30.0,
            ly + 4.0,
            contender.label()
        );
    }
    out + "</svg>\n"
}
