//! `coordinator`: runs a federation's coordinator, a whole simulated federation, or the
//! research lead's commands against a running coordinator. All logic lives in the libraries
//! (`fedcare-server`, `fedcare-sim`); this file parses arguments and reports errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fedcare_cli::lead;
use fedcare_cli::watch::{WatchMode, Watcher};
use fedcare_server::client::{AdminClient, ProgressPrinter};

#[derive(Parser)]
#[command(name = "coordinator", version, about = "fedcare coordinator: orchestrates federated training across hospital sites.", long_about = "\
fedcare coordinator: orchestrates federated training across hospital sites.

Sites dial out to the coordinator; it never connects to them. Research leads submit jobs
(TOML job specs) and follow them with the commands below.

Quick start (a whole federation of four simulated hospitals on this machine):
  coordinator simulate

Separate processes, with mutual TLS (see README.md, \"Run it as a real federation\"):
  coordinator pki init --ca ca --federation demo
  coordinator serve --listen 127.0.0.1:50051 --tls tls/coordinator
  site-agent run --config examples/heart-disease/sites/cleveland.toml   (one per site)
  coordinator submit examples/heart-disease/job.toml --coordinator https://127.0.0.1:50051 \\
      --tls tls/lead --watch --out out/")]
struct Cli {
    #[command(flatten)]
    global: fedcare_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the site and admin gRPC services until Ctrl-C.
    #[command(group = clap::ArgGroup::new("security").required(true).args(["tls", "insecure_plaintext"]))]
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// The coordinator's state file (created if missing): jobs, rounds, models, results.
        #[arg(long, default_value = "coordinator.redb")]
        state: PathBuf,
        /// The coordinator's TLS folder: its key (<name>.key), its certificate (<name>.pem,
        /// role coordinator), ca.pem and crl.pem. Every connection is then mutual TLS, and
        /// crl.pem is re-read when it changes.
        #[arg(long, env = "FEDCARE_TLS")]
        tls: Option<PathBuf>,
        /// Serve without TLS or authentication (sites are known by the name they send). For
        /// development on one machine only.
        #[arg(long)]
        insecure_plaintext: bool,
        /// The coordinator's tamper-evident audit log (default: coordinator.audit.jsonl beside
        /// the state file): jobs submitted and by whom, sites connected and as whom, each round's
        /// sites and model hash, each released model and report. Check it with `coordinator
        /// audit verify`.
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Also serve Prometheus metrics (OpenMetrics text) on GET /metrics at this address,
        /// over plain HTTP (no secrets or patient-derived figures are in it): rounds and their
        /// durations, sites connected, jobs, bytes to and from sites, refusals by reason.
        /// Example: --metrics-listen 0.0.0.0:9464
        #[arg(long, env = "FEDCARE_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
    },
    /// Check that a coordinator answers the standard gRPC health check (grpc.health.v1) with
    /// SERVING: exit status 0 if so, 1 otherwise. For container HEALTHCHECKs and Kubernetes
    /// exec probes, which cannot present a client certificate themselves.
    #[command(after_help = "Example (inside the coordinator's container, with its own TLS folder):\n  coordinator health --coordinator https://127.0.0.1:50051 --tls /etc/fedcare/tls")]
    Health {
        #[command(flatten)]
        remote: Remote,
        /// The service to check ("" for the server as a whole).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Check or show an audit log (the coordinator's, or a site's).
    Audit {
        #[command(subcommand)]
        command: fedcare_cli::AuditCommand,
    },
    /// The federation's certificate authority and enrolment (runs locally).
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Run a whole federation in this process over real gRPC on localhost: a coordinator and
    /// one site agent per file in EXAMPLE/sites, on the bundled data.
    Simulate {
        /// Example folder with job.toml and sites/*.toml.
        #[arg(long, default_value = "examples/heart-disease")]
        example: PathBuf,
        /// Override the job's number of rounds.
        #[arg(long)]
        rounds: Option<u32>,
        /// Output folder for model.safetensors, report.json, report.html (figures in figures/),
        /// model-card.md/json, the audit logs, ledgers and PKI, and the coordinator's state file.
        #[arg(long, default_value = "out/heart-disease")]
        out: PathBuf,
        /// Skip the pooled (central) reference model.
        #[arg(long)]
        no_pooled_reference: bool,
        /// Turn secure aggregation off (the coordinator then sees each site's update).
        #[arg(long)]
        no_secure_aggregation: bool,
        /// Plaintext gRPC instead of mutual TLS between the simulated parties.
        #[arg(long)]
        no_mtls: bool,
        /// Override the job's target epsilon (same mechanism and unit).
        #[arg(long, conflicts_with = "no_privacy")]
        epsilon: Option<f64>,
        /// Run without differential privacy (privacy.unit = "none"), e.g. to compare.
        #[arg(long)]
        no_privacy: bool,
    },
    /// Submit a job spec to a running coordinator.
    Submit {
        /// The job spec (TOML).
        job: PathBuf,
        #[command(flatten)]
        remote: Remote,
        /// Follow the job until it ends, then print the results.
        #[arg(long)]
        watch: bool,
        /// With --watch: write model.safetensors, report.json, report.html (with figures/*.svg)
        /// and model-card.md/json here when the job finishes.
        #[arg(long, requires = "watch")]
        out: Option<PathBuf>,
        /// text, or json: the job id as {"job_id": ...}; with --watch one JSON object per event.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Follow a job live until it ends (replays what happened so far): a bar for the rounds,
    /// one for the current stage, one line per site; plain lines when not on a terminal.
    #[command(after_help = "Examples:\n  coordinator watch 3f2a9c1b07de\n  coordinator watch 3f2a9c1b07de --output json | jq -c 'select(.event == \"round_done\")'")]
    Watch {
        /// The job's id, or a unique prefix of it (at least 4 characters).
        job_id: String,
        #[command(flatten)]
        remote: Remote,
        /// text, or json: one JSON object per event on stdout.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// List the sites known to a coordinator: connected (idle or in a job) or lost.
    Sites {
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// A research lead's jobs: list them, show one's rounds and results, cancel one.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Privacy planning for research leads (runs locally; contacts no coordinator).
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// Download a finished job's model and report: model.safetensors, report.json, report.html
    /// (self-contained, with figures/*.svg) and model-card.md/json.
    Fetch {
        /// The job's id, or a unique prefix of it (at least 4 characters).
        job_id: String,
        #[command(flatten)]
        remote: Remote,
        /// Output folder.
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
}

/// How a research lead's command reaches the coordinator.
#[derive(clap::Args)]
struct Remote {
    /// The coordinator's URL: https:// (mutual TLS, needs --tls) or http:// (development
    /// only: no TLS, a warning is printed).
    #[arg(long, default_value = "https://127.0.0.1:50051", env = "FEDCARE_COORDINATOR")]
    coordinator: String,
    /// Your TLS folder (your <name>.key, the <name>.pem the CA signed, ca.pem).
    #[arg(long, env = "FEDCARE_TLS")]
    tls: Option<PathBuf>,
}

impl Remote {
    async fn connect(&self) -> Result<AdminClient> {
        let party = match &self.tls {
            Some(dir) => Some(fedcare_pki::PartyFiles::load(dir).with_context(|| format!("TLS folder {}", dir.display()))?),
            None => None,
        };
        if self.coordinator.starts_with("http://") {
            eprintln!("warning: {} is plain http: no TLS, no authentication (development only)", self.coordinator);
        }
        Ok(AdminClient::connect_as(&self.coordinator, party.as_ref()).await?)
    }
}


#[derive(Subcommand)]
enum JobsCommand {
    /// Every job the coordinator has recorded, newest first: state, rounds done, last
    /// accuracy, and why a job failed or was cancelled.
    #[command(visible_alias = "ls", after_help = "Examples:\n  coordinator jobs list\n  coordinator jobs list --output json | jq -r '.[] | select(.state == \"running\") | .job_id'")]
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// One job: its state, every completed round (loss, accuracy, AUC, duration) and, once it
    /// has finished, each site's results (accuracy, AUC, Brier score, confusion counts) with a
    /// warning for any site where the model does noticeably worse. Figures over fewer than 10
    /// patients are suppressed.
    #[command(visible_alias = "describe", after_help = "Example:\n  coordinator jobs show 3f2a9c1b07de")]
    Show {
        /// The job's id, or a unique prefix of it (at least 4 characters).
        job_id: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Stop a running job. Its sites are told it ended (they spend no more privacy budget);
    /// the rounds done so far stay recorded, and the cancellation is in the audit log with
    /// your identity and reason.
    #[command(visible_alias = "stop", after_help = "Example:\n  coordinator jobs cancel 3f2a9c1b07de --reason \"wrong feature list\"")]
    Cancel {
        /// The job's id, or a unique prefix of it (at least 4 characters).
        job_id: String,
        /// Why (recorded with your identity).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the federation's CA in a new folder (its key never leaves it).
    #[command(after_help = "Example:\n  coordinator pki init --ca ca --federation heart-study")]
    Init {
        /// The CA's folder (created; must not hold a CA already).
        #[arg(long)]
        ca: PathBuf,
        /// The federation's name (in the CA certificate).
        #[arg(long)]
        federation: String,
        /// Validity of the CA certificate in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Make a key and a certificate signing request in a party's TLS folder. Run it on the
    /// party's own machine: the key stays there; send the .csr to the CA's operator.
    #[command(after_help = "Example:\n  coordinator pki request --dir tls/lead --name alice")]
    Request {
        /// The party's TLS folder (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The party's name (file names; the CA decides the certificate's identity).
        #[arg(long)]
        name: String,
    },
    /// Sign a CSR as the CA: the role and name are the CA operator's decision, never the CSR's.
    /// Writes the certificate, and copies ca.pem and the current crl.pem, into --out's folder.
    #[command(after_help = "Examples:\n  coordinator pki sign --ca ca --csr tls/cleveland/cleveland.csr --role site --name cleveland\n  coordinator pki sign --ca ca --csr tls/coordinator/coordinator.csr --role coordinator --name coordinator --host 127.0.0.1 --host localhost")]
    Sign {
        #[arg(long)]
        ca: PathBuf,
        /// The party's certificate signing request.
        #[arg(long)]
        csr: PathBuf,
        /// coordinator, site, research-lead or operator.
        #[arg(long)]
        role: String,
        /// The party's name: a site's id, a person's or service's name.
        #[arg(long)]
        name: String,
        /// DNS names or IP addresses the coordinator serves under (coordinator only).
        #[arg(long)]
        host: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where to write the certificate (default: beside the CSR, <stem>.pem).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a certificate and issue a new CRL (crl.pem in the CA folder; give it to the
    /// coordinator, which reloads it).
    #[command(group = clap::ArgGroup::new("which").required(true).args(["serial", "cert"]))]
    Revoke {
        #[arg(long)]
        ca: PathBuf,
        /// The certificate's serial (as `pki list` shows it).
        #[arg(long)]
        serial: Option<String>,
        /// The certificate file.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
    /// List the certificates this CA issued, with their status.
    List {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum PrivacyCommand {
    /// Epsilon of DP-SGD-style training (Poisson-sampled Gaussian, Rényi DP accounting with the
    /// conversion of Google's dp_accounting), or with --target-epsilon the smallest noise
    /// multiplier that stays within it.
    #[command(group = clap::ArgGroup::new("given").required(true).args(["noise_multiplier", "target_epsilon"]))]
    Plan {
        /// Noise standard deviation divided by the clipping norm.
        #[arg(long, allow_negative_numbers = true)]
        noise_multiplier: Option<f64>,
        /// Find the smallest noise multiplier whose epsilon is at most this.
        #[arg(long, allow_negative_numbers = true)]
        target_epsilon: Option<f64>,
        /// Probability that a record is in a step's sample, in (0, 1].
        #[arg(long, allow_negative_numbers = true)]
        sampling_rate: f64,
        /// Number of steps (noisy updates).
        #[arg(long)]
        steps: u64,
        /// Target delta, in (0, 1).
        #[arg(long, allow_negative_numbers = true)]
        delta: f64,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn privacy_plan(noise: Option<f64>, target: Option<f64>, q: f64, steps: u64, delta: f64, output: Output) -> Result<()> {
    let (z, eps) = match (noise, target) {
        (Some(z), _) => (z, fedcare_privacy::epsilon_for(z, q, steps, delta)?),
        (None, Some(target)) => {
            let z = fedcare_privacy::smallest_noise_multiplier(target, q, steps, delta)?;
            (z, fedcare_privacy::epsilon_for(z, q, steps, delta)?)
        }
        (None, None) => bail!("give --noise-multiplier or --target-epsilon"),
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "mechanism": "poisson-subsampled gaussian",
                "accountant": "rdp",
                "noise_multiplier": z,
                "sampling_rate": q,
                "steps": steps,
                "delta": delta,
                "epsilon": eps,
                "target_epsilon": target,
            })
        ),
        Output::Text => match target {
            Some(t) => println!("smallest noise multiplier for epsilon <= {t}: {z:.6} (epsilon {eps:.4}, delta {delta:e}, {steps} steps at rate {q})"),
            None => println!("epsilon {eps:.4} at delta {delta:e} (noise multiplier {z}, {steps} steps at rate {q}; Rényi DP accounting)"),
        },
    }
    Ok(())
}

fn pki(command: PkiCommand) -> Result<()> {
    match command {
        PkiCommand::Init { ca, federation, days } => {
            fedcare_pki::init_ca(&ca, &federation, days)?;
            fedcare_pki::crl(&ca)?;
            println!("CA for {federation:?} created in {} (ca.pem is every party's trust anchor; ca.key never leaves this folder)", ca.display());
        }
        PkiCommand::Request { dir, name } => {
            let (key, csr) = fedcare_pki::make_key_and_csr(&dir, &name)?;
            println!("key: {} (stays on this machine)\nrequest: {} (send it to the CA's operator)", key.display(), csr.display());
        }
        PkiCommand::Sign { ca, csr, role, name, host, days, out } => {
            let role: fedcare_pki::Role = role.parse()?;
            let hosts = host.iter().map(|h| h.parse()).collect::<Result<Vec<fedcare_pki::HostName>, _>>()?;
            let csr_pem = std::fs::read_to_string(&csr).with_context(|| format!("cannot read {}", csr.display()))?;
            let cert = fedcare_pki::sign_csr(&ca, &csr_pem, role, &name, fedcare_pki::Validity::Days(days), &hosts)?;
            let out = out.unwrap_or_else(|| csr.with_extension("pem"));
            let folder = out.parent().map(Path::to_path_buf).unwrap_or_default();
            std::fs::write(&out, cert).with_context(|| format!("cannot write {}", out.display()))?;
            std::fs::copy(ca.join(fedcare_pki::CA_FILE), folder.join(fedcare_pki::CA_FILE)).context("cannot copy ca.pem")?;
            std::fs::copy(ca.join(fedcare_pki::CRL_FILE), folder.join(fedcare_pki::CRL_FILE)).context("cannot copy crl.pem")?;
            println!("{role} {name:?}: certificate {} ({days} days); ca.pem and crl.pem copied beside it", out.display());
        }
        PkiCommand::Revoke { ca, serial, cert } => {
            let newly = match (serial, cert) {
                (Some(s), _) => fedcare_pki::revoke(&ca, fedcare_pki::Revoke::Serial(&s.parse()?))?,
                (None, Some(c)) => {
                    let pem = std::fs::read_to_string(&c).with_context(|| format!("cannot read {}", c.display()))?;
                    fedcare_pki::revoke(&ca, fedcare_pki::Revoke::CertPem(&pem))?
                }
                (None, None) => bail!("give --serial or --cert"),
            };
            fedcare_pki::crl(&ca)?;
            println!(
                "{}; new CRL in {} (copy it to the coordinator's TLS folder as crl.pem: it reloads it within seconds)",
                if newly { "revoked" } else { "already revoked" },
                ca.join(fedcare_pki::CRL_FILE).display()
            );
        }
        PkiCommand::List { ca, output: Output::Json } => {
            let issued: Vec<serde_json::Value> = fedcare_pki::list_issued(&ca)?
                .into_iter()
                .map(|i| {
                    let not_after_ms = i.not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                    serde_json::json!({
                        "serial": i.serial.to_string(),
                        "identity": i.identity.to_string(),
                        "not_after": lead::utc(not_after_ms),
                        "expired": i.not_after < std::time::SystemTime::now(),
                        "revoked": i.revoked,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&issued)?);
        }
        PkiCommand::List { ca, output: Output::Text } => {
            let now = std::time::SystemTime::now();
            for i in fedcare_pki::list_issued(&ca)? {
                let validity = match i.not_after.duration_since(now) {
                    Ok(left) => format!("valid {} more days", left.as_secs() / 86_400),
                    Err(_) => "EXPIRED".to_owned(),
                };
                println!("{:<42} {:<36} {validity}{}", i.serial.to_string(), i.identity.to_string(), if i.revoked { ", REVOKED" } else { "" });
            }
        }
    }
    Ok(())
}

/// Resolves the example folder: as given, or inside the source tree this binary was built from
/// (so `coordinator simulate` works from any directory of a clone).
fn example_dir(given: &Path) -> PathBuf {
    if given.exists() || given.is_absolute() {
        return given.to_owned();
    }
    let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(given);
    if in_tree.exists() { in_tree } else { given.to_owned() }
}

fn write_outputs(out: &Path, model: &[u8], report: &fedcare_server::report::Report) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let model_path = out.join("model.safetensors");
    std::fs::write(&model_path, model).with_context(|| format!("cannot write {}", model_path.display()))?;
    let report_path = out.join("report.json");
    std::fs::write(&report_path, serde_json_pretty(report)?).with_context(|| format!("cannot write {}", report_path.display()))?;
    let card = fedcare_server::card::ModelCard::from_report(report).write(out)?;
    let html = fedcare_report_html::write(report, out)?;
    println!(
        "model:  {}\nreport: {} (and {}, figures in {})\ncard:   {} (and {})",
        model_path.display(),
        report_path.display(),
        html.html.display(),
        out.join("figures").display(),
        card.markdown.display(),
        card.json.display()
    );
    Ok(())
}

/// Follows a job until it ends, showing its events as `output` asks; returns its report.
async fn follow(admin: &mut AdminClient, id: &str, rounds: u32, output: Output) -> Result<fedcare_server::report::Report> {
    let mut watcher = Watcher::new(WatchMode::detect(output == Output::Json), rounds);
    let report = admin.watch(id, |e| watcher.event(e)).await;
    watcher.finish();
    Ok(report?)
}

async fn jobs(command: JobsCommand) -> Result<()> {
    match command {
        JobsCommand::List { remote, output } => {
            let jobs = remote.connect().await?.jobs().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&lead::jobs_json(&jobs))?),
                Output::Text => print!("{}", lead::jobs_table(&jobs)),
            }
        }
        JobsCommand::Show { job_id, remote, output } => {
            let mut admin = remote.connect().await?;
            let id = admin.resolve(&job_id).await?;
            let job = admin.job(&id).await?;
            let report = lead::report_of(&job).context("the job's report is not valid JSON")?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&lead::job_json(&job, report.as_ref()))?),
                Output::Text => print!("{}", lead::job_text(&job, report.as_ref())),
            }
        }
        JobsCommand::Cancel { job_id, reason, remote } => {
            let mut admin = remote.connect().await?;
            let id = admin.resolve(&job_id).await?;
            let summary = admin.cancel(&id, &reason).await?;
            println!("job {} {}: {} of {} rounds were done", &summary.job_id[..12.min(summary.job_id.len())], summary.state, summary.rounds_done, summary.rounds_total);
        }
    }
    Ok(())
}

fn serde_json_pretty(report: &fedcare_server::report::Report) -> Result<String> {
    fedcare_server::report::to_json(report).context("cannot encode the report")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    fedcare_cli::run_main(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Audit { command } => fedcare_cli::run_audit(command)?,
        Command::Serve { listen, state, tls, insecure_plaintext: _, audit_log, metrics_listen } => {
            fedcare_cli::init_logging(&cli.global, "info");
            let security = match tls {
                Some(dir) => {
                    let party = fedcare_pki::PartyFiles::load(&dir).with_context(|| format!("TLS folder {}", dir.display()))?;
                    let tls = party.server().with_context(|| format!("TLS folder {}", dir.display()))?;
                    fedcare_server::Security::MutualTls { tls, crl_path: Some(dir.join(fedcare_pki::CRL_FILE)) }
                }
                None => fedcare_server::Security::Plaintext,
            };
            let audit_log = audit_log.unwrap_or_else(|| state.with_file_name("coordinator.audit.jsonl"));
            fedcare_server::serve(listen, &state, &audit_log, security, metrics_listen, fedcare_cli::shutdown_signal())
                .await
                .context("coordinator stopped")?;
        }
        Command::Health { remote, service } => {
            fedcare_cli::init_logging(&cli.global, "error");
            let mut admin = remote.connect().await?;
            if !admin.health(&service).await.with_context(|| format!("health check of {}", remote.coordinator))? {
                bail!("{} answers, but not SERVING", remote.coordinator);
            }
            println!("SERVING");
        }
        Command::Pki { command } => {
            fedcare_cli::restore_sigpipe();
            pki(command)?
        }
        Command::Simulate { example, rounds, out, no_pooled_reference, no_secure_aggregation, no_mtls, epsilon, no_privacy } => {
            fedcare_cli::init_logging(&cli.global, "warn");
            let opts = fedcare_sim::SimOptions {
                example_dir: example_dir(&example),
                rounds,
                out_dir: out,
                pooled_reference: !no_pooled_reference,
                secure_aggregation: no_secure_aggregation.then_some(false),
                mtls: !no_mtls,
                privacy: match (epsilon, no_privacy) {
                    (Some(e), _) => fedcare_sim::PrivacyOverride::TargetEpsilon(e),
                    (None, true) => fedcare_sim::PrivacyOverride::Off,
                    (None, false) => fedcare_sim::PrivacyOverride::AsSpecified,
                },
            };
            let mut printer = ProgressPrinter::default();
            let result = fedcare_sim::run(&opts, |line| printer.print(line))
                .await
                .with_context(|| format!("simulation of {} failed", opts.example_dir.display()))?;
            println!("\nheld-out evaluation of the final model (job {}):\n", &result.report.job_id[..12]);
            print!("{}", result.report.table());
            println!(
                "\nmodel:  {}\nreport: {} (and {}: plots, per-site tables, privacy, the model card's facts)\ncard:   {} (and {})\naudit:  {} (one hash-chained log per site; `site-agent audit verify --log FILE`)\nwall time: {:.2} s",
                result.model_path.display(),
                result.report_path.display(),
                result.html.html.display(),
                result.card.markdown.display(),
                result.card.json.display(),
                result.model_path.with_file_name("audit").display(),
                result.wall.as_secs_f64()
            );
        }
        Command::Submit { job, remote, watch, out, output } => {
            fedcare_cli::init_logging(&cli.global, "warn");
            let text = std::fs::read_to_string(&job).with_context(|| format!("cannot read {}", job.display()))?;
            // Check locally first, so a typo is reported with this file's name and position.
            let spec = fedcare_job::JobSpec::from_toml(&text, &job.display().to_string())?;
            let mut admin = remote.connect().await?;
            let id = admin.submit(&text).await?;
            match output {
                Output::Json => println!("{}", serde_json::json!({ "job_id": id })),
                Output::Text => println!("{id}"),
            }
            if watch {
                let report = follow(&mut admin, &id, spec.rounds, output).await?;
                if output == Output::Text {
                    print!("\n{}", report.table());
                }
                if let Some(out) = out {
                    let (model, report) = admin.fetch(&id).await?;
                    write_outputs(&out, &model, &report)?;
                }
            }
        }
        Command::Watch { job_id, remote, output } => {
            fedcare_cli::init_logging(&cli.global, "warn");
            let mut admin = remote.connect().await?;
            let id = admin.resolve(&job_id).await?;
            let rounds = admin.job(&id).await?.summary.map_or(0, |s| s.rounds_total);
            let report = follow(&mut admin, &id, rounds, output).await?;
            if output == Output::Text {
                print!("{}", report.table());
            }
        }
        Command::Sites { remote, output } => {
            fedcare_cli::init_logging(&cli.global, "warn");
            let mut admin = remote.connect().await?;
            let sites = admin.sites().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&lead::sites_json(&sites))?),
                Output::Text if sites.is_empty() => bail!("no site has connected to {} since it started", remote.coordinator),
                Output::Text => print!("{}", lead::sites_table(&sites)),
            }
        }
        Command::Jobs { command } => {
            fedcare_cli::init_logging(&cli.global, "warn");
            jobs(command).await?;
        }
        Command::Privacy { command: PrivacyCommand::Plan { noise_multiplier, target_epsilon, sampling_rate, steps, delta, output } } => {
            privacy_plan(noise_multiplier, target_epsilon, sampling_rate, steps, delta, output)?;
        }
        Command::Fetch { job_id, remote, out } => {
            fedcare_cli::init_logging(&cli.global, "warn");
            let mut admin = remote.connect().await?;
            let job_id = admin.resolve(&job_id).await?;
            let (model, report) = admin.fetch(&job_id).await?;
            print!("{}", report.table());
            write_outputs(&out, &model, &report)?;
        }
    }
    Ok(())
}
