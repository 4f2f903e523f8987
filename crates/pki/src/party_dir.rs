//! A party's TLS folder: what a coordinator, site or research lead keeps on its own machine.
//!
//! Layout (one folder per party): `<name>.key` (its private key, made there by
//! [`crate::make_key_and_csr`]; exactly one `.key` file), `<name>.pem` (its certificate, signed
//! by the CA and copied back), `ca.pem` (the federation's CA certificate) and, optionally,
//! `crl.pem` (the CA's current revocation list; required to serve). Commands and configs then
//! name only the folder.

use std::path::{Path, PathBuf};

use crate::{ClientTls, Identity, PkiError, ServerTls, client_tls, files, identity_of_pem, server_tls};

/// The CA certificate's file name in a party folder.
pub const CA_FILE: &str = "ca.pem";
/// The CRL's file name in a party folder.
pub const CRL_FILE: &str = "crl.pem";

/// The files of one party's TLS folder, read.
#[derive(Clone)]
pub struct PartyFiles {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub crl_pem: Option<String>,
    pub cert_pem: String,
    pub key_pem: String,
    /// The identity the party's certificate names.
    pub identity: Identity,
}

impl std::fmt::Debug for PartyFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartyFiles").field("dir", &self.dir).field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl PartyFiles {
    /// Reads `dir`: the one `<name>.key`, its `<name>.pem`, `ca.pem`, and `crl.pem` if present.
    pub fn load(dir: &Path) -> Result<PartyFiles, PkiError> {
        let io = |source| PkiError::Io { path: dir.to_owned(), source };
        let mut keys: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
            .collect();
        keys.sort();
        let key = match keys.as_slice() {
            [one] => one.clone(),
            [] => return Err(PkiError::BadCaFile { path: dir.to_owned(), reason: "no private key (<name>.key) in this TLS folder".into() }),
            many => {
                let names: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
                return Err(PkiError::BadCaFile { path: dir.to_owned(), reason: format!("more than one private key: {}", names.join(", ")) });
            }
        };
        let cert = key.with_extension("pem");
        if !cert.exists() {
            return Err(PkiError::BadCaFile {
                path: cert,
                reason: "missing: the certificate the CA signed for this key (copy it here)".into(),
            });
        }
        let crl_path = dir.join(CRL_FILE);
        let crl_pem = if crl_path.exists() { Some(files::read_string(&crl_path)?) } else { None };
        let cert_pem = files::read_string(&cert)?;
        let identity = identity_of_pem(&cert_pem)?;
        Ok(PartyFiles { dir: dir.to_owned(), ca_pem: files::read_string(&dir.join(CA_FILE))?, crl_pem, cert_pem, key_pem: files::read_string(&key)?, identity })
    }

    /// Client side of mutual TLS to the coordinator known as `server` (a DNS name or IP).
    pub fn client(&self, server: &str) -> Result<ClientTls, PkiError> {
        client_tls(&self.ca_pem, self.crl_pem.as_deref(), &self.cert_pem, &self.key_pem, server)
    }

    /// Server side of mutual TLS (the coordinator); needs `crl.pem`.
    pub fn server(&self) -> Result<ServerTls, PkiError> {
        let crl = self.crl_pem.as_deref().ok_or_else(|| PkiError::BadCaFile {
            path: self.dir.join(CRL_FILE),
            reason: "missing: the coordinator needs the CA's revocation list (`coordinator pki crl`)".into(),
        })?;
        server_tls(&self.ca_pem, crl, &self.cert_pem, &self.key_pem)
    }
}

/// The host part of an `https://host:port` URL (what the coordinator's certificate must name).
pub fn url_host(url: &str) -> Result<String, PkiError> {
    let uri: tonic::transport::Uri = url.parse().map_err(|_| PkiError::BadUrl { url: url.to_owned(), reason: "not a URL".into() })?;
    let host = uri.host().ok_or_else(|| PkiError::BadUrl { url: url.to_owned(), reason: "no host".into() })?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_owned())
}
