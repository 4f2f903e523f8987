//! Simulation: a whole federation on one machine, over real gRPC on localhost.
//!
//! [`run`] starts a coordinator on a free loopback port, one site agent per config file in the
//! example's `sites/` folder (each reading only its own data file), submits the example's job
//! through the admin API as a research lead would, follows its progress, fetches the model and
//! report, and writes them to the output folder. Because every site's file is local here, it
//! also trains the same model centrally on the union of the training splits (the pooled
//! reference) so the report shows what federation costs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fedcare_agent::{Agent, AgentConfig};
use fedcare_data::{Dataset, FeatureSums, Standardization};
use fedcare_job::JobSpec;
use fedcare_server::client::{AdminClient, Line, describe};
use fedcare_server::report::{Metrics, PooledReference, Report};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Job(#[from] fedcare_job::JobError),
    #[error(transparent)]
    Config(#[from] fedcare_agent::ConfigError),
    #[error(transparent)]
    Agent(#[from] fedcare_agent::AgentError),
    #[error("no site configs (*.toml) in {0}")]
    NoSites(PathBuf),
    #[error(transparent)]
    Serve(#[from] fedcare_server::ServeError),
    #[error(transparent)]
    Client(#[from] fedcare_server::client::ClientError),
    #[error("pooled reference: {0}")]
    Pooled(String),
    #[error("{0}")]
    Spec(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("only {connected} of {expected} sites connected within {waited:?}")]
    SitesMissing { connected: usize, expected: usize, waited: Duration },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("federation PKI: {0}")]
    Pki(String),
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Folder with `job.toml` and `sites/*.toml`.
    pub example_dir: PathBuf,
    /// Overrides the job's rounds.
    pub rounds: Option<u32>,
    /// Where the model, report and the coordinator's state file go.
    pub out_dir: PathBuf,
    /// Train the pooled reference as well.
    pub pooled_reference: bool,
    /// Overrides the job's `secure_aggregation.enabled`.
    pub secure_aggregation: Option<bool>,
    /// Overrides the job's differential privacy.
    pub privacy: PrivacyOverride,
    /// Mutual TLS between every party, as in a real deployment: the simulation creates a
    /// federation CA in `out_dir/pki` and enrols the coordinator, each site and a research
    /// lead. Off: plaintext gRPC (development).
    pub mtls: bool,
}

/// Enrols one party with the CA in `ca_dir` the way a real one would be: a key and CSR made
/// in the party's own folder `dir`, the CSR signed by the CA (which decides role and name),
/// the certificate, `ca.pem` and `crl.pem` copied into `dir`. Returns the party's files.
pub fn enrol(ca_dir: &Path, dir: &Path, role: fedcare_pki::Role, name: &str, hosts: &[&str]) -> Result<fedcare_pki::PartyFiles, SimError> {
    let pki = |e: fedcare_pki::PkiError| SimError::Pki(format!("{name}: {e}"));
    let (_, csr) = fedcare_pki::make_key_and_csr(dir, name).map_err(pki)?;
    let csr_pem = read(&csr)?;
    let hosts = hosts.iter().map(|h| h.parse()).collect::<Result<Vec<fedcare_pki::HostName>, _>>().map_err(pki)?;
    let cert = fedcare_pki::sign_csr(ca_dir, &csr_pem, role, name, fedcare_pki::Validity::Days(7), &hosts).map_err(pki)?;
    let write = |path: PathBuf, text: &str| std::fs::write(&path, text).map_err(|source| SimError::Write { path, source });
    write(dir.join(format!("{name}.pem")), &cert)?;
    write(dir.join(fedcare_pki::CA_FILE), &read(&ca_dir.join(fedcare_pki::CA_FILE))?)?;
    write(dir.join(fedcare_pki::CRL_FILE), &read(&ca_dir.join(fedcare_pki::CRL_FILE))?)?;
    fedcare_pki::PartyFiles::load(dir).map_err(pki)
}

/// How a simulation changes the job's `[privacy]`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum PrivacyOverride {
    /// As the job spec says.
    #[default]
    AsSpecified,
    /// No differential privacy (`unit = "none"`): for deterministic runs and comparisons.
    Off,
    /// The job's mechanism with this target epsilon.
    TargetEpsilon(f64),
}

/// The finished simulation.
pub struct SimResult {
    pub report: Report,
    pub model_path: PathBuf,
    pub report_path: PathBuf,
    /// `model-card.md` and `model-card.json`, beside the report.
    pub card: fedcare_server::card::CardFiles,
    /// `report.html` (self-contained) and its figures as SVG files.
    pub html: fedcare_report_html::Written,
    pub wall: Duration,
}

fn read(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path).map_err(|source| SimError::Read { path: path.to_owned(), source })
}

/// The example's job spec text, with `rounds` and secure aggregation overridden if asked.
pub fn job_text(example_dir: &Path, rounds: Option<u32>, secure_aggregation: Option<bool>, privacy: PrivacyOverride) -> Result<(String, JobSpec), SimError> {
    let path = example_dir.join("job.toml");
    let text = read(&path)?;
    let mut spec = JobSpec::from_toml(&text, &path.display().to_string())?;
    if rounds.is_none() && secure_aggregation.is_none() && privacy == PrivacyOverride::AsSpecified {
        return Ok((text, spec));
    }
    // Re-serialise so the overrides are part of the spec (and so of its hash).
    if let Some(r) = rounds {
        spec.rounds = r;
    }
    if let Some(on) = secure_aggregation {
        spec.secure_aggregation.enabled = on;
    }
    match privacy {
        PrivacyOverride::AsSpecified => {}
        PrivacyOverride::Off => {
            spec.privacy = fedcare_job::PrivacySpec::none();
        }
        PrivacyOverride::TargetEpsilon(e) => {
            if spec.privacy.unit == fedcare_job::PrivacyUnit::None {
                return Err(SimError::Spec("a target epsilon was given but the job asks for no differential privacy (privacy.unit = \"none\")".into()));
            }
            spec.privacy.target_epsilon = Some(e);
        }
    }
    spec.validate(&path.display().to_string())?;
    let text = toml::to_string(&spec).map_err(|e| SimError::Spec(format!("cannot write the edited job spec as TOML: {e}")))?;
    Ok((text, spec))
}

/// The site configs in `example_dir/sites`, sorted by file name.
pub fn site_configs(example_dir: &Path) -> Result<Vec<(AgentConfig, PathBuf)>, SimError> {
    let dir = example_dir.join("sites");
    let entries = std::fs::read_dir(&dir).map_err(|source| SimError::Read { path: dir.clone(), source })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(SimError::NoSites(dir));
    }
    paths.iter().map(|p| Ok(AgentConfig::load(p)?)).collect()
}

/// Runs the federation; `progress` receives one line per notable event.
pub async fn run(opts: &SimOptions, mut progress: impl FnMut(&Line)) -> Result<SimResult, SimError> {
    let started = Instant::now();
    let (spec_text, spec) = job_text(&opts.example_dir, opts.rounds, opts.secure_aggregation, opts.privacy)?;
    let sites = site_configs(&opts.example_dir)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| SimError::Write { path: opts.out_dir.clone(), source })?;
    // Absolute: the site agents resolve their paths (audit log, ledger, TLS folder) against
    // their own config's folder, so a relative output folder would land under `sites/`.
    let out_dir = std::path::absolute(&opts.out_dir).map_err(|source| SimError::Write { path: opts.out_dir.clone(), source })?;
    let out_dir = out_dir.as_path();
    let state = out_dir.join("coordinator.redb");
    // A simulation starts from a clean slate each time.
    let _ = std::fs::remove_file(&state);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The federation's PKI, made fresh: a CA, then each party enrolled from its own folder.
    let pki_dir = out_dir.join("pki");
    let _ = std::fs::remove_dir_all(&pki_dir);
    let ca_dir = pki_dir.join("ca");
    let (security, lead) = if opts.mtls {
        fedcare_pki::init_ca(&ca_dir, "fedcare simulation", 30).map_err(|e| SimError::Pki(e.to_string()))?;
        fedcare_pki::crl(&ca_dir).map_err(|e| SimError::Pki(e.to_string()))?;
        let coordinator = enrol(&ca_dir, &pki_dir.join("coordinator"), fedcare_pki::Role::Coordinator, "coordinator", &["127.0.0.1", "localhost"])?;
        let lead = enrol(&ca_dir, &pki_dir.join("research-lead"), fedcare_pki::Role::ResearchLead, "research-lead", &[])?;
        let tls = coordinator.server().map_err(|e| SimError::Pki(e.to_string()))?;
        (fedcare_server::Security::MutualTls { tls, crl_path: None }, Some(lead))
    } else {
        (fedcare_server::Security::Plaintext, None)
    };
    let audit_dir = out_dir.join("audit");
    // A fresh simulation starts fresh audit logs.
    let _ = std::fs::remove_dir_all(&audit_dir);
    std::fs::create_dir_all(&audit_dir).map_err(|source| SimError::Write { path: audit_dir.clone(), source })?;
    let (listener, addr, coordinator) = fedcare_server::bind("127.0.0.1:0".parse().expect("valid literal address"), &state).await?;
    let coordinator_log = audit_dir.join("coordinator.audit.jsonl");
    coordinator.set_audit_log(fedcare_audit::AuditLog::open(&coordinator_log).map_err(|e| SimError::Audit(format!("{}: {e}", coordinator_log.display())))?);
    let server = tokio::spawn(fedcare_server::serve_on(listener, coordinator, security, stopped(stop_rx.clone())));
    let url = if opts.mtls { format!("https://{addr}") } else { format!("http://{addr}") };
    note(&mut progress, format!("coordinator on {url}; starting {} site agents", sites.len()));

    let mut agents = Vec::new();
    let mut site_data = Vec::new();
    let mut audit_logs = Vec::new();
    let ledger_dir = out_dir.join("ledger");
    // Fresh ledgers too: a simulation's sites have spent nothing before it.
    let _ = std::fs::remove_dir_all(&ledger_dir);
    let mut ledgers = Vec::new();
    for (mut cfg, base) in sites {
        cfg.site.coordinator = url.clone();
        if opts.mtls {
            let dir = pki_dir.join(&cfg.site.id);
            enrol(&ca_dir, &dir, fedcare_pki::Role::Site, &cfg.site.id, &[])?;
            cfg.site.tls = Some(dir);
        }
        if let Some(p) = cfg.privacy.as_mut() {
            p.ledger = ledger_dir.join(format!("{}.ledger.jsonl", cfg.site.id));
            ledgers.push((cfg.site.id.clone(), p.ledger.clone()));
        }
        let log = audit_dir.join(format!("{}.audit.jsonl", cfg.site.id));
        audit_logs.push((cfg.site.id.clone(), log.clone()));
        cfg.site.audit_log = Some(log);
        site_data.push((cfg.data.clone(), base.clone()));
        let agent = Agent::new(cfg, base)?;
        agents.push(tokio::spawn(agent.run(stopped(stop_rx.clone()))));
    }

    let result = async {
        let mut admin = AdminClient::connect_as(&url, lead.as_ref()).await?;
        wait_for_sites(&mut admin, agents.len()).await?;
        let job_id = admin.submit(&spec_text).await?;
        note(&mut progress, format!("job {} ({}) submitted: {} rounds", &job_id[..12], spec.name, spec.rounds));
        let rounds = spec.rounds;
        admin.watch(&job_id, |e| if let Some(line) = describe(e, rounds) { progress(&line) }).await?;
        let (model, report) = admin.fetch(&job_id).await?;
        Ok::<_, SimError>((model, report))
    }
    .await;
    let _ = stop_tx.send(true);
    for a in agents {
        let _ = a.await;
    }
    let _ = server.await;
    let (model, mut report) = result?;
    for (site, log) in &audit_logs {
        let verified = fedcare_audit::verify(log).map_err(|e| SimError::Audit(format!("{}: {e}", log.display())))?;
        if let Some(head) = verified.head {
            report.site_audit_heads.insert(site.clone(), head);
        }
    }

    for (site, path) in &ledgers {
        let ledger = fedcare_ledger::Ledger::open_read_only(path).map_err(|e| SimError::Spec(format!("ledger {}: {e}", path.display())))?;
        if let Some(spend) = ledger.job_spend(&report.job_id) {
            report.privacy.site_ledgers.insert(site.clone(), spend.epsilon);
        }
    }
    if opts.pooled_reference {
        note(&mut progress, "training the pooled reference (central model on the union of the training splits)".into());
        report.pooled_reference = Some(pooled_reference(&spec, &site_data)?);
    }
    let model_path = out_dir.join("model.safetensors");
    let report_path = out_dir.join("report.json");
    std::fs::write(&model_path, &model).map_err(|source| SimError::Write { path: model_path.clone(), source })?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| SimError::Pooled(e.to_string()))?;
    std::fs::write(&report_path, json).map_err(|source| SimError::Write { path: report_path.clone(), source })?;
    let card = fedcare_server::card::ModelCard::from_report(&report)
        .write(out_dir)
        .map_err(|e| SimError::Write { path: e.path, source: e.source })?;
    let html = fedcare_report_html::write(&report, out_dir).map_err(|e| match e {
        fedcare_report_html::ReportHtmlError::CreateDir { path, source } | fedcare_report_html::ReportHtmlError::Write { path, source } => {
            SimError::Write { path, source }
        }
    })?;
    Ok(SimResult { report, model_path, report_path, card, html, wall: started.elapsed() })
}

fn note(progress: &mut impl FnMut(&Line), text: String) {
    progress(&Line { text, transient: false });
}

async fn wait_for_sites(admin: &mut AdminClient, expected: usize) -> Result<(), SimError> {
    let waited = Duration::from_secs(30);
    let deadline = Instant::now() + waited;
    loop {
        let connected = admin.sites().await?.iter().filter(|s| s.connected).count();
        if connected >= expected {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SimError::SitesMissing { connected, expected, waited });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Trains the job's model centrally on the union of the sites' training splits, standardised
/// with the pooled statistics (the same figures the federated statistics step computes), for
/// as many epochs as a site trains in the whole job, and evaluates it on the union of the test
/// splits.
pub fn pooled_reference(spec: &JobSpec, sites: &[(fedcare_data::SiteDataConfig, PathBuf)]) -> Result<PooledReference, SimError> {
    let err = |e: &dyn std::fmt::Display| SimError::Pooled(e.to_string());
    let mut trains = Vec::new();
    let mut tests = Vec::new();
    for (cfg, base) in sites {
        let (ds, _) = fedcare_data::load(&spec.schema, cfg, base).map_err(|e| err(&e))?;
        let (train, test) = fedcare_data::split(&ds, &spec.schema.split).map_err(|e| err(&e))?;
        trains.push(train);
        tests.push(test);
    }
    let mut train = Dataset::concat(&trains.iter().collect::<Vec<_>>()).map_err(|e| err(&e))?;
    let mut test = Dataset::concat(&tests.iter().collect::<Vec<_>>()).map_err(|e| err(&e))?;
    let std = Standardization::from_sums(&FeatureSums::of(&train)).map_err(|e| err(&e))?;
    std.apply(&mut train).map_err(|e| err(&e))?;
    std.apply(&mut test).map_err(|e| err(&e))?;
    let n = spec.n_features();
    let mut params = fedcare_models::init(&spec.model, n, spec.seed);
    let epochs = spec.rounds as usize * spec.training.local_epochs;
    let mut cfg = spec.train_config(0, 0);
    cfg.local_epochs = epochs;
    let out = fedcare_models::train(&spec.model, &params, train.features(), n, train.labels(), &cfg).map_err(|e| err(&e))?;
    params = out.params;
    let probs = fedcare_models::predict(&spec.model, &params, test.features(), n).map_err(|e| err(&e))?;
    let m = fedcare_models::metrics::evaluate(&probs, test.labels());
    let auc = m.auc;
    let test = Metrics::from_counts(&fedcare_protocol::EvalCounts::from(m), auc).ok_or_else(|| SimError::Pooled("the union of the test splits is empty".into()))?;
    Ok(PooledReference {
        test,
        epochs,
        note: "central training on the union of the sites' training splits, same model, optimiser and seed, \
               evaluated on the union of their test splits"
            .into(),
    })
}
