//! Following a job live. On a terminal: a bar for the job's rounds, a bar for the current
//! stage, and one line per site saying whether it has answered in this stage, with notable
//! events (rounds done, sites leaving) printed above them. Elsewhere (a log, CI, a pipe): one
//! plain line per notable event and nothing transient. With `--output json`: one JSON object
//! per event on stdout, for scripts.

use std::collections::BTreeMap;
use std::time::Duration;

use fedcare_proto::v1 as pb;
use fedcare_server::client::describe;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::lead::event_json;

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// Bars and per-site lines on stderr (a terminal).
    Bars,
    /// One line per notable event on stderr.
    Lines,
    /// One JSON object per event on stdout.
    Json,
}

impl WatchMode {
    /// Bars if stderr is a terminal, else plain lines; JSON when asked.
    pub fn detect(json: bool) -> WatchMode {
        use std::io::IsTerminal;
        match (json, std::io::stderr().is_terminal()) {
            (true, _) => WatchMode::Json,
            (false, true) => WatchMode::Bars,
            (false, false) => WatchMode::Lines,
        }
    }
}

struct Bars {
    multi: MultiProgress,
    rounds: ProgressBar,
    stage: ProgressBar,
    sites: BTreeMap<String, ProgressBar>,
}

/// A site's line: a spinner while it works on the current stage, a tick once it is done.
fn site_style(working: bool) -> ProgressStyle {
    let template = if working { "{prefix:>12} {spinner} {msg}" } else { "{prefix:>12} ✓ {msg}" };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Shows a job's events as they arrive (see the module docs).
pub struct Watcher {
    mode: WatchMode,
    rounds_total: u32,
    bars: Option<Bars>,
}

impl Watcher {
    /// `rounds_total` is the job's number of rounds (0 if unknown: it is learnt from `jobs show`).
    pub fn new(mode: WatchMode, rounds_total: u32) -> Watcher {
        let bars = (mode == WatchMode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let rounds = multi.add(ProgressBar::new(u64::from(rounds_total.max(1))));
            rounds.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30.green/white}] {pos}/{len} rounds  {elapsed_precise} (eta {eta})  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            rounds.set_prefix("job");
            rounds.set_message("waiting for sites");
            let stage = multi.add(ProgressBar::new(1));
            stage.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30.cyan/white}] {pos}/{len} sites  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            stage.set_prefix("stage");
            rounds.enable_steady_tick(Duration::from_millis(250));
            Bars { multi, rounds, stage, sites: BTreeMap::new() }
        });
        Watcher { mode, rounds_total, bars }
    }

    fn site_bar(bars: &mut Bars, site: &str) -> ProgressBar {
        if let Some(b) = bars.sites.get(site) {
            return b.clone();
        }
        let b = bars.multi.add(ProgressBar::new_spinner());
        b.set_style(site_style(false));
        b.set_prefix(site.to_owned());
        b.enable_steady_tick(Duration::from_millis(120));
        bars.sites.insert(site.to_owned(), b.clone());
        b
    }

    /// Shows one event.
    pub fn event(&mut self, e: &pb::JobEvent) {
        use pb::job_event::Kind;
        match self.mode {
            WatchMode::Json => println!("{}", event_json(e)),
            WatchMode::Lines => {
                if let Some(line) = describe(e, self.rounds_total).filter(|l| !l.transient) {
                    eprintln!("{}", line.text);
                }
            }
            WatchMode::Bars => {
                let rounds_total = self.rounds_total;
                let Some(bars) = self.bars.as_mut() else { return };
                if let Some(line) = describe(e, rounds_total).filter(|l| !l.transient) {
                    let _ = bars.multi.println(line.text);
                }
                match &e.kind {
                    Some(Kind::Joined(j)) => {
                        for s in &j.sites {
                            Self::site_bar(bars, s).set_message("joined");
                        }
                        bars.rounds.set_message(format!("{} sites", j.sites.len()));
                    }
                    Some(Kind::StatsDone(_)) => bars.rounds.set_message("federated statistics done"),
                    Some(Kind::Progress(p)) => {
                        let stage = if p.round > 0 { format!("round {} {}", p.round, p.stage) } else { p.stage.clone() };
                        bars.stage.set_length(u64::from(p.sites_total.max(1)));
                        bars.stage.set_position(u64::from(p.sites_done));
                        bars.stage.set_message(stage.clone());
                        let mut names: Vec<String> = bars.sites.keys().cloned().collect();
                        names.extend(p.waiting.iter().filter(|w| !bars.sites.contains_key(*w)).cloned());
                        for s in &names {
                            let bar = Self::site_bar(bars, s);
                            if p.waiting.contains(s) {
                                bar.set_style(site_style(true));
                                bar.set_message(format!("working: {stage}"));
                            } else {
                                bar.set_style(site_style(false));
                                bar.set_message(format!("done: {stage}"));
                            }
                        }
                    }
                    Some(Kind::RoundDone(r)) => {
                        bars.rounds.set_position(u64::from(r.round));
                        bars.rounds.set_message(format!("accuracy {:.3}", r.eval_accuracy));
                    }
                    Some(Kind::Refused(r)) => Self::site_bar(bars, &r.site_id).set_message(format!("left round {}: {}", r.round, r.reason)),
                    Some(Kind::Finished(_)) | Some(Kind::Failed(_)) => self.finish(),
                    None => {}
                }
            }
        }
    }

    /// Clears the bars (the printed lines stay).
    pub fn finish(&mut self) {
        if let Some(bars) = self.bars.take() {
            for b in bars.sites.values() {
                b.finish_and_clear();
            }
            bars.stage.finish_and_clear();
            bars.rounds.finish_and_clear();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.finish();
    }
}
