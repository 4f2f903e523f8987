//! `site-agent`: a hospital's side of the federation. It dials out to the coordinator, joins
//! the jobs its data can serve, trains locally and sends back only model updates and aggregate
//! counts. All logic lives in `fedcare-agent`; this file parses arguments and reports errors.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fedcare_agent::{Agent, AgentConfig};

#[derive(Parser)]
#[command(name = "site-agent", version, about = "fedcare site agent: federated training on this hospital's own records.", long_about = "\
fedcare site agent: federated training on this hospital's own records.

The agent dials OUT to the coordinator (no inbound port is opened). Raw records never leave
this machine: the agent sends only its decision on a job, aggregate feature sums, model
updates and aggregate evaluation counts.

Check that this site's file maps onto a job before joining:
  site-agent check --config site.toml --job job.toml
Run:
  site-agent run --config site.toml
Show what this site has spent of its privacy budget:
  site-agent ledger --config site.toml
Review and approve jobs waiting for this site's approval ([site].policy with manual approval):
  site-agent jobs list --config site.toml
  site-agent jobs show 3f2a9c01 --config site.toml
  site-agent jobs approve 3f2a9c01 --config site.toml")]
struct Cli {
    #[command(flatten)]
    global: fedcare_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the coordinator and take part in jobs until Ctrl-C.
    Run {
        /// The site's config: [site] id and coordinator URL, [data] mapping of the local file.
        #[arg(long)]
        config: PathBuf,
        /// Override [site].coordinator.
        #[arg(long)]
        coordinator: Option<String>,
        /// Override [site].tls: this site's TLS folder (its key, the certificate the CA
        /// signed, ca.pem), needed for an https:// coordinator.
        #[arg(long)]
        tls: Option<PathBuf>,
    },
    /// The site's audit log.
    Audit {
        #[command(subcommand)]
        command: fedcare_cli::AuditCommand,
    },
    /// Show this site's privacy ledger: epsilon spent per job, per round and in total, and
    /// the site's caps. Reads the ledger only (safe while the agent runs).
    #[command(after_help = "Examples:\n  site-agent ledger --config site.toml\n  site-agent ledger --config site.toml --output json")]
    Ledger {
        /// The site's config ([privacy].ledger names the ledger file).
        #[arg(long, required_unless_present = "file")]
        config: Option<PathBuf>,
        /// A ledger file, instead of the one the config names.
        #[arg(long, conflicts_with = "config")]
        file: Option<PathBuf>,
        /// `text` (a table) or `json` (for scripts).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Jobs waiting for this site's manual approval, and approved jobs: review, approve,
    /// revoke. Works on the approvals store beside the site's policy ([site].policy); safe
    /// while the agent runs, which sees an approval within a second.
    #[command(after_help = "\
A job that passes this site's policy waits, with `approval = \"manual\"`, until it is approved
here (until shortly before the job offer's deadline; approved later, it is joined when offered
again). A job is named by its hash or a prefix of at least 8 hex digits.

Examples:
  site-agent jobs list --config site.toml
  site-agent jobs show 3f2a9c01 --config site.toml
  site-agent jobs approve 3f2a9c01 --config site.toml --by \"Dr. Jane Roe, privacy officer\"
  site-agent jobs revoke 3f2a9c01 --config site.toml
  site-agent jobs list --config site.toml --output json")]
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Map this site's file onto a job's schema and print what would be used. Sends nothing.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// The job spec (TOML).
        #[arg(long)]
        job: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs waiting for approval and approved jobs: hash prefix, name, when offered or approved.
    List {
        /// The site's config ([site].policy names the policy; approvals are kept beside it).
        #[arg(long)]
        config: PathBuf,
        /// `text` (a table) or `json` (for scripts).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A job for review: what it trains, on which columns, with which protections, what leaves
    /// this site, and this site's policy's verdict on it.
    Show {
        /// The job's hash, or a prefix of at least 8 hex digits.
        hash: String,
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Approve a job: the agent joins it (if it still passes the policy) at its next look.
    Approve {
        /// The job's hash, or a prefix of at least 8 hex digits of a waiting job's hash.
        hash: String,
        #[arg(long)]
        config: PathBuf,
        /// Who approves, for the record and the site's audit log (default: your login, $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Withdraw an approval: the job is no longer joined when offered (a job already joined
    /// runs on).
    Revoke {
        /// The job's hash, or a prefix of at least 8 hex digits of an approved job's hash.
        hash: String,
        #[arg(long)]
        config: PathBuf,
    },
}


fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    fedcare_cli::run_main(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    fedcare_cli::init_logging(&cli.global, "info");
    match cli.command {
        Command::Run { config, coordinator, tls } => {
            let (mut cfg, base) = AgentConfig::load(&config)?;
            if let Some(url) = coordinator {
                cfg.site.coordinator = url;
            }
            if let Some(dir) = tls {
                // Given on the command line: relative to where the command runs, not to the
                // config file.
                cfg.site.tls = Some(std::path::absolute(&dir).with_context(|| format!("TLS folder {}", dir.display()))?);
            }
            let agent = Agent::new(cfg, base)?;
            agent.run(fedcare_cli::shutdown_signal()).await.context("site agent stopped")?;
        }
        Command::Audit { command } => fedcare_cli::run_audit(command)?,
        Command::Ledger { config, file, output } => {
            let (path, caps) = match (file, config) {
                (Some(file), _) => (file, None),
                (None, Some(config)) => {
                    let (cfg, base) = AgentConfig::load(&config)?;
                    let p = cfg.privacy.with_context(|| format!("{} has no [privacy] section, so this site keeps no ledger", config.display()))?;
                    (base.join(&p.ledger), Some((p.max_epsilon_per_job, p.max_epsilon_total)))
                }
                (None, None) => anyhow::bail!("give --config or --file"),
            };
            if !path.exists() {
                anyhow::bail!("no ledger at {}: this site has spent nothing yet (the agent creates it on start)", path.display());
            }
            let ledger = fedcare_ledger::Ledger::open_read_only(&path).with_context(|| format!("cannot read the ledger {}", path.display()))?;
            match output {
                Output::Json => {
                    let mut v = ledger.to_json();
                    if let (Some((job, total)), Some(obj)) = (caps, v.as_object_mut()) {
                        obj.insert("caps".into(), serde_json::json!({ "max_epsilon_per_job": job, "max_epsilon_total": total }));
                    }
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Text => {
                    print!("{}", ledger.render_text());
                    if let Some((job, total)) = caps {
                        println!("caps: {job} per job, {total} in total ({:.3} left)", (total - ledger.total_epsilon()).max(0.0));
                    }
                }
            }
        }
        Command::Jobs { command } => jobs(command)?,
        Command::Check { config, job } => {
            let (cfg, base) = AgentConfig::load(&config)?;
            let text = std::fs::read_to_string(&job).with_context(|| format!("cannot read {}", job.display()))?;
            let spec = fedcare_job::JobSpec::from_toml(&text, &job.display().to_string())?;
            let (ds, report) = fedcare_data::load(&spec.schema, &cfg.data, &base)?;
            let (train, test) = fedcare_data::split(&ds, &spec.schema.split)?;
            println!("site {} can serve job {} ({})", cfg.site.id, &spec.id().as_str()[..12], spec.name);
            println!("  rows read {}, dropped for missing values {}, kept {}", report.rows_read, report.rows_dropped_missing, report.rows_kept);
            println!("  train {} ({} positive), test {} ({} positive)", train.len(), train.positives(), test.len(), test.positives());
            println!("  encoded features ({}): {}", ds.n_features(), spec.schema.encoded_names().join(", "));
            match spec.privacy_plan()? {
                None => println!("  privacy: none (the job asks for no differential privacy)"),
                Some(plan) => {
                    println!("  privacy: {}", plan.summary());
                    match &cfg.privacy {
                        None => println!("  this site has no [privacy] ledger configured: it would refuse this job"),
                        Some(p) => {
                            let path = base.join(&p.ledger);
                            let spent = if path.exists() { fedcare_ledger::Ledger::open_read_only(&path)?.total_epsilon() } else { 0.0 };
                            let fits = plan.planned_epsilon <= p.max_epsilon_per_job && spent + plan.planned_epsilon <= p.max_epsilon_total;
                            println!(
                                "  budget: {:.3} spent of {} in total, {} per job: this job {}",
                                spent,
                                p.max_epsilon_total,
                                p.max_epsilon_per_job,
                                if fits { "fits" } else { "does NOT fit and would be refused" }
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The site's policy and its approvals store, from the site's config.
struct SiteApprovals {
    policy_path: PathBuf,
    policy: fedcare_policy::Policy,
    store: PathBuf,
}

impl SiteApprovals {
    fn load(config: &std::path::Path) -> Result<SiteApprovals> {
        let (cfg, base) = AgentConfig::load(config)?;
        let relative = cfg.site.policy.with_context(|| {
            format!(
                "{} sets no policy ([site].policy), so this site joins jobs without one and none waits for approval; \
                 add policy = \"policy.toml\" to its [site] table",
                config.display()
            )
        })?;
        let policy_path = base.join(relative);
        let policy = fedcare_policy::Policy::load(&policy_path)?;
        let store = fedcare_policy::Approvals::beside(&policy_path);
        Ok(SiteApprovals { policy_path, policy, store })
    }

    /// The store, created if missing (to approve a job before it is offered).
    fn open(&self) -> Result<fedcare_policy::Approvals> {
        fedcare_policy::Approvals::open(&self.store).with_context(|| format!("the approvals store {}", self.store.display()))
    }

    /// The store if it exists (reading never creates it).
    fn existing(&self) -> Result<Option<fedcare_policy::Approvals>> {
        if self.store.is_dir() { self.open().map(Some) } else { Ok(None) }
    }

    fn manual(&self) -> bool {
        self.policy.approval() == fedcare_policy::Approval::Manual
    }
}

/// A job found by hash prefix: waiting for approval, or approved.
enum FoundJob {
    Pending(Box<fedcare_policy::PendingJob>),
    Approved(fedcare_policy::ApprovalRecord),
}

/// The one pending or approved job whose hash starts with `prefix`.
fn find_job(approvals: Option<&fedcare_policy::Approvals>, prefix: &str) -> Result<FoundJob> {
    use fedcare_policy::ApprovalError::NoMatch;
    let none = || anyhow::anyhow!("no job waiting for approval or approved has a hash starting with {prefix} (`site-agent jobs list` shows them)");
    let Some(approvals) = approvals else {
        anyhow::bail!("no job has waited for approval at this site yet, and none is approved (there is no approvals store)")
    };
    let pending = match approvals.resolve(prefix) {
        Ok(id) => Some(id),
        Err(NoMatch { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let approved = match approvals.resolve_approved(prefix) {
        Ok(id) => Some(id),
        Err(NoMatch { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    match (pending, approved) {
        (Some(p), Some(a)) => anyhow::bail!("a waiting job ({}) and an approved job ({}) have hashes starting with {prefix}; give more digits", p.short(), a.short()),
        (Some(id), None) => approvals.get_pending(id.as_str())?.map(|p| FoundJob::Pending(Box::new(p))).ok_or_else(none),
        (None, Some(id)) => approvals.approval(id.as_str())?.map(FoundJob::Approved).ok_or_else(none),
        (None, None) => Err(none()),
    }
}

/// Milliseconds since the Unix epoch as a UTC time, to the minute.
fn utc(ms: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) {
        Ok(t) => format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute()),
        Err(_) => format!("{ms} ms"),
    }
}

fn jobs(command: JobsCommand) -> Result<()> {
    match command {
        JobsCommand::List { config, output } => {
            let site = SiteApprovals::load(&config)?;
            let (pending, approved) = match site.existing()? {
                Some(a) => (a.pending()?, a.approved()?),
                None => (Vec::new(), Vec::new()),
            };
            // The name of an approved job, if its spec was kept with the approval.
            let name = |r: &fedcare_policy::ApprovalRecord| {
                r.spec_toml.as_deref().and_then(|t| fedcare_job::JobSpec::from_toml(t, "approved job").ok()).map(|s| s.name)
            };
            match output {
                Output::Json => {
                    let v = serde_json::json!({
                        "policy": site.policy_path.display().to_string(),
                        "approval": if site.manual() { "manual" } else { "automatic" },
                        "pending": pending.iter().map(|p| serde_json::json!({
                            "job_hash": p.job_hash, "name": p.spec.name, "offered_at_ms": p.offered_at_ms,
                        })).collect::<Vec<_>>(),
                        "approved": approved.iter().map(|r| serde_json::json!({
                            "job_hash": r.job_hash, "name": name(r), "approved_by": r.approved_by, "approved_at_ms": r.approved_at_ms,
                        })).collect::<Vec<_>>(),
                    });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Text => {
                    if !site.manual() {
                        println!("note: {} approves jobs automatically (approval = \"automatic\"): no job waits here", site.policy_path.display());
                    }
                    println!("waiting for approval: {}", pending.len());
                    for p in &pending {
                        println!("  {}  {}  offered {}", p.job_hash.short(), p.spec.name.escape_debug(), utc(p.offered_at_ms));
                    }
                    println!("approved: {}", approved.len());
                    for r in &approved {
                        let shown = name(r).map_or_else(|| "(spec not kept)".to_owned(), |n| n.escape_debug().to_string());
                        println!("  {}  {}  approved {} by {}", r.job_hash.short(), shown, utc(r.approved_at_ms), r.approved_by.escape_debug());
                    }
                    if let Some(p) = pending.first() {
                        println!("review with `site-agent jobs show {}`, approve with `site-agent jobs approve {}` (and --config)", p.job_hash.short(), p.job_hash.short());
                    }
                }
            }
        }
        JobsCommand::Show { hash, config, output } => {
            let site = SiteApprovals::load(&config)?;
            let approvals = site.existing()?;
            let (status, spec_toml) = match find_job(approvals.as_ref(), &hash)? {
                FoundJob::Pending(p) => (format!("waiting for approval since {}", utc(p.offered_at_ms)), p.spec_toml),
                FoundJob::Approved(r) => {
                    let status = format!("approved {} by {}", utc(r.approved_at_ms), r.approved_by.escape_debug());
                    let text = r.spec_toml.with_context(|| {
                        format!("job {} is {status}, but it was approved by its hash before it was offered, so its spec was not kept", r.job_hash)
                    })?;
                    (status, text)
                }
            };
            let spec = fedcare_job::JobSpec::from_toml(&spec_toml, "recorded job")?;
            let evaluation = site.policy.evaluate(&spec);
            match output {
                Output::Json => {
                    let v = serde_json::json!({
                        "job_hash": spec.id(),
                        "name": spec.name,
                        "status": status,
                        "passes_policy": evaluation.passes(),
                        "violations": evaluation.violations.iter().map(|v| serde_json::json!({ "rule": v.category(), "text": v.to_string() })).collect::<Vec<_>>(),
                        "summary": fedcare_policy::summary_with_policy(&spec, &site.policy),
                        "spec_toml": spec_toml,
                    });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Text => {
                    println!("{}", fedcare_policy::summary_with_policy(&spec, &site.policy).trim_end());
                    println!();
                    println!("Status at this site: {status}");
                }
            }
        }
        JobsCommand::Approve { hash, config, by } => {
            let site = SiteApprovals::load(&config)?;
            let approvals = site.open()?;
            // A prefix names a waiting job; a full hash may name a job not offered yet.
            let id = match approvals.resolve(&hash) {
                Ok(id) => id,
                Err(not_waiting @ fedcare_policy::ApprovalError::NoMatch { .. }) => {
                    if let Ok(id) = approvals.resolve_approved(&hash) {
                        let r = approvals.approval(id.as_str())?.context("the approval vanished")?;
                        println!("job {id} is already approved ({} by {})", utc(r.approved_at_ms), r.approved_by.escape_debug());
                        return Ok(());
                    }
                    match fedcare_job::JobId::parse(&hash) {
                        Some(id) => id,
                        None => return Err(anyhow::Error::new(not_waiting).context("a job not waiting for approval can be approved only by its full 64-digit hash")),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            let by = match by {
                Some(b) => b,
                None => ["USER", "USERNAME"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|n| !n.trim().is_empty()))
                    .context("cannot tell who you are ($USER is not set): give --by NAME")?,
            };
            let pending = approvals.get_pending(id.as_str())?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let record = approvals.approve(id.as_str(), &by, now)?;
            match &pending {
                Some(p) => println!("approved job {} ({}) as {}", id, p.spec.name.escape_debug(), record.approved_by.escape_debug()),
                None => println!("approved job {} as {} (it was not waiting; it will be joined when offered)", id, record.approved_by.escape_debug()),
            }
            if let Some(p) = &pending
                && let Some(reason) = site.policy.evaluate(&p.spec).refusal_reason()
            {
                println!("warning: the job no longer passes {}, and the agent will refuse it: {reason}", site.policy_path.display());
            }
            if !site.manual() {
                println!("note: {} approves jobs automatically (approval = \"automatic\"); this approval matters only with approval = \"manual\"", site.policy_path.display());
            }
        }
        JobsCommand::Revoke { hash, config } => {
            let site = SiteApprovals::load(&config)?;
            let approvals = site.existing()?.with_context(|| format!("no job is approved at this site (no approvals store at {})", site.store.display()))?;
            let id = approvals.resolve_approved(&hash)?;
            approvals.revoke(id.as_str())?;
            println!("revoked the approval of job {id}: it will not be joined when offered again (a run already joined goes on)");
        }
    }
    Ok(())
}
