//! The figures, drawn with `plotters`' SVG backend into strings.
//!
//! Each figure is planned from the report: which series it has, which points are left out
//! (fewer than [`MIN_REPORTED_N`] patients) and what the page says about them. A figure with
//! nothing to draw becomes a sentence instead. Line charts keep their legend in a column of
//! its own on the right, so it never covers a line; the per-site chart needs no legend.

use std::ops::Range;

use fedcare_server::card::{Evaluation, MIN_REPORTED_N, ModelCard};
use fedcare_server::report::{Metrics, Report};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Figure, reportable};

/// A figure the page shows, or the sentences that replace it.
pub(crate) struct Planned {
    pub name: &'static str,
    pub title: String,
    /// `None` when there is nothing to draw (the notes say why).
    pub figure: Option<Figure>,
    /// Shown under the figure (or instead of it): how to read it, what is left out and why.
    pub notes: Vec<String>,
}

/// Every figure in the page's order.
pub(crate) fn plan(report: &Report, card: &ModelCard) -> Vec<Planned> {
    vec![
        by_round(report, "accuracy-by-round", "Accuracy by round", "accuracy", |m| Some(m.accuracy), Some((0.0, 1.0))),
        loss_by_round(report),
        by_round(report, "auc-by-round", "ROC AUC by round", "ROC AUC", |m| m.auc, Some((0.0, 1.0))),
        privacy_spent(report),
        reliability(report, card),
        per_site(card),
    ]
}

const FONT: &str = "sans-serif";
const WIDTH: u32 = 780;
const HEIGHT: u32 = 420;
/// Width of the legend column at the right of a line chart.
const LEGEND_WIDTH: u32 = 210;
const TITLE_SIZE: u32 = 20;
const LABEL_SIZE: u32 = 16;
const FEDERATED: RGBColor = RGBColor(0, 0, 0);
const REFERENCE: RGBColor = RGBColor(120, 120, 120);
/// Site colours: Okabe and Ito's colour-blind-safe palette (without its black and yellow),
/// then Paul Tol's muted one; they repeat only beyond 13 sites.
const SITE_COLOURS: [RGBColor; 13] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(140, 86, 75),
    RGBColor(51, 34, 136),
    RGBColor(17, 119, 51),
    RGBColor(136, 34, 85),
    RGBColor(153, 153, 51),
    RGBColor(68, 170, 153),
    RGBColor(170, 68, 153),
];
/// Lines with more points than this get no markers (they would merge into a thick line).
const MAX_MARKERS: usize = 25;

/// A site's colour: by its place in the report's site list, the same in every figure.
fn site_colour(report: &Report, site: &str) -> RGBColor {
    let i = site_names(report).iter().position(|s| s == site).unwrap_or(0);
    SITE_COLOURS[i % SITE_COLOURS.len()]
}

/// The report's sites, then any site seen only in the rounds.
fn site_names(report: &Report) -> Vec<String> {
    let mut names: Vec<String> = report.sites.iter().map(|s| s.site.clone()).collect();
    for r in &report.rounds {
        for s in r.site_eval.keys() {
            if !names.contains(s) {
                names.push(s.clone());
            }
        }
    }
    names
}

/// What a figure shows of one evaluation (`None`: not defined, e.g. AUC over one class).
type Value = fn(&Metrics) -> Option<f64>;

struct Series {
    label: String,
    colour: RGBColor,
    width: u32,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// A horizontal reference line across the whole chart.
struct HLine {
    label: String,
    y: f64,
    colour: RGBColor,
}

/// The federated series and one per site of `value` by round, with points over fewer than
/// [`MIN_REPORTED_N`] patients left out; notes name the sites left out and why.
fn round_series(report: &Report, value: Value, what: &str) -> (Vec<Series>, Vec<String>) {
    let point = |round: u32, m: Option<&Metrics>| m.filter(|m| reportable(m.n)).and_then(|m| Some((round as f64, value(m)?)));
    let mut series = vec![Series {
        label: "all sites (federated)".into(),
        colour: FEDERATED,
        width: 3,
        dashed: false,
        points: report.rounds.iter().filter_map(|r| point(r.round, r.eval.as_ref())).collect(),
    }];
    let mut suppressed = Vec::new();
    let mut undefined = Vec::new();
    for site in site_names(report) {
        let evals: Vec<(u32, &Metrics)> = report.rounds.iter().filter_map(|r| Some((r.round, r.site_eval.get(&site)?))).collect();
        let points: Vec<(f64, f64)> = evals.iter().filter_map(|(round, m)| point(*round, Some(m))).collect();
        if points.is_empty() {
            if evals.iter().any(|(_, m)| !reportable(m.n)) {
                suppressed.push(site);
            } else if !evals.is_empty() {
                undefined.push(site);
            }
            continue;
        }
        series.push(Series { label: site.clone(), colour: site_colour(report, &site), width: 2, dashed: false, points });
    }
    let mut notes = Vec::new();
    if !suppressed.is_empty() {
        notes.push(format!(
            "Not shown: {} (suppressed: fewer than {MIN_REPORTED_N} test patients).",
            suppressed.join(", ")
        ));
    }
    if !undefined.is_empty() {
        notes.push(format!("No {what} for {}: all its test patients have the same label.", undefined.join(", ")));
    }
    if series[0].points.is_empty() {
        notes.push(format!("No federated {what}: no round's pooled evaluation had {MIN_REPORTED_N} or more test patients."));
    }
    (series, notes)
}

fn by_round(
    report: &Report,
    name: &'static str,
    title: &str,
    what: &str,
    value: Value,
    bounds: Option<(f64, f64)>,
) -> Planned {
    let (series, mut notes) = round_series(report, value, what);
    notes.insert(0, "Each global model on held-out test patients after each round: all sites pooled (black) and each site's own (colours).".to_owned());
    let figure = if series.iter().all(|s| s.points.is_empty()) {
        notes.push("Nothing to plot.".into());
        None
    } else {
        let y = padded_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), bounds);
        figure(name, title, line_chart(title, "round", what, last_round(report), &series, &[], y))
    };
    Planned { name, title: title.into(), figure, notes }
}

fn loss_by_round(report: &Report) -> Planned {
    let (name, title) = ("loss-by-round", "Held-out loss by round");
    let (mut series, mut notes) = round_series(report, |m| Some(m.loss), "loss");
    notes.insert(0, "Mean cross-entropy of each global model on held-out test patients (lower is better): all sites pooled (black) and each site's own (colours).".into());
    let train: Vec<(f64, f64)> = report.rounds.iter().filter_map(|r| Some((r.round as f64, r.train_loss?))).collect();
    if train.is_empty() {
        notes.push("Training loss: not released (under differential privacy the sites do not send it).".into());
    } else {
        notes.push("Dashed: training loss, averaged over the sites' training records.".into());
        series.push(Series { label: "training loss".into(), colour: FEDERATED, width: 2, dashed: true, points: train });
    }
    let figure = if series.iter().all(|s| s.points.is_empty()) {
        notes.push("Nothing to plot.".into());
        None
    } else {
        let y = padded_range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), Some((0.0, f64::INFINITY)));
        figure(name, title, line_chart(title, "round", "mean cross-entropy", last_round(report), &series, &[], y))
    };
    Planned { name, title: title.into(), figure, notes }
}

fn privacy_spent(report: &Report) -> Planned {
    let (name, title) = ("privacy-by-round", "Privacy spent by round");
    let p = &report.privacy;
    let no = |note: String| Planned { name, title: title.into(), figure: None, notes: vec![note] };
    if p.epsilon_spent.is_none() && p.epsilon_by_round.is_empty() {
        return no("No differential privacy in this job, so there is no privacy spend to plot.".into());
    }
    if p.epsilon_by_round.is_empty() {
        return no("The report records no privacy spend per round, so there is nothing to plot.".into());
    }
    let points: Vec<(f64, f64)> = p.epsilon_by_round.iter().map(|e| (e.round as f64, e.epsilon)).collect();
    let series = [Series { label: "ε spent".into(), colour: SITE_COLOURS[0], width: 3, dashed: false, points }];
    let target: Vec<HLine> = p
        .target_epsilon
        .map(|t| HLine { label: format!("target ε = {}", num(t)), y: t, colour: SITE_COLOURS[1] })
        .into_iter()
        .collect();
    let top = p.epsilon_by_round.iter().map(|e| e.epsilon).chain(p.target_epsilon).fold(0.0, f64::max);
    let y = 0.0..nice_ceil(top * 1.1).max(1e-9);
    let last = p.epsilon_by_round.iter().map(|e| e.round).max().unwrap_or(1).max(last_round(report));
    let mut notes = vec![format!(
        "Epsilon spent after each round by a site that took part in every round (the statistics step included); {}-level \
         privacy, smaller is more private.",
        p.unit
    )];
    if let Some(t) = p.target_epsilon {
        notes.push(format!(
            "Dashed: the job's target, ε = {}{}.",
            num(t),
            p.delta.map_or(String::new(), |d| format!(" (δ = {d:e})"))
        ));
    }
    let figure = figure(name, title, line_chart(title, "round", "ε (epsilon)", last, &series, &target, y));
    Planned { name, title: title.into(), figure, notes }
}

fn reliability(report: &Report, card: &ModelCard) -> Planned {
    let (name, title) = ("reliability", "Reliability of the final model (all sites)");
    let no = |note: String| Planned { name, title: title.into(), figure: None, notes: vec![note] };
    let fed = match &card.federated {
        Evaluation::Reported(m) => m,
        Evaluation::Suppressed => {
            return no(format!("Not shown: the final model was evaluated on fewer than {MIN_REPORTED_N} test patients (suppressed)."));
        }
        Evaluation::NotEvaluated => return no("Not shown: no site evaluated the final model.".into()),
    };
    // The card keeps only bins with enough patients; say how many the report had.
    let all_bins = report.federated.as_ref().map_or(0, |m| m.calibration.len());
    let points: Vec<(f64, f64)> =
        fed.calibration.iter().filter(|b| reportable(b.n)).filter_map(|b| Some(((b.lo + b.hi) / 2.0, b.observed()?))).collect();
    if points.is_empty() {
        return no(format!("Not shown: no bin of predicted probability held {MIN_REPORTED_N} or more test patients."));
    }
    let mut notes = vec![
        "Each point is one bin of predicted probability: x is the bin's midpoint, y the share of its test patients who were \
         positive. A well-calibrated model lies on the dashed diagonal; above it the model under-predicts, below it over-predicts."
            .to_owned(),
    ];
    let omitted = all_bins.saturating_sub(points.len());
    if omitted > 0 {
        notes.push(format!("{omitted} of {all_bins} bins omitted (empty or fewer than {MIN_REPORTED_N} patients)."));
    }
    let series = [
        Series { label: "perfect calibration".into(), colour: REFERENCE, width: 1, dashed: true, points: vec![(0.0, 0.0), (1.0, 1.0)] },
        Series { label: "final model".into(), colour: FEDERATED, width: 3, dashed: false, points },
    ];
    let svg = draw(WIDTH - 120, 480, |root| {
        let root = root.titled(title, (FONT, TITLE_SIZE))?;
        let (plot, legend) = root.split_horizontally(WIDTH - 120 - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("predicted probability")
            .y_desc("observed fraction positive")
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|x| format!("{x:.1}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(230, 230, 230))
            .draw()?;
        for s in &series {
            draw_series(&mut chart, s)?;
        }
        draw_legend(&legend, &series, &[])
    });
    Planned { name, title: title.into(), figure: figure(name, title, svg), notes }
}

/// Final accuracy and AUC at each site as bars, with the federated value as a dashed line.
fn per_site(card: &ModelCard) -> Planned {
    let (name, title) = ("sites-final", "Final model at each site");
    let fed = card.federated.metrics();
    let mut notes = vec![match fed {
        Some(f) => format!(
            "Bars: the final model on each site's own test patients. Dashed: over all sites (accuracy {:.3}{}).",
            f.accuracy,
            f.auc.map_or(String::new(), |a| format!(", AUC {a:.3}"))
        ),
        None => "Bars: the final model on each site's own test patients.".into(),
    }];
    let suppressed: Vec<&str> = card.sites.iter().filter(|s| s.test == Evaluation::Suppressed).map(|s| s.site.as_str()).collect();
    if !suppressed.is_empty() {
        notes.push(format!("Suppressed: {} (fewer than {MIN_REPORTED_N} test patients).", suppressed.join(", ")));
    }
    if card.sites.is_empty() {
        notes.push("No site to show.".into());
        return Planned { name, title: title.into(), figure: None, notes };
    }
    let rows = card.sites.len();
    let height = 110 + 34 * rows as u32;
    let longest = card.sites.iter().map(|s| short(&s.site, 22).chars().count()).max().unwrap_or(4) as u32;
    let names_width = (longest * 9 + 20).clamp(70, 220);
    let svg = draw(WIDTH, height, |root| {
        let body = root.titled(title, (FONT, TITLE_SIZE))?;
        let (names, panels) = body.split_horizontally(names_width);
        let (left, right) = panels.split_horizontally((WIDTH - names_width) / 2);
        let panels: [(_, &str, Value, Option<f64>); 2] = [
            (&left, "accuracy", |m| Some(m.accuracy), fed.map(|f| f.accuracy)),
            (&right, "ROC AUC", |m| m.auc, fed.and_then(|f| f.auc)),
        ];
        let y_of = |i: usize| (rows - 1 - i) as f64;
        for (p, (area, what, value, reference)) in panels.into_iter().enumerate() {
            let caption = match reference {
                Some(r) => format!("{what} (dashed: all sites, {r:.3})"),
                None => what.to_owned(),
            };
            let mut chart = ChartBuilder::on(area)
                .margin_left(10)
                .margin_right(26)
                .margin_top(8)
                .caption(caption, (FONT, LABEL_SIZE + 1))
                .x_label_area_size(36)
                .y_label_area_size(0)
                .build_cartesian_2d(0.0..1.0, -0.6..(rows as f64 - 0.4))?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(0)
                .x_labels(6)
                .x_label_formatter(&|x| format!("{x:.1}"))
                .label_style((FONT, LABEL_SIZE - 1))
                .light_line_style(WHITE)
                .bold_line_style(RGBColor(230, 230, 230))
                .draw()?;
            for (i, site) in card.sites.iter().enumerate() {
                let y = y_of(i);
                if p == 0 {
                    let (_, py) = chart.backend_coord(&(0.0, y));
                    let style = TextStyle::from((FONT, LABEL_SIZE).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
                    names.draw(&Text::new(short(&site.site, 22), (names_width as i32 - 8, py - names.get_base_pixel().1), style))?;
                }
                // Values in bold; the words that replace a value in grey.
                let label = |text: String, x: f64, colour: &'static RGBColor, anchor: HPos| {
                    let font = (FONT, LABEL_SIZE - 1).into_font();
                    let font = if *colour == REFERENCE { font } else { font.style(FontStyle::Bold) };
                    Text::new(text, (x, y), TextStyle::from(font).color(colour).pos(Pos::new(anchor, VPos::Center)))
                };
                match &site.test {
                    Evaluation::Reported(m) => match value(m) {
                        Some(v) => {
                            let colour = SITE_COLOURS[i % SITE_COLOURS.len()];
                            chart.draw_series(std::iter::once(Rectangle::new([(0.0, y - 0.32), (v, y + 0.32)], colour.filled())))?;
                            // The value at the bar's start, clear of the reference line; after
                            // the bar when the bar is too short to hold it.
                            let text = if v >= 0.2 {
                                label(format!("{v:.3}"), 0.02, if light(colour) { &BLACK } else { &WHITE }, HPos::Left)
                            } else {
                                label(format!("{v:.3}"), v + 0.02, &BLACK, HPos::Left)
                            };
                            chart.draw_series(std::iter::once(text))?;
                        }
                        None => {
                            chart.draw_series(std::iter::once(label("n/a (one class only)".into(), 0.02, &REFERENCE, HPos::Left)))?;
                        }
                    },
                    Evaluation::Suppressed => {
                        chart.draw_series(std::iter::once(label(
                            format!("suppressed (fewer than {MIN_REPORTED_N})"),
                            0.02,
                            &REFERENCE,
                            HPos::Left,
                        )))?;
                    }
                    Evaluation::NotEvaluated => {
                        chart.draw_series(std::iter::once(label("not evaluated".into(), 0.02, &REFERENCE, HPos::Left)))?;
                    }
                }
            }
            if let Some(r) = reference {
                chart.draw_series(DashedLineSeries::new(
                    vec![(r, -0.6), (r, rows as f64 - 0.4)],
                    7,
                    5,
                    FEDERATED.stroke_width(2),
                ))?;
            }
        }
        Ok(())
    });
    Planned { name, title: title.into(), figure: figure(name, title, svg), notes }
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// An SVG document of `width` × `height` on a white background, drawn by `body`.
fn draw(width: u32, height: u32, body: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> DrawResult) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        body(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn figure(name: &'static str, title: &str, svg: Result<String, String>) -> Option<Figure> {
    // Drawing into a string cannot fail on I/O; a plotting error is a bug in this crate, and
    // the page still renders without the figure.
    svg.ok().map(|svg| Figure { name, title: title.to_owned(), svg })
}

/// A line chart over rounds `1..=last_round` with its legend in a column at the right.
fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    last_round: u32,
    series: &[Series],
    hlines: &[HLine],
    y: Range<f64>,
) -> Result<String, String> {
    let x = 0.5..(last_round as f64 + 0.5);
    let decimals = decimals(y.end - y.start);
    draw(WIDTH, HEIGHT, |root| {
        let root = root.titled(title, (FONT, TITLE_SIZE))?;
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(66)
            .build_cartesian_2d(x.clone(), y.clone())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels((last_round as usize).min(12))
            .y_labels(6)
            .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-9 { format!("{}", x.round()) } else { String::new() })
            .y_label_formatter(&|v| format!("{v:.decimals$}"))
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .disable_x_mesh()
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(230, 230, 230))
            .draw()?;
        for h in hlines {
            chart.draw_series(DashedLineSeries::new(vec![(x.start, h.y), (x.end, h.y)], 8, 5, h.colour.stroke_width(2)))?;
        }
        // Sites first, so the federated line is drawn on top of them.
        for s in series.iter().rev() {
            draw_series(&mut chart, s)?;
        }
        draw_legend(&legend, series, hlines)
    })
}

fn draw_series<'a>(chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>, s: &Series) -> DrawResult {
    let style = s.colour.stroke_width(s.width);
    if s.dashed {
        chart.draw_series(DashedLineSeries::new(s.points.clone(), 7, 5, style))?;
    } else {
        chart.draw_series(LineSeries::new(s.points.clone(), style))?;
        if s.points.len() <= MAX_MARKERS {
            chart.draw_series(s.points.iter().map(|p| Circle::new(*p, s.width + 1, s.colour.filled())))?;
        }
    }
    Ok(())
}

/// The legend, one entry per line and reference line, top to bottom in a column of its own.
fn draw_legend(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, series: &[Series], hlines: &[HLine]) -> DrawResult {
    let entries = series
        .iter()
        .map(|s| (s.label.as_str(), s.colour, s.width, s.dashed, !s.dashed && s.points.len() <= MAX_MARKERS))
        .chain(hlines.iter().map(|h| (h.label.as_str(), h.colour, 2, true, false)));
    let text = TextStyle::from((FONT, LABEL_SIZE).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, colour, width, dashed, marker)) in entries.enumerate() {
        let y = 24 + 26 * i as i32;
        let style = colour.stroke_width(width);
        if dashed {
            area.draw(&PathElement::new(vec![(6, y), (16, y)], style))?;
            area.draw(&PathElement::new(vec![(22, y), (32, y)], style))?;
        } else {
            area.draw(&PathElement::new(vec![(6, y), (32, y)], style))?;
        }
        if marker {
            area.draw(&Circle::new((19, y), width + 1, colour.filled()))?;
        }
        area.draw(&Text::new(short(label, 24), (40, y), text.clone()))?;
    }
    Ok(())
}

/// Whether black text reads better than white on `c` (luma above 0.55).
fn light(c: RGBColor) -> bool {
    let RGBColor(r, g, b) = c;
    (0.2126 * r as f64 + 0.7152 * g as f64 + 0.0722 * b as f64) / 255.0 > 0.55
}

/// The last round in the report (at least 1, so the x axis is never empty).
fn last_round(report: &Report) -> u32 {
    report.rounds.iter().map(|r| r.round).max().unwrap_or(1).max(1)
}

/// A y range around `values` with a little room above and below, on round numbers, within
/// `bounds`.
fn padded_range(values: impl Iterator<Item = f64>, bounds: Option<(f64, f64)>) -> Range<f64> {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = (hi - lo).max(0.05 * hi.abs().max(0.2));
    let step = nice_step(span / 8.0);
    let (mut lo, mut hi) = (((lo - span * 0.1) / step).floor() * step, ((hi + span * 0.1) / step).ceil() * step);
    if let Some((min, max)) = bounds {
        lo = lo.max(min);
        hi = hi.min(max);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    lo..hi
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_step(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|s| *s >= x).unwrap_or(10.0 * p)
}

fn nice_ceil(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let step = nice_step(x / 5.0);
    (x / step).ceil() * step
}

/// Decimals for axis labels over a range of width `span`.
fn decimals(span: f64) -> usize {
    match span {
        s if s < 0.1 => 3,
        s if s < 1.0 => 2,
        s if s < 10.0 => 1,
        _ => 0,
    }
}

/// A number without trailing zeros (8, 0.5, 1e-5).
fn num(x: f64) -> String {
    format!("{x}")
}

/// `s` cut to `max` characters, with an ellipsis when cut.
fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_owned() } else { format!("{}…", s.chars().take(max - 1).collect::<String>()) }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn ranges_are_padded_rounded_and_bounded() {
        let r = padded_range([0.72, 0.81].into_iter(), Some((0.0, 1.0)));
        assert!(r.start <= 0.72 && r.start >= 0.6 && r.end >= 0.81 && r.end <= 0.9, "{r:?}");
        let r = padded_range([0.95, 1.0].into_iter(), Some((0.0, 1.0)));
        assert_eq!(r.end, 1.0);
        let r = padded_range([0.5].into_iter(), Some((0.0, 1.0)));
        assert!(r.start < 0.5 && r.end > 0.5, "{r:?}");
        assert_eq!(padded_range(std::iter::empty(), None), 0.0..1.0);
        assert_eq!(nice_ceil(8.8), 10.0);
        assert_eq!(short("abcdef", 4), "abc…");
    }
}
