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
  site-agent ledger --config site.toml")]
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
    },
    /// The site's audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
enum AuditCommand {
    /// Check the hash chain of an audit log; names the first tampered, missing or reordered
    /// entry. Prints the number of entries and the head hash (to record elsewhere).
    Verify {
        /// The audit log file ([site].audit_log in the site's config).
        #[arg(long)]
        log: PathBuf,
    },
    /// Print the entries of a verified audit log, one line each.
    Show {
        #[arg(long)]
        log: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    fedcare_cli::run_main(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    fedcare_cli::init_logging(cli.global.log_format, "info");
    match cli.command {
        Command::Run { config, coordinator } => {
            let (mut cfg, base) = AgentConfig::load(&config)?;
            if let Some(url) = coordinator {
                cfg.site.coordinator = url;
            }
            let agent = Agent::new(cfg, base)?;
            agent.run(fedcare_cli::shutdown_signal()).await.context("site agent stopped")?;
        }
        Command::Audit { command: AuditCommand::Verify { log } } => {
            let report = fedcare_audit::verify(&log).with_context(|| format!("audit log {} does not verify", log.display()))?;
            println!("{}: {} entries, intact", log.display(), report.entries);
            println!("head: {}", report.head.as_deref().unwrap_or("(empty log)"));
        }
        Command::Audit { command: AuditCommand::Show { log } } => {
            let entries = fedcare_audit::read_verified(&log).with_context(|| format!("audit log {} does not verify", log.display()))?;
            for e in entries {
                println!("{:>6} {} {}", e.seq, e.time_unix_ms, serde_json::to_string(&e.event).unwrap_or_default());
            }
        }
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
