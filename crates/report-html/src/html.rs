//! The page: the model card's facts, the evaluation and rounds tables, the warnings and the
//! figures, as one HTML document with inline CSS and inline SVG.
//!
//! Every string that comes from the report goes through [`esc`]; numbers are formatted here.
//! Small counts follow the card: a site's metrics come from [`ModelCard`] (already
//! suppressed there), a round's from the report with the same threshold applied here.

use std::fmt::Write;

use fedcare_server::card::{Evaluation, MIN_REPORTED_N, ModelCard, TrainCounts, WORSE_AT_SITE_MARGIN};
use fedcare_server::report::{Metrics, Report};

use crate::figures::Planned;
use crate::reportable;

/// What replaces every figure over too few patients.
pub(crate) fn suppressed() -> String {
    format!("suppressed (fewer than {MIN_REPORTED_N})")
}

pub(crate) fn page(report: &Report, card: &ModelCard, figures: &[Planned]) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let j = &card.job;
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Job report: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        esc(&j.name)
    );
    let _ = writeln!(o, "<h1>Job report: {}</h1>", esc(&j.name));
    if !j.description.trim().is_empty() {
        let _ = writeln!(o, "<p class=\"lead\">{}</p>", esc(&j.description));
    }
    let m = &card.model;
    let _ = writeln!(o, "<dl class=\"meta\">");
    dd(&mut o, "Job id", &format!("<code>{}</code> (SHA-256 of the job spec)", esc(&j.job_id)));
    dd(&mut o, "fedcare version", &esc(&j.code_version));
    dd(&mut o, "Rounds", &format!("{} of {} completed", m.rounds_completed, m.rounds_planned));
    dd(&mut o, "Date", &esc(j.date.as_deref().unwrap_or("not recorded in the job's report")));
    let _ = writeln!(o, "</dl>");

    warnings(&mut o, report);

    let _ = writeln!(o, "<section id=\"use\">\n<h2>Intended use</h2>\n<p class=\"use\">{}</p>\n</section>", esc(&card.intended_use));
    model(&mut o, card);
    data(&mut o, card);
    privacy(&mut o, report, card);
    evaluation(&mut o, report, card);
    rounds(&mut o, report);
    figures_section(&mut o, figures);
    audit(&mut o, card);

    let _ = writeln!(
        o,
        "<footer>Made by fedcare-report-html from the job's report; every figure is the report's own. \
         Figures over fewer than {MIN_REPORTED_N} patients are suppressed.</footer>\n</main>\n</body>\n</html>"
    );
    o
}

fn dd(o: &mut String, term: &str, html: &str) {
    let _ = writeln!(o, "<dt>{term}</dt><dd>{html}</dd>");
}

fn warnings(o: &mut String, report: &Report) {
    let warnings = report.site_warnings();
    if warnings.is_empty() {
        let _ = writeln!(
            o,
            "<p class=\"ok\">No site where the final model does noticeably worse than over all sites \
             (accuracy or AUC more than {WORSE_AT_SITE_MARGIN} below; sites with fewer than {MIN_REPORTED_N} test patients are not compared).</p>"
        );
        return;
    }
    let _ = writeln!(
        o,
        "<section class=\"warnings\" role=\"alert\">\n<h2>Warning{}</h2>\n<ul>",
        if warnings.len() == 1 { "" } else { "s" }
    );
    for w in &warnings {
        let _ = writeln!(o, "<li>{}</li>", esc(w));
    }
    let _ = writeln!(o, "</ul>\n</section>");
}

fn model(o: &mut String, card: &ModelCard) {
    let m = &card.model;
    let sampling = match (m.batch_size, m.sampling_rate) {
        (_, Some(q)) => format!("each training step uses a random sample of about {}% of the site's records", pct(q)),
        (Some(b), None) => format!("batch size {b}"),
        (None, None) => "batch size not applicable".to_owned(),
    };
    let _ = writeln!(o, "<section id=\"model\">\n<h2>Model and training</h2>\n<ul>");
    let _ = writeln!(o, "<li>Kind: {} (<code>{}</code>, {} parameters)</li>", esc(&m.description), esc(&m.kind), m.parameters);
    let _ = writeln!(
        o,
        "<li>Training at each site, per round: {} local epoch{}, {}, optimizer {}, learning rate {}</li>",
        m.local_epochs,
        if m.local_epochs == 1 { "" } else { "s" },
        esc(&sampling),
        esc(&m.optimizer),
        m.learning_rate
    );
    let _ = writeln!(
        o,
        "<li>Rounds: {} of {} completed (in each round every site trains on its own records and the coordinator combines their updates)</li>",
        m.rounds_completed, m.rounds_planned
    );
    let _ = writeln!(o, "</ul>\n</section>");
}

fn data(o: &mut String, card: &ModelCard) {
    let d = &card.data;
    let features: Vec<String> = d
        .features
        .iter()
        .map(|f| if f.encoding == "numeric" { esc(&f.name) } else { format!("{} <span class=\"dim\">({})</span>", esc(&f.name), esc(&f.encoding)) })
        .collect();
    let _ = writeln!(o, "<section id=\"data\">\n<h2>Data</h2>\n<ul>");
    let _ = writeln!(o, "<li>Features ({}): {}</li>", d.features.len(), features.join(", "));
    let _ = writeln!(o, "<li>Label: positive when {}</li>", esc(&d.label));
    let _ = writeln!(o, "<li>Each site kept {}% of its own records aside for testing; no record left its site.</li>", pct(d.test_fraction));
    let _ = writeln!(
        o,
        "<li>Training examples: {}</li>",
        match d.train_counts {
            TrainCounts::Exact => "the counts each site reported.",
            TrainCounts::Noised =>
                "noised counts (differential privacy adds random noise to each site's count, so it can differ slightly from the true number).",
            TrainCounts::NotReleased => "not released (under site-level privacy every site weighs the same in the average).",
        }
    );
    let _ = writeln!(o, "</ul>\n</section>");
}

fn privacy(o: &mut String, report: &Report, card: &ModelCard) {
    let p = &card.privacy;
    let _ = writeln!(o, "<section id=\"privacy\">\n<h2>Privacy and security</h2>");
    let _ = writeln!(o, "<p>{}</p>", esc(&p.in_plain_words));
    if p.epsilon_spent.is_some() {
        let _ = writeln!(
            o,
            "<p>Epsilon measures how much the model can reveal about one {} (smaller is more private); delta is the small chance that this bound fails.</p>",
            if p.unit == "site" { "hospital's data" } else { "patient" }
        );
    }
    let _ = writeln!(o, "<ul>");
    let _ = writeln!(o, "<li>The guarantee in technical terms: {}</li>", esc(&p.statement));
    let _ = writeln!(
        o,
        "<li>Secure aggregation: {}</li>",
        if p.secure_aggregation {
            "yes (the coordinator saw only the sum of the sites' updates in each round, never one site's)"
        } else {
            "no (the coordinator saw each site's update)"
        }
    );
    let _ = writeln!(o, "<li>Protection of the updates, as the report states it: {}</li>", esc(&report.protection));
    let _ = writeln!(
        o,
        "<li>Mutual TLS: {}</li>",
        match p.mutual_tls {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not recorded in the job's report",
        }
    );
    let _ = writeln!(o, "</ul>");
    let ledgers = &report.privacy.site_ledgers;
    if !ledgers.is_empty() {
        let _ = writeln!(
            o,
            "<table class=\"narrow\">\n<caption>Each site's own ledger total for this job</caption>\n<thead><tr><th>site</th><th>ε spent (site's ledger)</th></tr></thead>\n<tbody>"
        );
        for (site, eps) in ledgers {
            let _ = writeln!(o, "<tr><td>{}</td><td class=\"num\">{eps:.3}</td></tr>", esc(site));
        }
        let _ = writeln!(o, "</tbody>\n</table>");
    }
    let _ = writeln!(o, "</section>");
}

fn evaluation(o: &mut String, report: &Report, card: &ModelCard) {
    let _ = writeln!(o, "<section id=\"evaluation\">\n<h2>Evaluation on held-out test patients</h2>");
    let _ = writeln!(
        o,
        "<p class=\"help\">Accuracy: share of test patients classified correctly. ROC AUC: chance that a positive patient scores \
         higher than a negative one (0.5 is a coin toss, 1 is perfect; n/a when all test patients have the same label). Brier: mean \
         squared error of the predicted probability (0 is perfect). Loss: mean cross-entropy. TP, FP, TN, FN: true and false \
         positives and negatives at a threshold of 0.5. Figures over fewer than {MIN_REPORTED_N} patients, and a confusion matrix \
         with any cell of 1 to {}, are suppressed: small counts could identify patients.</p>",
        MIN_REPORTED_N - 1
    );
    let _ = writeln!(
        o,
        "<table class=\"eval\">\n<thead><tr><th></th><th>training examples</th><th>test patients</th><th>accuracy</th><th>ROC AUC</th>\
         <th>Brier</th><th>loss</th><th>TP</th><th>FP</th><th>TN</th><th>FN</th></tr></thead>\n<tbody>"
    );
    let train = |n: u64| -> String {
        match card.data.train_counts {
            TrainCounts::NotReleased => "not released".into(),
            _ if n > 0 && !reportable(n) => format!("fewer than {MIN_REPORTED_N}"),
            _ => n.to_string(),
        }
    };
    for s in &card.sites {
        let _ = writeln!(o, "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td>{}</tr>", esc(&s.site), train(s.train_examples), eval_cells(&s.test));
    }
    let total: u64 = card.sites.iter().map(|s| s.train_examples).sum();
    let _ = writeln!(
        o,
        "<tr class=\"fed\"><th scope=\"row\">all sites (federated)</th><td class=\"num\">{}</td>{}</tr>",
        train(total),
        eval_cells(&card.federated)
    );
    if let Some(pooled) = &card.pooled_reference {
        let _ = writeln!(
            o,
            "<tr class=\"ref\"><th scope=\"row\">pooled reference*</th><td class=\"num\">{}</td>{}</tr>",
            train(total),
            eval_cells(pooled)
        );
    }
    let _ = writeln!(o, "</tbody>\n</table>");
    if let Some(p) = &report.pooled_reference {
        let _ = writeln!(
            o,
            "<p class=\"help\">* Simulation only: the same model trained centrally, without privacy, on all sites' training records \
             ({} epochs), to show what federation and privacy cost. {}</p>",
            p.epochs,
            esc(&p.note)
        );
    }
    let _ = writeln!(o, "</section>");
}

/// The nine cells after "training examples" for one evaluation.
fn eval_cells(e: &Evaluation) -> String {
    match e {
        Evaluation::Reported(m) => {
            let confusion = match m.confusion {
                Some(c) => [c.true_pos, c.false_pos, c.true_neg, c.false_neg].iter().map(|x| format!("<td class=\"num\">{x}</td>")).collect(),
                None if m.n > 0 => format!("<td colspan=\"4\" class=\"sup\">{}</td>", suppressed()),
                None => "<td colspan=\"4\" class=\"sup\">n/a</td>".to_owned(),
            };
            format!(
                "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>{confusion}",
                m.n,
                f3(m.accuracy),
                opt3(m.auc),
                opt3(m.brier),
                f3(m.loss)
            )
        }
        Evaluation::Suppressed => format!("<td colspan=\"9\" class=\"sup\">{}</td>", suppressed()),
        Evaluation::NotEvaluated => "<td colspan=\"9\" class=\"sup\">not evaluated</td>".to_owned(),
    }
}

fn rounds(o: &mut String, report: &Report) {
    let _ = writeln!(o, "<section id=\"rounds\">\n<h2>Rounds</h2>");
    let _ = writeln!(
        o,
        "<p class=\"help\">Each round's new global model on the union of the sites' test patients. Training loss is not released \
         under differential privacy.</p>"
    );
    let _ = writeln!(
        o,
        "<table class=\"rounds\">\n<thead><tr><th>round</th><th>sites</th><th>training loss</th><th>test patients</th>\
         <th>test loss</th><th>accuracy</th><th>ROC AUC</th><th>duration</th></tr></thead>\n<tbody>"
    );
    for r in &report.rounds {
        let train = r.train_loss.map_or("<span class=\"dim\">not released</span>".to_owned(), f3);
        let eval = match &r.eval {
            Some(m) if reportable(m.n) => round_cells(m),
            Some(_) => format!("<td colspan=\"4\" class=\"sup\">{}</td>", suppressed()),
            None => "<td colspan=\"4\" class=\"sup\">not evaluated</td>".to_owned(),
        };
        let _ = writeln!(
            o,
            "<tr><td class=\"num\">{}</td><td class=\"num\" title=\"{}\">{}</td><td class=\"num\">{train}</td>{eval}<td class=\"num\">{}</td></tr>",
            r.round,
            esc(&r.sites.join(", ")),
            r.sites.len(),
            duration(r.duration_ms)
        );
    }
    if report.rounds.is_empty() {
        let _ = writeln!(o, "<tr><td colspan=\"8\" class=\"sup\">no round completed</td></tr>");
    }
    let _ = writeln!(o, "</tbody>\n</table>\n</section>");
}

fn round_cells(m: &Metrics) -> String {
    format!(
        "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
        m.n,
        f3(m.loss),
        f3(m.accuracy),
        opt3(m.auc)
    )
}

fn figures_section(o: &mut String, figures: &[Planned]) {
    let _ = writeln!(o, "<section id=\"figures\">\n<h2>Figures</h2>");
    let mut number = 0;
    for p in figures {
        let notes: String = p.notes.iter().map(|n| format!(" {}", esc(n))).collect();
        match &p.figure {
            Some(f) => {
                number += 1;
                let svg = f.svg.replacen("<svg ", &format!("<svg role=\"img\" aria-label=\"{}\" ", esc(&f.title)), 1);
                let _ = writeln!(
                    o,
                    "<figure id=\"fig-{}\">\n{svg}<figcaption><strong>Figure {number}. {}.</strong>{notes}</figcaption>\n</figure>",
                    f.name,
                    esc(&f.title)
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "<figure id=\"fig-{}\" class=\"absent\"><figcaption><strong>{}.</strong>{notes}</figcaption></figure>",
                    p.name,
                    esc(&p.title)
                );
            }
        }
    }
    let _ = writeln!(o, "</section>");
}

fn audit(o: &mut String, card: &ModelCard) {
    let _ = writeln!(o, "<section id=\"audit\">\n<h2>Audit logs</h2>");
    if card.audit_heads.is_empty() {
        let _ = writeln!(o, "<p>Not available in the report: each site exports its own with <code>site-agent audit verify</code>.</p>");
    } else {
        let _ = writeln!(o, "<table class=\"narrow\">\n<thead><tr><th>site</th><th>audit-log head hash</th></tr></thead>\n<tbody>");
        for (site, head) in &card.audit_heads {
            let _ = writeln!(o, "<tr><td>{}</td><td><code>{}</code></td></tr>", esc(site), esc(head));
        }
        let _ = writeln!(o, "</tbody>\n</table>");
    }
    let _ = writeln!(o, "</section>");
}

/// Text from the report, safe inside an element or a quoted attribute.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A metric as the tables show it.
pub(crate) fn f3(x: f64) -> String {
    format!("{x:.3}")
}

fn opt3(x: Option<f64>) -> String {
    x.map_or("n/a".to_owned(), f3)
}

fn pct(fraction: f64) -> String {
    format!("{}", (fraction * 1000.0).round() / 10.0)
}

fn duration(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

const CSS: &str = r#"
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1a1a1a; background: #fff; margin: 0; line-height: 1.45; }
main { max-width: 1040px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.7rem; margin: 0 0 .3rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.lead { font-size: 1.05rem; color: #333; margin-top: 0; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 1rem 0; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; overflow-wrap: anywhere; }
.warnings { border: 2px solid #b00020; border-left-width: 8px; background: #fdecee; padding: .4rem 1rem .6rem; margin: 1.2rem 0; border-radius: 4px; }
.warnings h2 { color: #b00020; border: none; margin: .4rem 0; }
.warnings li { font-weight: 600; margin: .3rem 0; }
.ok { color: #2e6b30; }
.use { font-weight: 600; }
.help { color: #444; font-size: .92rem; }
.dim { color: #666; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; white-space: nowrap; }
th, td { border: 1px solid #d5d5d5; padding: .28rem .55rem; vertical-align: top; }
thead th { background: #f3f3f3; font-weight: 600; text-align: center; }
tbody th { text-align: left; font-weight: 600; overflow-wrap: anywhere; max-width: 16rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.sup { color: #666; font-style: italic; text-align: center; }
tr.fed th, tr.fed td { background: #f6f6f6; font-weight: 600; }
tr.ref th, tr.ref td { color: #444; }
figure { margin: 1.5rem 0; break-inside: avoid; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .92rem; color: #333; margin-top: .4rem; }
figure.absent { border-left: 4px solid #ccc; padding-left: .8rem; }
footer { margin-top: 3rem; font-size: .85rem; color: #666; }
@media print { main { max-width: none; } .warnings { break-inside: avoid; } }
"#;
