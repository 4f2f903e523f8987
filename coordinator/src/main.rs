//! `coordinator`: runs a federation's coordinator, a whole simulated federation, or the
//! research lead's commands against a running coordinator. All logic lives in the libraries
//! (`fedcare-server`, `fedcare-sim`); this file parses arguments and reports errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fedcare_server::client::{AdminClient, ProgressPrinter, describe};

#[derive(Parser)]
#[command(name = "coordinator", version, about = "fedcare coordinator: orchestrates federated training across hospital sites.", long_about = "\
fedcare coordinator: orchestrates federated training across hospital sites.

Sites dial out to the coordinator; it never connects to them. Research leads submit jobs
(TOML job specs) and follow them with the commands below.

Quick start (a whole federation of four simulated hospitals on this machine):
  coordinator simulate

Separate processes:
  coordinator serve --listen 127.0.0.1:50051 --state coordinator.redb
  site-agent run --config examples/heart-disease/sites/cleveland.toml   (one per site)
  coordinator submit examples/heart-disease/job.toml --watch --out out/")]
struct Cli {
    #[command(flatten)]
    global: fedcare_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the site and admin gRPC services until Ctrl-C.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// The coordinator's state file (created if missing): jobs, rounds, models, results.
        #[arg(long, default_value = "coordinator.redb")]
        state: PathBuf,
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
        /// Output folder for model.safetensors, report.json and the coordinator's state file.
        #[arg(long, default_value = "out/heart-disease")]
        out: PathBuf,
        /// Skip the pooled (central) reference model.
        #[arg(long)]
        no_pooled_reference: bool,
        /// Turn secure aggregation off (the coordinator then sees each site's update).
        #[arg(long)]
        no_secure_aggregation: bool,
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
        #[arg(long, default_value = "http://127.0.0.1:50051", env = "FEDCARE_COORDINATOR")]
        coordinator: String,
        /// Follow the job until it ends, then print the results.
        #[arg(long)]
        watch: bool,
        /// With --watch: write model.safetensors and report.json here when the job finishes.
        #[arg(long, requires = "watch")]
        out: Option<PathBuf>,
    },
    /// Follow a job's progress (replays what happened so far).
    Watch {
        job_id: String,
        #[arg(long, default_value = "http://127.0.0.1:50051", env = "FEDCARE_COORDINATOR")]
        coordinator: String,
    },
    /// List the sites connected to a coordinator.
    Sites {
        #[arg(long, default_value = "http://127.0.0.1:50051", env = "FEDCARE_COORDINATOR")]
        coordinator: String,
    },
    /// Privacy planning for research leads (runs locally; contacts no coordinator).
    Privacy {
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// Download a finished job's model and report.
    Fetch {
        job_id: String,
        #[arg(long, default_value = "http://127.0.0.1:50051", env = "FEDCARE_COORDINATOR")]
        coordinator: String,
        /// Output folder.
        #[arg(long, default_value = "out")]
        out: PathBuf,
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

#[derive(Clone, Copy, ValueEnum)]
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
    println!("model:  {}\nreport: {}", model_path.display(), report_path.display());
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
        Command::Serve { listen, state } => {
            fedcare_cli::init_logging(cli.global.log_format, "info");
            fedcare_server::serve(listen, &state, fedcare_cli::shutdown_signal()).await.context("coordinator stopped")?;
        }
        Command::Simulate { example, rounds, out, no_pooled_reference, no_secure_aggregation, epsilon, no_privacy } => {
            fedcare_cli::init_logging(cli.global.log_format, "warn");
            let opts = fedcare_sim::SimOptions {
                example_dir: example_dir(&example),
                rounds,
                out_dir: out,
                pooled_reference: !no_pooled_reference,
                secure_aggregation: no_secure_aggregation.then_some(false),
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
                "\nmodel:  {}\nreport: {}\naudit:  {} (one hash-chained log per site; `site-agent audit verify --log FILE`)\nwall time: {:.2} s",
                result.model_path.display(),
                result.report_path.display(),
                opts.out_dir.join("audit").display(),
                result.wall.as_secs_f64()
            );
        }
        Command::Submit { job, coordinator, watch, out } => {
            fedcare_cli::init_logging(cli.global.log_format, "warn");
            let text = std::fs::read_to_string(&job).with_context(|| format!("cannot read {}", job.display()))?;
            // Check locally first, so a typo is reported with this file's name and position.
            let spec = fedcare_job::JobSpec::from_toml(&text, &job.display().to_string())?;
            let mut admin = AdminClient::connect(&coordinator).await?;
            let id = admin.submit(&text).await?;
            println!("{id}");
            if watch {
                let rounds = spec.rounds;
                let mut printer = ProgressPrinter::default();
                let report = admin.watch(&id, |e| if let Some(l) = describe(e, rounds) { printer.print(&l) }).await?;
                print!("\n{}", report.table());
                if let Some(out) = out {
                    let (model, report) = admin.fetch(&id).await?;
                    write_outputs(&out, &model, &report)?;
                }
            }
        }
        Command::Watch { job_id, coordinator } => {
            fedcare_cli::init_logging(cli.global.log_format, "warn");
            let mut admin = AdminClient::connect(&coordinator).await?;
            let mut printer = ProgressPrinter::default();
            let report = admin.watch(&job_id, |e| if let Some(l) = describe(e, 0) { printer.print(&l) }).await?;
            print!("{}", report.table());
        }
        Command::Sites { coordinator } => {
            fedcare_cli::init_logging(cli.global.log_format, "warn");
            let mut admin = AdminClient::connect(&coordinator).await?;
            let sites = admin.sites().await?;
            if sites.is_empty() {
                bail!("no site is connected to {coordinator}");
            }
            for s in sites {
                let job = if s.job_id.is_empty() { "idle".to_owned() } else { format!("in job {}", &s.job_id[..12.min(s.job_id.len())]) };
                println!("{:<16} {:<28} {job}", s.site_id, s.agent_version);
            }
        }
        Command::Privacy { command: PrivacyCommand::Plan { noise_multiplier, target_epsilon, sampling_rate, steps, delta, output } } => {
            privacy_plan(noise_multiplier, target_epsilon, sampling_rate, steps, delta, output)?;
        }
        Command::Fetch { job_id, coordinator, out } => {
            fedcare_cli::init_logging(cli.global.log_format, "warn");
            let mut admin = AdminClient::connect(&coordinator).await?;
            let (model, report) = admin.fetch(&job_id).await?;
            print!("{}", report.table());
            write_outputs(&out, &model, &report)?;
        }
    }
    Ok(())
}
