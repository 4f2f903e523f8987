//! The site agent's configuration file (`site.toml`): who the site is, where its coordinator
//! is, and how its own CSV maps onto a job's schema (the `[data]` table of `fedcare-data`).

use std::path::{Path, PathBuf};

use fedcare_data::SiteDataConfig;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{source_name}: {message}")]
    Parse { source_name: String, message: String },
    #[error("field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("identity key {path}: {message}")]
    IdentityKey { path: PathBuf, message: String },
}

/// `[site]`: the site's identity and its coordinator.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// The site's name (letters, digits, '.', '_', '-'). With mutual TLS the certificate will
    /// carry it instead.
    pub id: String,
    /// The coordinator's URL, e.g. `http://coordinator.example.org:50051`. The agent dials out;
    /// nothing ever connects in.
    pub coordinator: String,
    /// File holding this site's long-term Ed25519 identity key (PKCS#8), which signs its secure
    /// aggregation keys each round; created (readable by the owner only) if missing, relative
    /// to this config file. Without it the agent makes a fresh key at each start.
    #[serde(default)]
    pub identity_key: Option<PathBuf>,
    /// This site's tamper-evident audit log (JSON Lines, hash-chained; `site-agent audit
    /// verify` checks it), relative to this config file. Every job received, decision, round
    /// joined, and the hash and size of every payload received and sent is recorded, durably,
    /// before the agent acts on it.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// This site's TLS folder (its key, the certificate the federation's CA signed for it
    /// with role `site` and this site's id, `ca.pem`, optionally `crl.pem`), relative to this
    /// file. Required when `coordinator` is an `https://` URL: the connection is then mutual
    /// TLS and the coordinator knows the site by its certificate.
    #[serde(default)]
    pub tls: Option<PathBuf>,
    /// This site's policy (`[policy]`: models, columns, privacy limits, secure aggregation,
    /// other participants, automatic or manual approval; see `fedcare-policy`), relative to
    /// this file. Every job offer is checked against it before the site's data is read, and
    /// manual approvals are kept in `approvals/` beside it (`site-agent jobs`). The file is
    /// read at start (an invalid policy stops the agent) and again at every offer, so an edit
    /// applies to the next job. Without it, any job the data and the privacy budget can
    /// serve is joined.
    #[serde(default)]
    pub policy: Option<PathBuf>,
}

/// `[privacy]`: this site's own privacy budget. The site, not the coordinator, enforces it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePrivacy {
    /// The durable privacy ledger (JSON Lines; `site-agent ledger` shows it), relative to this
    /// config file. Every spend is recorded here, fsync'd, before anything is sent.
    pub ledger: PathBuf,
    /// The most epsilon one job may spend on this site's records.
    pub max_epsilon_per_job: f64,
    /// The most epsilon all jobs together may spend (sum over jobs).
    pub max_epsilon_total: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub site: SiteSection,
    /// Without it the site has no ledger and refuses every job that asks for differential
    /// privacy (it could not enforce a budget).
    #[serde(default)]
    pub privacy: Option<SitePrivacy>,
    pub data: SiteDataConfig,
}

impl AgentConfig {
    /// Parses a config text; `source_name` (its path) appears in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<AgentConfig, ConfigError> {
        let cfg: AgentConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { source_name: source_name.to_owned(), message: e.to_string() })?;
        cfg.data
            .validate(source_name)
            .map_err(|e| ConfigError::Parse { source_name: source_name.to_owned(), message: e.to_string() })?;
        fedcare_protocol::SiteId::parse(&cfg.site.id).map_err(|message| ConfigError::Invalid { field: "site.id".into(), message })?;
        if !(cfg.site.coordinator.starts_with("http://") || cfg.site.coordinator.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                field: "site.coordinator".into(),
                message: format!("{:?} must be an http:// or https:// URL", cfg.site.coordinator),
            });
        }
        if let Some(p) = &cfg.privacy {
            for (field, v) in [("privacy.max_epsilon_per_job", p.max_epsilon_per_job), ("privacy.max_epsilon_total", p.max_epsilon_total)] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(ConfigError::Invalid { field: field.into(), message: format!("must be a positive number, got {v}") });
                }
            }
            if p.max_epsilon_per_job > p.max_epsilon_total {
                return Err(ConfigError::Invalid {
                    field: "privacy.max_epsilon_per_job".into(),
                    message: format!("{} exceeds max_epsilon_total ({})", p.max_epsilon_per_job, p.max_epsilon_total),
                });
            }
        }
        Ok(cfg)
    }

    /// Reads and parses a config file; returns it with the directory that relative data paths
    /// are resolved against.
    pub fn load(path: &Path) -> Result<(AgentConfig, PathBuf), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let cfg = AgentConfig::parse(&text, &path.display().to_string())?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((cfg, base))
    }
}

/// Loads the site's identity key from `path`, or creates it there (mode 0600) if the file does
/// not exist. A file that exists but is not a valid key is an error, never overwritten.
pub fn load_or_create_identity(path: &Path) -> Result<fedcare_secagg::IdentityKey, ConfigError> {
    let err = |message: String| ConfigError::IdentityKey { path: path.to_owned(), message };
    match std::fs::read(path) {
        Ok(bytes) => fedcare_secagg::IdentityKey::from_pkcs8(&bytes).map_err(|e| err(format!("not a valid Ed25519 key: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = fedcare_secagg::IdentityKey::generate(&mut fedcare_secagg::SystemRng::new()).map_err(|e| err(e.to_string()))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(path).map_err(|e| err(format!("cannot create: {e}")))?;
            use std::io::Write;
            file.write_all(key.pkcs8()).and_then(|()| file.sync_all()).map_err(|e| err(format!("cannot write: {e}")))?;
            Ok(key)
        }
        Err(e) => Err(err(format!("cannot read: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEVELAND: &str = include_str!("../../../examples/heart-disease/sites/cleveland.toml");

    #[test]
    fn example_config_parses() {
        let cfg = AgentConfig::parse(CLEVELAND, "cleveland.toml").unwrap();
        assert_eq!(cfg.site.id, "cleveland");
        assert!(cfg.data.path.ends_with("processed.cleveland.data"));
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = CLEVELAND.replacen("[site]", "[site]\ncolour = \"blue\"", 1);
        let err = AgentConfig::parse(&text, "cleveland.toml").unwrap_err().to_string();
        assert!(err.contains("cleveland.toml") && err.contains("colour") && err.contains("line"), "{err}");
    }

    #[test]
    fn identity_key_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.pk8");
        let first = load_or_create_identity(&path).unwrap();
        let again = load_or_create_identity(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, b"garbage").unwrap();
        let err = load_or_create_identity(&path).unwrap_err().to_string();
        assert!(err.contains("id.pk8") && err.contains("not a valid"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"garbage", "an invalid key file is never overwritten");
    }

    #[test]
    fn bad_site_id_and_url_are_refused() {
        let text = CLEVELAND.replacen("id = \"cleveland\"", "id = \"clev land\"", 1);
        assert!(AgentConfig::parse(&text, "x").unwrap_err().to_string().contains("site.id"));
        let text = CLEVELAND.replacen("https://", "ftp://", 1);
        assert!(AgentConfig::parse(&text, "x").unwrap_err().to_string().contains("site.coordinator"));
    }
}
