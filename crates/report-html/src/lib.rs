//! A finished job's report as one self-contained HTML page, plus the page's figures as SVG
//! files: what a research lead opens in a browser, prints, or attaches to a paper.
//!
//! Everything here is a pure function of a [`Report`] (and of the [`ModelCard`] built from
//! it): figures are the report's own numbers, drawn, never recomputed from anything else.
//! [`render_html`] returns the page, [`figures`] the figures, and [`write`] puts both on disk.
//!
//! Guarantees:
//! - The page is self-contained: CSS and SVG are inline, there is no script and no external
//!   URL, so it opens offline and can be archived as one file.
//! - Small counts are never shown. Metrics, test sizes, confusion-matrix cells and reliability
//!   bins over fewer than [`MIN_REPORTED_N`] patients are left out of every table and figure
//!   and replaced by "suppressed (fewer than 10)". Per-site and federated figures go through
//!   [`ModelCard::from_report`] (the card owns that rule); the per-round figures, which the
//!   card does not cover, apply the same threshold here.
//! - Every piece of text from the report (job name, site names, warnings, statements) is
//!   escaped for HTML; text inside the figures is escaped by the SVG backend.
//!
//! The figures are drawn with `plotters`' SVG backend, without its bitmap and font features:
//! SVG text is laid out by the browser, so no system font is needed to build or render.
//!
//! Never: read anything but the report, write outside the directory given to [`write`].

use std::path::{Path, PathBuf};

use fedcare_server::card::{MIN_REPORTED_N, ModelCard};
use fedcare_server::report::Report;

mod figures;
mod html;

/// One figure of the report, as a standalone SVG document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// File stem: the figure is written to `figures/<name>.svg`.
    pub name: &'static str,
    /// What the figure shows, in words (also its caption in the page).
    pub title: String,
    /// The SVG document (`<svg ...>...</svg>`).
    pub svg: String,
}

/// The report's figures, in the order the page shows them. A figure with nothing to show
/// (no differential privacy, no reliability bins with enough patients, ...) is left out;
/// the page says why.
pub fn figures(report: &Report) -> Vec<Figure> {
    let card = ModelCard::from_report(report);
    figures::plan(report, &card).into_iter().filter_map(|p| p.figure).collect()
}

/// The report as one self-contained HTML page (inline CSS and SVG, no script, no external URL).
pub fn render_html(report: &Report) -> String {
    let card = ModelCard::from_report(report);
    let planned = figures::plan(report, &card);
    html::page(report, &card, &planned)
}

/// What [`write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `<dir>/report.html`.
    pub html: PathBuf,
    /// `<dir>/figures/<name>.svg`, one per figure, in the page's order.
    pub figures: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportHtmlError {
    #[error("cannot create the folder {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `report.html` and `figures/<name>.svg` into `dir` (created if missing; existing
/// files of the same names are replaced).
pub fn write(report: &Report, dir: &Path) -> Result<Written, ReportHtmlError> {
    let card = ModelCard::from_report(report);
    let planned = figures::plan(report, &card);
    let figures_dir = dir.join("figures");
    std::fs::create_dir_all(&figures_dir).map_err(|source| ReportHtmlError::CreateDir { path: figures_dir.clone(), source })?;
    let mut written = Written { html: dir.join("report.html"), figures: Vec::new() };
    for figure in planned.iter().filter_map(|p| p.figure.as_ref()) {
        let path = figures_dir.join(format!("{}.svg", figure.name));
        std::fs::write(&path, &figure.svg).map_err(|source| ReportHtmlError::Write { path: path.clone(), source })?;
        written.figures.push(path);
    }
    let page = html::page(report, &card, &planned);
    std::fs::write(&written.html, page).map_err(|source| ReportHtmlError::Write { path: written.html.clone(), source })?;
    Ok(written)
}

/// Whether metrics over `n` patients may be shown.
fn reportable(n: u64) -> bool {
    n >= MIN_REPORTED_N
}

#[cfg(test)]
mod tests;
