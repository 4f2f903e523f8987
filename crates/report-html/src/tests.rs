use std::collections::BTreeMap;

use fedcare_job::JobSpec;
use fedcare_protocol::Confusion;
use fedcare_server::report::{CalibrationBin, Metrics, PooledReference, PrivacyReport, Report, RoundSummary, Scaling, SiteSummary};

use super::*;

const ROUNDS: u32 = 5;
const FED_ACCURACY: [f64; 5] = [0.612, 0.684, 0.723, 0.757, 0.781];
const SITE_A_ACCURACY: [f64; 5] = [0.650, 0.700, 0.800, 0.875, 0.900];
const ODD: &str = "<b>&x";

fn spec() -> JobSpec {
    JobSpec::from_toml(include_str!("../../../examples/heart-disease/job.toml"), "job.toml").unwrap()
}

fn metrics(n: u64, accuracy: f64, auc: Option<f64>, loss: f64, confusion: Option<(u64, u64, u64, u64)>) -> Metrics {
    Metrics {
        n,
        accuracy,
        auc,
        loss,
        brier: Some(loss / 3.0),
        confusion: confusion.map(|(true_pos, false_pos, true_neg, false_neg)| Confusion { true_pos, false_pos, true_neg, false_neg }),
        calibration: Vec::new(),
    }
}

/// Sites `a` (40 test patients, accuracy 0.900), `b` (60, 0.700, one class so no AUC),
/// `<b>&x` (30) and `tiny` (7: every figure suppressed, with values found nowhere else:
/// accuracy 0.429, AUC 0.123, loss 0.987, Brier 0.329); federated accuracy 0.781 over 137.
/// Record-level DP (the example job), so no training loss.
fn report() -> Report {
    let spec = spec();
    let site = |n: u64, acc: f64, auc: Option<f64>, confusion| metrics(n, acc, auc, 0.45, confusion);
    let final_site = |name: &str| -> Metrics {
        match name {
            "a" => site(40, 0.900, Some(0.930), Some((17, 3, 19, 1))),
            "b" => site(60, 0.700, None, Some((0, 18, 42, 0))),
            "tiny" => metrics(7, 3.0 / 7.0, Some(0.123), 0.987, Some((2, 1, 1, 3))),
            _ => site(30, 0.800, Some(0.811), Some((12, 0, 12, 6))),
        }
    };
    let names = ["a", "b", ODD, "tiny"];
    let rounds = (1..=ROUNDS)
        .map(|round| {
            let i = round as usize - 1;
            let mut site_eval = BTreeMap::new();
            for name in names {
                let mut m = final_site(name);
                if name == "a" {
                    m.accuracy = SITE_A_ACCURACY[i];
                } else if name != "tiny" {
                    m.accuracy -= 0.02 * (ROUNDS - round) as f64;
                }
                site_eval.insert(name.to_owned(), m);
            }
            RoundSummary {
                round,
                sites: names.iter().map(|s| s.to_string()).collect(),
                train_loss: None,
                eval: Some(metrics(137, FED_ACCURACY[i], Some(0.80 + 0.01 * round as f64), 0.6 - 0.03 * round as f64, None)),
                site_eval,
                duration_ms: 1200 + 10 * round as u64,
            }
        })
        .collect();
    let mut federated = metrics(137, 0.781, Some(0.870), 0.440, Some((50, 12, 57, 18)));
    // Two bins too small to show (4 patients, and none).
    let bins = [(14, 1), (20, 3), (18, 4), (16, 6), (4, 4), (0, 0), (15, 9), (17, 12), (16, 13), (17, 16)];
    federated.calibration = bins
        .iter()
        .enumerate()
        .map(|(b, &(n, positives))| CalibrationBin { lo: b as f64 / 10.0, hi: (b + 1) as f64 / 10.0, n, positives })
        .collect();
    Report {
        job_id: spec.id().to_string(),
        job_name: spec.name.clone(),
        code_version: "0.1.0-test".into(),
        model: "logistic_regression".into(),
        layout_digest: "digest".into(),
        parameters: 16,
        protection: "secure aggregation (SecAgg+)".into(),
        privacy: PrivacyReport::build(&spec, ROUNDS),
        rounds,
        sites: [("a", 120), ("b", 180), (ODD, 90), ("tiny", 15)]
            .into_iter()
            .map(|(name, train)| SiteSummary { site: name.into(), train_examples: train, test: Some(final_site(name)) })
            .collect(),
        federated: Some(federated),
        scaling: Scaling { features: vec![], mean: vec![], std: vec![] },
        pooled_reference: Some(PooledReference {
            test: metrics(137, 0.795, Some(0.880), 0.420, Some((55, 13, 56, 13))),
            epochs: 10,
            note: "trained centrally".into(),
        }),
        site_audit_heads: BTreeMap::new(),
        finished: Some("2026-11-26T12:00:00Z".into()),
        mutual_tls: Some(true),
        spec,
    }
}

fn without_privacy(mut report: Report) -> Report {
    report.spec.privacy = fedcare_job::PrivacySpec::none();
    report.privacy = PrivacyReport::build(&report.spec, ROUNDS);
    for r in &mut report.rounds {
        r.train_loss = Some(0.5 - 0.011 * r.round as f64);
    }
    report
}

/// Stroke colour, stroke width and points of one `<polyline>`.
type Polyline = (String, String, Vec<(f64, f64)>);

/// Every `<polyline>` in an SVG.
fn polylines(svg: &str) -> Vec<Polyline> {
    let attr = |tag: &str, name: &str| -> String {
        let key = format!(" {name}=\"");
        let start = tag.find(&key).map(|i| i + key.len()).unwrap_or_else(|| panic!("no {name} in {tag}"));
        tag[start..].split('"').next().unwrap().to_owned()
    };
    svg.split("<polyline")
        .skip(1)
        .map(|rest| {
            let tag = rest.split("/>").next().unwrap();
            let points = attr(tag, "points")
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            (attr(tag, "stroke"), attr(tag, "stroke-width"), points)
        })
        .collect()
}

fn figure<'a>(figures: &'a [Figure], name: &str) -> &'a Figure {
    figures.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no figure {name}"))
}

/// The points of the one solid polyline drawn in `colour` with `width` (legend samples have
/// two points at fixed pixels, so lines with more than two points are the data).
fn data_line(svg: &str, colour: &str, width: &str) -> Vec<(f64, f64)> {
    let lines: Vec<_> = polylines(svg).into_iter().filter(|(c, w, p)| c == colour && w == width && p.len() > 2).collect();
    assert_eq!(lines.len(), 1, "one {colour} line of width {width} expected in\n{svg}");
    lines.into_iter().next().unwrap().2
}

/// Asserts the pixel heights are the values under one linear map (within pixel rounding).
fn assert_plots(points: &[(f64, f64)], values: &[f64]) {
    assert_eq!(points.len(), values.len());
    let (first, last) = (0, values.len() - 1);
    let scale = (points[last].1 - points[first].1) / (values[last] - values[first]);
    assert!(scale < 0.0, "higher values must be drawn higher (smaller y)");
    for (p, v) in points.iter().zip(values) {
        let expected = points[first].1 + scale * (v - values[first]);
        assert!((p.1 - expected).abs() <= 1.5, "value {v} drawn at y {} instead of {expected}", p.1);
    }
    // Rounds left to right, evenly spaced.
    let dx = points[1].0 - points[0].0;
    assert!(dx > 0.0 && points.windows(2).all(|w| (w[1].0 - w[0].0 - dx).abs() <= 1.0), "{points:?}");
}

#[test]
fn the_round_figures_draw_each_rounds_values() {
    let report = report();
    let figures = figures(&report);
    let names: Vec<&str> = figures.iter().map(|f| f.name).collect();
    assert_eq!(names, ["accuracy-by-round", "loss-by-round", "auc-by-round", "privacy-by-round", "reliability", "sites-final"]);

    let accuracy = &figure(&figures, "accuracy-by-round").svg;
    assert_plots(&data_line(accuracy, "#000000", "3"), &FED_ACCURACY);
    // Site a is the first site: the first colour.
    assert_plots(&data_line(accuracy, "#0072B2", "2"), &SITE_A_ACCURACY);
    // a, b and <b>&x have lines (and a legend entry); tiny does not.
    let with_points = polylines(accuracy).into_iter().filter(|(_, _, p)| p.len() == ROUNDS as usize).count();
    assert_eq!(with_points, 4, "{accuracy}");
    assert!(!accuracy.contains("tiny") && !accuracy.contains("#CC79A7"), "{accuracy}");

    // AUC: b has none (one class), so federated, a and <b>&x.
    let auc = &figure(&figures, "auc-by-round").svg;
    let fed_auc: Vec<f64> = report.rounds.iter().map(|r| r.eval.as_ref().unwrap().auc.unwrap()).collect();
    assert_plots(&data_line(auc, "#000000", "3"), &fed_auc);
    assert_eq!(polylines(auc).into_iter().filter(|(_, _, p)| p.len() == ROUNDS as usize).count(), 3);

    // Privacy: one point per round in the report, and the target as a line.
    let privacy = &figure(&figures, "privacy-by-round").svg;
    let eps: Vec<f64> = report.privacy.epsilon_by_round.iter().map(|e| e.epsilon).collect();
    assert_eq!(eps.len(), ROUNDS as usize);
    assert_plots(&data_line(privacy, "#0072B2", "3"), &eps);
    assert!(privacy.contains("target ε = 8"), "{privacy}");
}

#[test]
fn the_reliability_diagram_leaves_out_small_bins() {
    let report = report();
    let figures = figures(&report);
    let svg = &figure(&figures, "reliability").svg;
    // Ten bins, of which one has 4 patients and one none: eight points.
    let line = data_line(svg, "#000000", "3");
    assert_eq!(line.len(), 8, "{svg}");
    let observed: Vec<f64> = report.federated.as_ref().unwrap().calibration.iter().filter(|b| b.n >= 10).map(|b| b.positives as f64 / b.n as f64).collect();
    // Not monotone in x, so check the map point by point against the first two.
    let scale = (line[1].1 - line[0].1) / (observed[1] - observed[0]);
    for (p, v) in line.iter().zip(&observed) {
        assert!((p.1 - (line[0].1 + scale * (v - observed[0]))).abs() <= 1.5, "{line:?}");
    }
    let html = render_html(&report);
    assert!(html.contains("2 of 10 bins omitted (empty or fewer than 10 patients)."), "{html}");
}

#[test]
fn the_page_shows_the_federated_figures_as_the_tables_do() {
    let html = render_html(&report());
    let fed_row = html.lines().find(|l| l.starts_with("<tr class=\"fed\">")).expect("federated row");
    assert_eq!(
        fed_row,
        "<tr class=\"fed\"><th scope=\"row\">all sites (federated)</th><td class=\"num\">405</td><td class=\"num\">137</td>\
         <td class=\"num\">0.781</td><td class=\"num\">0.870</td><td class=\"num\">0.147</td><td class=\"num\">0.440</td>\
         <td class=\"num\">50</td><td class=\"num\">12</td><td class=\"num\">57</td><td class=\"num\">18</td></tr>"
    );
    assert!(html.contains("<tr class=\"ref\"><th scope=\"row\">pooled reference*</th><td class=\"num\">405</td><td class=\"num\">137</td><td class=\"num\">0.795</td>"));
    let b = html.lines().find(|l| l.starts_with("<tr><th scope=\"row\">b</th>")).expect("row of b");
    assert!(b.contains("<td class=\"num\">0.700</td><td class=\"num\">n/a</td>"), "{b}");
    // The rounds table: training loss not released under DP, the pooled accuracy per round.
    let round5 = html.lines().find(|l| l.starts_with("<tr><td class=\"num\">5</td>")).expect("round 5");
    assert!(round5.contains("not released") && round5.contains("<td class=\"num\">0.781</td>") && round5.contains("1.2 s"), "{round5}");
    assert!(html.contains("<figcaption><strong>Figure 1. Accuracy by round.</strong>"));
    // The model card's facts.
    assert!(html.contains("Research use only: predicts whether disease &gt; 0"), "{html}");
    assert!(html.contains("Epsilon spent:"));
}

#[test]
fn a_site_with_fewer_than_ten_test_patients_shows_no_figure() {
    let report = report();
    let html = render_html(&report);
    let figures = figures(&report);
    // tiny's values, written as the page writes numbers, appear nowhere.
    for value in ["0.429", "0.123", "0.987", "0.329"] {
        assert!(!html.contains(value), "{value} in the page");
        for f in &figures {
            assert!(!f.svg.contains(value), "{value} in {}", f.name);
        }
    }
    let row = html.lines().find(|l| l.starts_with("<tr><th scope=\"row\">tiny</th>")).expect("row of tiny");
    assert_eq!(row, "<tr><th scope=\"row\">tiny</th><td class=\"num\">15</td><td colspan=\"9\" class=\"sup\">suppressed (fewer than 10)</td></tr>");
    assert!(html.contains("Not shown: tiny (suppressed: fewer than 10 test patients)."), "{html}");
    let sites = &figure(&figures, "sites-final").svg;
    assert!(sites.contains("suppressed (fewer than 10)"), "{sites}");
    // Site a's confusion matrix has a cell of 3 (and one of 1): all four cells are withheld.
    let a = html.lines().find(|l| l.starts_with("<tr><th scope=\"row\">a</th>")).expect("row of a");
    assert!(a.ends_with("<td colspan=\"4\" class=\"sup\">suppressed (fewer than 10)</td></tr>") && !a.contains(">3<"), "{a}");
    // A federated total under ten suppresses the federated row and the reliability diagram.
    let mut small = report.clone();
    small.federated.as_mut().unwrap().n = 9;
    let html = render_html(&small);
    assert!(html.contains("<tr class=\"fed\"><th scope=\"row\">all sites (federated)</th><td class=\"num\">405</td><td colspan=\"9\" class=\"sup\">suppressed (fewer than 10)</td></tr>"));
    assert!(!super::figures(&small).iter().any(|f| f.name == "reliability"));
    assert!(html.contains("evaluated on fewer than 10 test patients (suppressed)"));
}

#[test]
fn text_from_the_report_is_escaped() {
    let mut report = report();
    report.job_name = "<script>alert('x')</script>".into();
    let html = render_html(&report);
    assert!(!html.contains("<b>&x") && !html.contains("<script"), "unescaped text in the page");
    assert!(html.contains("<th scope=\"row\">&lt;b&gt;&amp;x</th>"));
    assert!(html.contains("<h1>Job report: &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</h1>"));
    // The warning names the site, escaped, in the warnings box.
    let warnings = html.split("<section class=\"warnings\" role=\"alert\">").nth(1).expect("warnings box").split("</section>").next().unwrap();
    assert!(warnings.contains("Ranks patients worse at site &lt;b&gt;&amp;x (ROC AUC 0.811 against 0.870"), "{warnings}");
    assert!(warnings.contains("Performs worse at site b (accuracy 0.700 against 0.781"), "{warnings}");
    for f in figures(&report) {
        assert!(!f.svg.contains("<b>&x"), "{}", f.name);
    }
    assert!(figure(&figures(&report), "accuracy-by-round").svg.contains("&lt;b&gt;&amp;x"));
}

#[test]
fn the_page_is_self_contained() {
    let html = render_html(&report());
    for needle in ["<script", "src=", "href=", "url(", "@import", "<link", "<iframe"] {
        assert!(!html.contains(needle), "{needle} in the page");
    }
    assert_eq!(html.matches("<svg ").count(), 6);
}

#[test]
fn without_differential_privacy_there_is_no_privacy_figure_but_a_sentence() {
    let report = without_privacy(report());
    let figures = figures(&report);
    assert!(!figures.iter().any(|f| f.name == "privacy-by-round"));
    assert_eq!(figures.len(), 5);
    let html = render_html(&report);
    assert!(html.contains("<strong>Privacy spent by round.</strong> No differential privacy in this job, so there is no privacy spend to plot."));
    // The training loss is released without DP: a dashed line, and numbers in the table.
    let loss = &figure(&figures, "loss-by-round").svg;
    assert!(loss.contains("training loss"), "{loss}");
    assert!(!html.contains("not released</span>"));
    assert!(html.lines().any(|l| l.starts_with("<tr><td class=\"num\">5</td>") && l.contains("<td class=\"num\">0.445</td>")));
}

#[test]
fn write_creates_the_page_and_one_svg_per_figure() {
    let report = report();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("html");
    let written = write(&report, &out).unwrap();
    assert_eq!(written.html, out.join("report.html"));
    assert_eq!(std::fs::read_to_string(&written.html).unwrap(), render_html(&report));
    let figures = figures(&report);
    assert_eq!(written.figures.len(), figures.len());
    for (path, f) in written.figures.iter().zip(&figures) {
        assert_eq!(path, &out.join("figures").join(format!("{}.svg", f.name)));
        let svg = std::fs::read_to_string(path).unwrap();
        assert_eq!(svg, f.svg);
        assert!(svg.starts_with("<svg ") && svg.contains("xmlns=\"http://www.w3.org/2000/svg\"") && svg.trim_end().ends_with("</svg>"));
    }
    // A folder that cannot be made is an error naming it.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = write(&report, &file).unwrap_err();
    assert!(err.to_string().contains("file"), "{err}");
}

#[test]
fn a_report_read_back_from_json_renders_the_same() {
    let report = report();
    let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(render_html(&back), render_html(&report));
}

#[test]
fn a_job_with_no_round_and_no_evaluation_still_renders() {
    let mut report = report();
    report.rounds.clear();
    report.federated = None;
    for s in &mut report.sites {
        s.test = None;
    }
    report.privacy = PrivacyReport::build(&report.spec, 0);
    let figures = figures(&report);
    // Only the per-site chart remains, saying each site did not evaluate.
    assert_eq!(figures.iter().map(|f| f.name).collect::<Vec<_>>(), ["sites-final"]);
    assert!(figures[0].svg.contains("not evaluated"));
    let html = render_html(&report);
    assert!(html.contains("<td colspan=\"8\" class=\"sup\">no round completed</td>"));
    assert!(html.contains("<strong>Accuracy by round.</strong>") && html.contains("Nothing to plot."));
    assert!(html.contains("Not shown: no site evaluated the final model."));
    assert!(html.contains("<tr class=\"fed\"><th scope=\"row\">all sites (federated)</th><td class=\"num\">405</td><td colspan=\"9\" class=\"sup\">not evaluated</td></tr>"));
}
