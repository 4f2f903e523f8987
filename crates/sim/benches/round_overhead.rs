//! Per-round coordination overhead with no-op training.
//!
//! For each federation size N (default 4, 32 and 256) this starts a real coordinator in this
//! process on 127.0.0.1:0 (state file in a fresh temporary folder), N fake "no-op" sites as
//! tokio tasks that speak the real gRPC protocol (Join, then one Submit per task, answering
//! instantly with well-formed minimal payloads), submits the heart-disease example job with
//! `min_sites = min_sites_per_round = N` through the admin API and follows its events. A round
//! is the train stage plus the eval stage (two task/reply exchanges per site).
//!
//! Round time, primary figure: measured with `Instant` (sub-microsecond) on the site side, as
//! the time between the first site receiving round r's train task and the first site
//! receiving round r+1's train task (for the last round: the job's End task). That spans both
//! stages, FedAvg, persisting the round and publishing its events. The first rounds are
//! skipped as warm-up. Two cross-checks are printed as well: the mean gap between `RoundDone`
//! events as received by the watching admin client (events can arrive in batches, so single
//! gaps there are not trustworthy, only the mean), and the coordinator's own `round_ms`
//! (millisecond resolution).
//!
//! Run (release/bench profile):
//!
//! ```text
//! cargo bench -p fedcare-sim --bench round_overhead                      # N = 4, 32, 256
//! cargo bench -p fedcare-sim --bench round_overhead -- 4 32              # chosen sizes
//! cargo bench -p fedcare-sim --bench round_overhead -- --rounds 100 --warmup 5 4
//! cargo bench -p fedcare-sim --bench round_overhead -- --shared-channel  # one HTTP/2 connection for all sites
//! cargo bench -p fedcare-sim --bench round_overhead -- --state-dir /dev/shm  # state file on tmpfs
//! ```
//!
//! By default every fake site has its own `Channel` (its own TCP + HTTP/2 connection), as
//! real hospitals would. The coordinator's tonic server leaves `max_concurrent_streams` unset
//! (tonic passes `None` to hyper, so no SETTINGS limit is advertised), so `--shared-channel`
//! also works with 256 open `Join` streams on one connection.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedcare_job::JobSpec;
use fedcare_models::metrics::HIST_BINS;
use fedcare_proto::PROTOCOL_VERSION;
use fedcare_proto::v1 as pb;
use fedcare_proto::v1::site_service_client::SiteServiceClient;
use fedcare_server::client::{AdminClient, ClientError};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

const DEFAULT_SIZES: [usize; 3] = [4, 32, 256];

struct Args {
    sizes: Vec<usize>,
    rounds: u32,
    warmup: usize,
    shared_channel: bool,
    state_dir: Option<PathBuf>,
}

const USAGE: &str = "usage: round_overhead [--rounds R] [--warmup W] [--shared-channel] [--state-dir DIR] [N ...]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args { sizes: Vec::new(), rounds: 50, warmup: 2, shared_channel: false, state_dir: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            // `cargo bench` passes --bench to harness = false targets.
            "--bench" => {}
            "--rounds" => args.rounds = value("--rounds")?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--warmup" => args.warmup = value("--warmup")?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--shared-channel" => args.shared_channel = true,
            "--state-dir" => args.state_dir = Some(PathBuf::from(value("--state-dir")?)),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            n => args.sizes.push(n.parse().map_err(|_| format!("unexpected argument {n:?}\n{USAGE}"))?),
        }
    }
    if args.sizes.is_empty() {
        args.sizes = DEFAULT_SIZES.to_vec();
    }
    if args.sizes.contains(&0) {
        return Err("a federation needs at least one site".into());
    }
    if args.rounds as usize <= args.warmup {
        return Err(format!("--rounds ({}) must exceed --warmup ({})", args.rounds, args.warmup));
    }
    Ok(args)
}

/// The example job, edited so that exactly `n` sites are needed for the job and every round.
/// If this version of the job spec has secure aggregation, it is switched off: the no-op sites
/// speak the plain FedAvg exchange (a `ModelUpdate` per train task), which is what this bench
/// measures.
fn job_text(n: usize, rounds: u32) -> Result<String, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/heart-disease/job.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut spec = JobSpec::from_toml(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    spec.name = format!("round-overhead-bench-{n}-sites");
    spec.rounds = rounds;
    spec.min_sites = n as u32;
    spec.min_sites_per_round = Some(n as u32);
    // Round-trip through a TOML table so optional sections are edited only if this version of
    // `JobSpec` has them.
    let mut table: toml::Table = toml::from_str(&toml::to_string(&spec).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if let Some(toml::Value::Table(sa)) = table.get_mut("secure_aggregation") {
        sa.insert("enabled".into(), toml::Value::Boolean(false));
    }
    // The no-op sites send no privatised updates: the bench measures coordination only.
    if let Some(toml::Value::Table(p)) = table.get_mut("privacy") {
        p.clear();
        p.insert("unit".into(), toml::Value::String("none".into()));
    }
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    JobSpec::from_toml(&text, "bench job").map_err(|e| e.to_string())?;
    Ok(text)
}

/// When the first site received each round's train task (index = round), and the End task.
#[derive(Clone, Default)]
struct RoundMarks(Arc<Mutex<Marks>>);

/// Per round, when its train task first reached a site; and when the End task did.
type Marks = (Vec<Option<Instant>>, Option<Instant>);

impl RoundMarks {
    /// Records that a site received round `round`'s train task now; returns `round`.
    fn mark(&self, round: u32) -> u32 {
        let now = Instant::now();
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let r = round as usize;
        if m.0.len() <= r {
            m.0.resize(r + 1, None);
        }
        m.0[r].get_or_insert(now);
        round
    }

    fn mark_end(&self) {
        let now = Instant::now();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1.get_or_insert(now);
    }

    /// Round r's time for r = 1..=rounds: start of r+1 (or End) minus start of r.
    fn durations(&self, rounds: u32) -> Result<Vec<Duration>, String> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let start = |r: u32| m.0.get(r as usize).copied().flatten().ok_or(format!("no site saw round {r}'s train task"));
        (1..=rounds)
            .map(|r| {
                let end = if r == rounds { m.1.ok_or("no site saw the End task")? } else { start(r + 1)? };
                Ok(end - start(r)?)
            })
            .collect()
    }
}

/// A site that does no work: it accepts the job and answers every task at once with
/// well-formed minimal payloads (zero sums, a zero delta, a one-example evaluation), over the
/// real protocol. Returns the number of tasks answered.
async fn noop_site(channel: Channel, site_id: String, marks: RoundMarks) -> Result<u64, String> {
    use pb::site_reply::Kind as R;
    use pb::task::Kind as T;
    let mut client = SiteServiceClient::new(channel);
    // `..Default::default()` keeps the literals valid if the messages gain fields.
    let join = pb::JoinRequest {
        site_id: site_id.clone(),
        protocol_version: PROTOCOL_VERSION,
        agent_version: "round-overhead bench".into(),
        // The bench runs plain FedAvg (secure aggregation has its own bench), so the key only
        // has to have the right length.
        identity_public_key: vec![0; 32],
    };
    let mut stream = client.join(join).await.map_err(|s| format!("{site_id}: join refused: {}", s.message()))?.into_inner();
    let mut width = 0usize;
    let mut answered = 0u64;
    while let Some(task) = stream.message().await.map_err(|s| format!("{site_id}: stream error: {}", s.message()))? {
        let kind = match task.kind {
            Some(T::Offer(o)) => {
                let spec = JobSpec::from_toml(&o.spec_toml, "offered job").map_err(|e| format!("{site_id}: {e}"))?;
                width = spec.n_features();
                R::Decision(pb::JobDecision { accept: true, ..Default::default() })
            }
            Some(T::Stats(_)) => R::Stats(pb::FeatureSums {
                count: vec![1; width],
                sum: vec![0.0; width],
                sum_sq: vec![1.0; width]
            }),
            Some(T::Train(t)) => R::Update(pb::ModelUpdate {
                round: marks.mark(t.round),
                num_examples: 1,
                delta: vec![0.0; t.model.map_or(0, |m| m.values.len())],
                train_loss: 0.0
            }),
            // The coordinator refuses an evaluation of 0 examples, so the smallest valid one:
            // one negative example, predicted 0 (first bin), correct, zero loss.
            Some(T::Eval(e)) => R::Evaluation(pb::Evaluation {
                round: e.round,
                num_examples: 1,
                loss_sum: 0.0,
                correct: 1,
                auc: None,
                pos_hist: vec![0; HIST_BINS],
                neg_hist: std::iter::once(1).chain(std::iter::repeat_n(0, HIST_BINS - 1)).collect(),
                ..Default::default()
            }),
            Some(T::End(_)) => {
                marks.mark_end();
                return Ok(answered);
            }
            None => return Err(format!("{site_id}: task {} has no kind", task.task_id)),
            #[allow(unreachable_patterns)]
            Some(_) => return Err(format!("{site_id}: task {} is of a kind this no-op site does not speak", task.task_id)),
        };
        let reply = pb::SiteReply { site_id: site_id.clone(), job_id: task.job_id, task_id: task.task_id, kind: Some(kind) };
        client.submit(reply).await.map_err(|s| format!("{site_id}: reply refused: {}", s.message()))?;
        answered += 1;
    }
    Err(format!("{site_id}: the coordinator closed the stream before the job ended"))
}

struct Measurement {
    sites: usize,
    /// Per-round wall time seen by the sites, warm-up rounds removed.
    rounds: Vec<Duration>,
    /// Mean gap between `RoundDone` events on the watching client, same rounds.
    watcher_mean: Duration,
    /// The coordinator's own `round_ms` for the same rounds (millisecond resolution).
    server_round_ms: Vec<u64>,
    /// Connecting and joining all sites.
    connect: Duration,
    /// Submit to `StatsDone` (offers + statistics stage), on the watcher.
    setup: Duration,
    /// Submit to `Finished`, on the watcher.
    total: Duration,
    /// The job finished but its report could not be parsed by `AdminClient::watch`.
    report_error: Option<String>,
}

async fn run_one(n: usize, args: &Args) -> Result<Measurement, String> {
    let base = args.state_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("fedcare-bench-").tempdir_in(&base).map_err(|e| format!("tempdir in {}: {e}", base.display()))?;
    let state = dir.path().join("coordinator.redb");
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (listener, addr, coordinator) =
        fedcare_server::bind("127.0.0.1:0".parse().expect("valid literal address"), &state).await.map_err(|e| e.to_string())?;
    let shutdown = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(fedcare_server::serve_on(listener, coordinator, fedcare_server::Security::Plaintext, shutdown));
    let url = format!("http://{addr}");
    let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| e.to_string())?.connect_timeout(Duration::from_secs(10));

    let t0 = Instant::now();
    let shared = if args.shared_channel { Some(endpoint.connect().await.map_err(|e| e.to_string())?) } else { None };
    let round_marks = RoundMarks::default();
    let mut sites = Vec::with_capacity(n);
    for i in 0..n {
        let marks = round_marks.clone();
        let channel = match &shared {
            Some(c) => c.clone(),
            None => endpoint.connect().await.map_err(|e| format!("site {i}: {e}"))?,
        };
        sites.push(tokio::spawn(async move {
            let r = noop_site(channel, format!("site-{i:03}"), marks).await;
            if let Err(e) = &r {
                eprintln!("error: {e}");
            }
            r
        }));
    }
    let mut admin = AdminClient::connect(&url).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let connected = admin.sites().await.map_err(|e| e.to_string())?.len();
        if connected >= n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {connected} of {n} sites joined within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connect = t0.elapsed();

    let spec_text = job_text(n, args.rounds)?;
    let submitted = Instant::now();
    let job_id = admin.submit(&spec_text).await.map_err(|e| e.to_string())?;
    let mut stats_at = None;
    let mut marks: Vec<(u32, Instant, u64)> = Vec::new();
    let mut finished_at = None;
    let watched = admin
        .watch(&job_id, |e| {
            let now = Instant::now();
            match &e.kind {
                Some(pb::job_event::Kind::StatsDone(_)) => stats_at = Some(now),
                Some(pb::job_event::Kind::RoundDone(r)) => marks.push((r.round, now, r.round_ms)),
                Some(pb::job_event::Kind::Finished(_)) => finished_at = Some(now),
                Some(pb::job_event::Kind::Refused(r)) => eprintln!("warning: site {} left round {}: {}", r.site_id, r.round, r.reason),
                _ => {}
            }
        })
        .await;
    let report_error = match watched {
        Ok(_) => None,
        // The job did finish; only the client-side parse of its report failed.
        Err(ClientError::BadReport(m)) if finished_at.is_some() => Some(m),
        Err(e) => return Err(format!("{n} sites: {e}")),
    };
    let finished_at = finished_at.ok_or("no Finished event")?;
    let stats_at = stats_at.ok_or("no StatsDone event")?;

    for s in sites {
        match tokio::time::timeout(Duration::from_secs(30), s).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(format!("site task panicked: {e}")),
            Err(_) => return Err("a site did not receive its End task within 30 s".into()),
        }
    }
    let _ = stop_tx.send(true);
    drop(admin);
    drop(shared);
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("server: {e}")),
        Ok(Err(e)) => return Err(format!("server task: {e}")),
        Err(_) => eprintln!("warning: the coordinator did not shut down within 10 s"),
    }

    if marks.len() != args.rounds as usize {
        return Err(format!("saw {} RoundDone events, expected {}", marks.len(), args.rounds));
    }
    let skip = args.warmup;
    let rounds = round_marks.durations(args.rounds)?.split_off(skip);
    let mut prev = stats_at;
    let mut watcher_gaps = Vec::new();
    let mut server_round_ms = Vec::new();
    for (i, (round, at, ms)) in marks.iter().enumerate() {
        if *round as usize != i + 1 {
            return Err(format!("RoundDone for round {round} arrived in position {}", i + 1));
        }
        if i >= skip {
            watcher_gaps.push(*at - prev);
            server_round_ms.push(*ms);
        }
        prev = *at;
    }
    Ok(Measurement {
        sites: n,
        rounds,
        watcher_mean: watcher_gaps.iter().sum::<Duration>() / watcher_gaps.len() as u32,
        server_round_ms,
        connect,
        setup: stats_at - submitted,
        total: finished_at - submitted,
        report_error,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let state_base = args.state_dir.clone().unwrap_or_else(std::env::temp_dir);
    println!(
        "round_overhead: {} rounds per job, first {} skipped; {}; state file under {}; {} worker threads",
        args.rounds,
        args.warmup,
        if args.shared_channel { "all sites share one Channel" } else { "one Channel (TCP + HTTP/2 connection) per site" },
        state_base.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let mut results = Vec::new();
    for &n in &args.sizes {
        eprintln!("running {n} sites ...");
        match run_one(n, &args).await {
            Ok(m) => {
                if let Some(e) = &m.report_error {
                    eprintln!("note: {n} sites: the job finished but AdminClient::watch could not parse its report: {e}");
                }
                results.push(m);
            }
            Err(e) => {
                eprintln!("error: {n} sites: {e}");
                std::process::exit(1);
            }
        }
    }
    println!();
    println!(
        "| sites | rounds measured | mean ms/round | median ms/round | p95 ms/round | max ms | watcher mean ms | coordinator round_ms mean | join all sites ms | submit->stats ms | submit->finished s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &results {
        let mut v: Vec<f64> = m.rounds.iter().copied().map(ms).collect();
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let server_mean = m.server_round_ms.iter().sum::<u64>() as f64 / m.server_round_ms.len() as f64;
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} | {:.2} |",
            m.sites,
            v.len(),
            mean,
            median(&v),
            percentile(&v, 95.0),
            v[v.len() - 1],
            ms(m.watcher_mean),
            server_mean,
            ms(m.connect),
            ms(m.setup),
            m.total.as_secs_f64(),
        );
    }
}
