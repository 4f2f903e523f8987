//! The federation's identities: a certificate authority, enrolment by CSR, certificates that
//! name a party's role, revocation lists, and mutual TLS for tonic built on them.
//!
//! How it flows:
//! 1. The federation's operator creates the CA once ([`init_ca`]); its certificate is every
//!    party's trust anchor.
//! 2. Each party (coordinator, hospital site, research lead, operator) makes its own key and a
//!    CSR on its own machine ([`make_key_and_csr`]); the key never leaves that machine.
//! 3. The CA operator signs the CSR, stating the party's [`Role`] and name ([`sign_csr`]).
//!    The certificate carries them as one SAN URI, `urn:fedcare:<role>:<name>`; a
//!    coordinator's also carries the DNS names / IP addresses it serves under.
//! 4. The coordinator serves with [`server_tls`], which refuses any client without a
//!    certificate from the CA, expired, or listed in the CRL ([`crl`]); a handler learns
//!    who called from the certificate ([`peer_identity`], [`require_role`]), never from a
//!    name the caller sends. Parties dial with [`client_tls`], which trusts only the CA.
//! 5. [`revoke`] then [`crl`] and [`ServerTls::set_crl`] shut a party out.
//!
//! Guarantees: private keys are created with mode 0600 and never overwritten; a certificate's
//! identity is exactly one well-formed `urn:fedcare:` URI or it has none ([`identity_of`]);
//! only a coordinator's certificate can serve TLS. Never: trust a CSR's subject or requested
//! names, trust any root but the federation's CA, or panic on a file or a peer's input.

mod ca;
mod files;
mod identity;
mod party;
mod party_dir;
mod pem;
mod tls;

use std::path::PathBuf;

pub use ca::{
    CRL_VALIDITY_DAYS, HostName, Issued, MAX_FEDERATION_NAME_LEN, Revoke, Serial, Validity, ca_cert, crl, init_ca,
    list_issued, revoke, sign_csr,
};
pub use files::{KEY_MODE, PUBLIC_MODE};
pub use identity::{Identity, MAX_NAME_LEN, Role, identity_of};
pub use party::make_key_and_csr;
pub use party_dir::{CA_FILE, CRL_FILE, PartyFiles, url_host};
pub use tls::{
    ClientTls, HANDSHAKE_TIMEOUT, MtlsConnector, ServerTls, TlsIncoming, client_tls, peer_identity, require_role,
    server_tls,
};

/// Reads the identity of a certificate given as PEM (one certificate). See [`identity_of`].
pub fn identity_of_pem(cert_pem: &str) -> Result<Identity, PkiError> {
    identity_of(&pem::one_cert(cert_pem)?)
}

/// Everything that can go wrong, with the input it went wrong on.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    Exists(PathBuf),
    #[error("bad name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("unknown role {0:?} (expected coordinator, site, research-lead or operator)")]
    BadRole(String),
    #[error("bad host name {host:?}: {reason}")]
    BadHostName { host: String, reason: String },
    #[error("a coordinator's certificate needs at least one DNS name or IP address")]
    CoordinatorNeedsHost,
    #[error("only a coordinator's certificate may carry DNS names or IP addresses, not a {0}'s")]
    HostsNotAllowed(Role),
    #[error("bad validity: {0}")]
    BadValidity(String),
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    #[error("bad {what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("bad key {}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    #[error("bad CRL: {0}")]
    BadCrl(String),
    #[error("bad serial number {0:?}")]
    BadSerial(String),
    #[error("no certificate with serial {0} was issued by this CA")]
    NotIssuedHere(String),
    #[error("{}: {reason}", path.display())]
    BadCaFile { path: PathBuf, reason: String },
    #[error("cannot {what}: {source}")]
    Certificate { what: &'static str, source: rcgen::Error },
    #[error("the system's random number generator failed")]
    Random,
    #[error("the certificate names no fedcare identity (no urn:fedcare: URI)")]
    NoIdentity,
    #[error("the certificate names more than one fedcare identity: {}", .0.join(", "))]
    AmbiguousIdentity(Vec<String>),
    #[error("bad identity URI {uri:?}: {reason}")]
    BadIdentityUri { uri: String, reason: String },
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("{identity} is not allowed here (allowed: {})", roles(allowed))]
    RoleNotAllowed { identity: Identity, allowed: Vec<Role> },
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    #[error("bad coordinator URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach {addr}: {source}")]
    Dial { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake { addr: String, source: std::io::Error },
    #[error("TLS handshake with {0} timed out")]
    HandshakeTimeout(String),
    #[error("cannot connect to {url}: {}", chain(source))]
    Connect { url: String, source: tonic::transport::Error },
    #[error("internal error: {0}")]
    Internal(String),
}

/// An error and its sources, "a: b: c": tonic's transport errors say little at the top.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

fn roles(roles: &[Role]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
}

/// For RPC handlers: a caller without a usable identity is unauthenticated, one whose role
/// may not call is denied.
impl From<PkiError> for tonic::Status {
    fn from(e: PkiError) -> tonic::Status {
        match e {
            PkiError::RoleNotAllowed { .. } => tonic::Status::permission_denied(e.to_string()),
            PkiError::NoPeerCertificate
            | PkiError::NoIdentity
            | PkiError::AmbiguousIdentity(_)
            | PkiError::BadIdentityUri { .. }
            | PkiError::BadCertificate(_) => tonic::Status::unauthenticated(e.to_string()),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}
