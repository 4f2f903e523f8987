//! The federation's certificate authority: a directory on the CA operator's machine.
//!
//! ```text
//! ca_dir/
//!   ca.key            the CA's private key (0600); never leaves this directory
//!   ca.pem            the CA certificate: every party's trust anchor
//!   issued/<serial>.pem   every certificate the CA signed, by serial (hex)
//!   revoked.json      the serials revoked so far, with when
//!   crl-number        the number of the last CRL issued (CRL numbers only grow)
//!   crl.pem           the last CRL issued
//! ```
//!
//! Enrolment: a party runs [`make_key_and_csr`](crate::make_key_and_csr) on its own machine
//! and hands the CSR (public) to the CA operator, who runs [`sign_csr`] stating the role and
//! the name. Only the CSR's public key is used: its subject, its requested names and
//! extensions are ignored, so a party cannot name itself. Revocation: [`revoke`] adds a
//! serial to `revoked.json`; [`crl`] signs the current list for verifiers to load.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertificateSigningRequestParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::files::{self, KEY_MODE, PUBLIC_MODE};
use crate::identity::{Identity, Role};
use crate::{PkiError, pem};

const CA_KEY: &str = "ca.key";
const CA_CERT: &str = "ca.pem";
const ISSUED: &str = "issued";
const REVOKED: &str = "revoked.json";
const CRL_NUMBER: &str = "crl-number";
const CRL: &str = "crl.pem";

/// How long a CRL says it is good for (its `nextUpdate`). Verifiers here do not refuse an
/// older CRL (a stale CRL still lists every revocation it had); it tells other tools when to
/// expect a new one.
pub const CRL_VALIDITY_DAYS: u32 = 30;

/// Certificates start this long before they are signed, so that a peer whose clock is a
/// little behind the CA's does not see a certificate from the future.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest federation name [`init_ca`] accepts.
pub const MAX_FEDERATION_NAME_LEN: usize = 64;

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From now (less a few minutes for clock skew) for this many days; at least 1.
    Days(u32),
    /// An explicit window, e.g. to re-issue with a known end (or, in tests, one in the past).
    Between { not_before: SystemTime, not_after: SystemTime },
}

impl Validity {
    fn window(self, now: SystemTime) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
        let (from, until) = match self {
            Validity::Days(0) => return Err(PkiError::BadValidity("a validity of 0 days".into())),
            Validity::Days(days) => {
                let until = DAY
                    .checked_mul(days)
                    .and_then(|span| now.checked_add(span))
                    .ok_or_else(|| PkiError::BadValidity(format!("{days} days is too long")))?;
                (now.checked_sub(CLOCK_SKEW).unwrap_or(now), until)
            }
            Validity::Between { not_before, not_after } => {
                if not_after <= not_before {
                    return Err(PkiError::BadValidity("it ends before it starts".into()));
                }
                (not_before, not_after)
            }
        };
        let convert = |t: SystemTime| {
            let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_secs()).ok(),
                Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
            };
            secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or_else(|| PkiError::BadValidity("a date out of range".into()))
        };
        Ok((convert(from)?, convert(until)?))
    }
}

/// A DNS name or IP address a coordinator serves under; clients check the server's
/// certificate against the one they dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostName {
    Dns(String),
    Ip(IpAddr),
}

impl FromStr for HostName {
    type Err = PkiError;

    /// An IP address if it parses as one, otherwise a DNS name (no wildcards).
    fn from_str(s: &str) -> Result<HostName, PkiError> {
        let bad = |why: &str| PkiError::BadHostName { host: s.to_owned(), reason: why.to_owned() };
        if s.contains('*') {
            return Err(bad("wildcards are not allowed"));
        }
        match ServerName::try_from(s).map_err(|e| bad(&e.to_string()))? {
            ServerName::IpAddress(ip) => Ok(HostName::Ip(IpAddr::from(ip))),
            ServerName::DnsName(dns) => Ok(HostName::Dns(dns.as_ref().to_ascii_lowercase())),
            _ => Err(bad("not a DNS name or an IP address")),
        }
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostName::Dns(d) => f.write_str(d),
            HostName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A certificate's serial number: unsigned, big-endian, without leading zero bytes. Written
/// as lowercase hex; parsed from hex with or without ':' separators.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    fn from_bytes(bytes: &[u8]) -> Result<Serial, PkiError> {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        if start == bytes.len() || bytes.len() - start > 20 {
            return Err(PkiError::BadSerial(hex_of(bytes)));
        }
        Ok(Serial(bytes[start..].to_vec()))
    }

    /// The serial of a certificate (PEM).
    pub fn of_cert_pem(cert_pem: &str) -> Result<Serial, PkiError> {
        Serial::of_cert_der(&pem::one_cert(cert_pem)?)
    }

    /// The serial of a certificate (DER).
    pub fn of_cert_der(cert_der: &[u8]) -> Result<Serial, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| PkiError::BadCertificate(format!("cannot parse it: {e}")))?;
        Serial::from_bytes(cert.raw_serial())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn random() -> Result<Serial, PkiError> {
        let mut bytes = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| PkiError::Random)?;
        // Positive (top bit clear) and never a leading zero byte: always 16 bytes, 126 random bits.
        bytes[0] = (bytes[0] & 0x3f) | 0x40;
        Ok(Serial(bytes.to_vec()))
    }
}

impl std::fmt::Display for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex_of(&self.0))
    }
}

impl FromStr for Serial {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Serial, PkiError> {
        let digits: String = s.chars().filter(|&c| c != ':').collect();
        let bad = || PkiError::BadSerial(s.to_owned());
        if digits.is_empty() || !digits.len().is_multiple_of(2) {
            return Err(bad());
        }
        let bytes = (0..digits.len())
            .step_by(2)
            .map(|i| digits.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        Serial::from_bytes(&bytes).map_err(|_| bad())
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedEntry {
    serial: String,
    /// Seconds since the Unix epoch.
    revoked_at: u64,
}

/// One certificate the CA issued, as [`list_issued`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub serial: Serial,
    pub identity: Identity,
    pub not_after: SystemTime,
    pub revoked: bool,
}

/// Creates a CA in `dir` (made if missing) for the federation `federation`, valid `days`
/// days. Refuses if `dir` already holds a CA key or certificate. Returns the CA certificate
/// (PEM), which every party needs as its trust anchor.
pub fn init_ca(dir: &Path, federation: &str, days: u32) -> Result<String, PkiError> {
    if federation.trim().is_empty()
        || federation.len() > MAX_FEDERATION_NAME_LEN
        || federation.chars().any(char::is_control)
    {
        return Err(PkiError::BadName {
            name: federation.to_owned(),
            reason: "a federation name must be 1 to 64 printable characters".into(),
        });
    }
    let (not_before, not_after) = Validity::Days(days).window(SystemTime::now())?;
    files::ensure_dir(dir)?;
    for existing in [dir.join(CA_KEY), dir.join(CA_CERT)] {
        if existing.exists() {
            return Err(PkiError::Exists(existing));
        }
    }

    let key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, federation);
    params.distinguished_name.push(DnType::CommonName, format!("{federation} CA"));
    // Path length 0: the CA signs parties' certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from(Serial::random()?.0));
    let cert = params.self_signed(&key).map_err(rcgen_err("self-sign the CA certificate"))?;

    files::write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), KEY_MODE)?;
    files::write_new(&dir.join(CA_CERT), cert.pem().as_bytes(), PUBLIC_MODE)?;
    files::ensure_dir(&dir.join(ISSUED))?;
    files::replace(&dir.join(REVOKED), b"[]\n")?;
    Ok(cert.pem())
}

/// The CA certificate (PEM) of the CA in `ca_dir`.
pub fn ca_cert(ca_dir: &Path) -> Result<String, PkiError> {
    files::read_string(&ca_dir.join(CA_CERT))
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

fn load_ca(ca_dir: &Path) -> Result<Ca, PkiError> {
    let key_path = ca_dir.join(CA_KEY);
    let key = KeyPair::from_pem(&files::read_string(&key_path)?)
        .map_err(|e| PkiError::BadKey { path: key_path.clone(), reason: e.to_string() })?;
    let cert_pem = ca_cert(ca_dir)?;
    let cert_der = pem::one_cert(&cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| PkiError::BadCertificate(format!("the CA certificate: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::BadKey { path: key_path, reason: "it does not match the CA certificate".into() });
    }
    let not_after = cert.validity().not_after.to_datetime();
    let issuer = Issuer::from_ca_cert_der(&cert_der.clone(), key).map_err(rcgen_err("load the CA certificate"))?;
    Ok(Ca { issuer, not_after })
}

/// Signs a party's CSR (PEM) for `role` and `name`, which the CA operator states; the CSR
/// contributes only its public key (its signature is checked: the requester holds the key).
///
/// `hosts` are the DNS names and IP addresses a coordinator serves under: required for
/// [`Role::Coordinator`], refused for every other role (only a coordinator may act as a TLS
/// server). The certificate may not outlive the CA. Returns the certificate (PEM) and keeps
/// a copy under `issued/`.
pub fn sign_csr(
    ca_dir: &Path,
    csr_pem: &str,
    role: Role,
    name: &str,
    validity: Validity,
    hosts: &[HostName],
) -> Result<String, PkiError> {
    let identity = Identity::new(role, name)?;
    match (role, hosts.is_empty()) {
        (Role::Coordinator, true) => return Err(PkiError::CoordinatorNeedsHost),
        (Role::Coordinator, false) | (_, true) => {}
        (_, false) => return Err(PkiError::HostsNotAllowed(role)),
    }
    let (not_before, not_after) = validity.window(SystemTime::now())?;
    let ca = load_ca(ca_dir)?;
    if not_after > ca.not_after {
        return Err(PkiError::BadValidity(format!(
            "it would end after the CA certificate does ({})",
            ca.not_after.date()
        )));
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadCsr(e.to_string()))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let mut sans = vec![SanType::URI(identity.urn().try_into().map_err(rcgen_err("encode the identity URI"))?)];
    for host in hosts {
        sans.push(match host {
            HostName::Dns(dns) => SanType::DnsName(dns.clone().try_into().map_err(rcgen_err("encode a DNS name"))?),
            HostName::Ip(ip) => SanType::IpAddress(*ip),
        });
    }
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // TLS verifiers check these: a site's certificate cannot serve as the coordinator's.
    params.extended_key_usages = match role {
        Role::Coordinator => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let serial = Serial::random()?;
    params.serial_number = Some(SerialNumber::from(serial.0.clone()));
    let cert = params
        .signed_by(&csr.public_key, &ca.issuer)
        .map_err(rcgen_err("sign the certificate"))?;

    let pem = cert.pem();
    files::ensure_dir(&ca_dir.join(ISSUED))?;
    files::write_new(&issued_path(ca_dir, &serial), pem.as_bytes(), PUBLIC_MODE)?;
    Ok(pem)
}

fn issued_path(ca_dir: &Path, serial: &Serial) -> PathBuf {
    ca_dir.join(ISSUED).join(format!("{serial}.pem"))
}

/// What to revoke: a serial (as `list_issued` or a certificate shows it) or a certificate.
#[derive(Debug, Clone, Copy)]
pub enum Revoke<'a> {
    Serial(&'a Serial),
    CertPem(&'a str),
}

/// Revokes a certificate this CA issued. Returns `false` if it was already revoked. Takes
/// effect for verifiers when they load a CRL issued afterwards ([`crl`]).
pub fn revoke(ca_dir: &Path, what: Revoke<'_>) -> Result<bool, PkiError> {
    let serial = match what {
        Revoke::Serial(serial) => serial.clone(),
        Revoke::CertPem(pem_text) => {
            let der = pem::one_cert(pem_text)?;
            let serial = Serial::of_cert_der(&der)?;
            let ours = fs::read_to_string(issued_path(ca_dir, &serial))
                .ok()
                .and_then(|issued| pem::one_cert(&issued).ok());
            if ours.as_deref() != Some(der.as_ref()) {
                return Err(PkiError::NotIssuedHere(serial.to_string()));
            }
            serial
        }
    };
    if !issued_path(ca_dir, &serial).exists() {
        return Err(PkiError::NotIssuedHere(serial.to_string()));
    }
    let mut revoked = read_revoked(ca_dir)?;
    let hex = serial.to_string();
    if revoked.iter().any(|r| r.serial == hex) {
        return Ok(false);
    }
    let revoked_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    revoked.push(RevokedEntry { serial: hex, revoked_at });
    let mut text = serde_json::to_string_pretty(&revoked).map_err(|e| PkiError::Internal(e.to_string()))?;
    text.push('\n');
    files::replace(&ca_dir.join(REVOKED), text.as_bytes())?;
    Ok(true)
}

fn read_revoked(ca_dir: &Path) -> Result<Vec<RevokedEntry>, PkiError> {
    let path = ca_dir.join(REVOKED);
    let text = files::read_string(&path)?;
    let entries: Vec<RevokedEntry> = serde_json::from_str(&text)
        .map_err(|e| PkiError::BadCaFile { path: path.clone(), reason: e.to_string() })?;
    for entry in &entries {
        entry
            .serial
            .parse::<Serial>()
            .map_err(|_| PkiError::BadCaFile { path: path.clone(), reason: format!("bad serial {:?}", entry.serial) })?;
    }
    Ok(entries)
}

/// Issues a CRL (PEM) listing every serial revoked so far, signed by the CA, with the next
/// CRL number; also written to `ca_dir/crl.pem`. Verifiers load it with
/// [`server_tls`](crate::server_tls) or [`ServerTls::set_crl`](crate::ServerTls::set_crl).
pub fn crl(ca_dir: &Path) -> Result<String, PkiError> {
    let ca = load_ca(ca_dir)?;
    let revoked = read_revoked(ca_dir)?;
    let number_path = ca_dir.join(CRL_NUMBER);
    let last: u64 = match fs::read_to_string(&number_path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| PkiError::BadCaFile { path: number_path.clone(), reason: "not a number".into() })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(PkiError::Io { path: number_path, source: e }),
    };
    let number = last + 1;

    let now = OffsetDateTime::now_utc();
    let mut revoked_certs = Vec::with_capacity(revoked.len());
    for entry in &revoked {
        let serial: Serial = entry.serial.parse()?;
        let revocation_time = i64::try_from(entry.revoked_at)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or(now);
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from(serial.0),
            revocation_time,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(i64::from(CRL_VALIDITY_DAYS)),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.issuer).map_err(rcgen_err("sign the CRL"))?;
    let pem = crl.pem().map_err(rcgen_err("encode the CRL"))?;
    // The number first: a crash between the two never reuses a number.
    files::replace(&number_path, format!("{number}\n").as_bytes())?;
    files::replace(&ca_dir.join(CRL), pem.as_bytes())?;
    Ok(pem)
}

/// Every certificate this CA issued, oldest serial first, with its identity and whether it
/// is revoked.
pub fn list_issued(ca_dir: &Path) -> Result<Vec<Issued>, PkiError> {
    let revoked = read_revoked(ca_dir)?;
    let dir = ca_dir.join(ISSUED);
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(files::io_err(&dir))? {
        let path = entry.map_err(files::io_err(&dir))?.path();
        if path.extension().is_none_or(|e| e != "pem") {
            continue;
        }
        let der = pem::one_cert(&files::read_string(&path)?)?;
        let serial = Serial::of_cert_der(&der)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::BadCertificate(format!("{}: {e}", path.display())))?;
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let hex = serial.to_string();
        out.push(Issued {
            identity: crate::identity_of(&der)?,
            revoked: revoked.iter().any(|r| r.serial == hex),
            serial,
            not_after,
        });
    }
    out.sort_by(|a, b| a.serial.cmp(&b.serial));
    Ok(out)
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Certificate { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_and_print() {
        let s: Serial = "00:4a:0B".parse().unwrap();
        assert_eq!(s.as_bytes(), &[0x4a, 0x0b]);
        assert_eq!(s.to_string(), "4a0b");
        for bad in ["", "0", "00", "xyz0", "4a0", &"11".repeat(21)] {
            assert!(bad.parse::<Serial>().is_err(), "{bad:?} was accepted");
        }
        let r = Serial::random().unwrap();
        assert_eq!(r.as_bytes().len(), 16);
        assert_eq!(r.to_string().parse::<Serial>().unwrap(), r);
    }

    #[test]
    fn host_names() {
        assert_eq!("10.0.0.1".parse::<HostName>().unwrap(), HostName::Ip("10.0.0.1".parse().unwrap()));
        assert_eq!("::1".parse::<HostName>().unwrap(), HostName::Ip("::1".parse().unwrap()));
        assert_eq!("Coord.Example.org".parse::<HostName>().unwrap(), HostName::Dns("coord.example.org".into()));
        for bad in ["*.example.org", "", "a b", "exa_mple..org"] {
            assert!(bad.parse::<HostName>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn validity_windows() {
        let now = SystemTime::now();
        assert!(Validity::Days(0).window(now).is_err());
        assert!(Validity::Days(u32::MAX).window(now).is_err());
        let (from, until) = Validity::Days(2).window(now).unwrap();
        assert_eq!((until - from).whole_seconds(), 2 * 86_400 + 300);
        assert!(Validity::Between { not_before: now, not_after: now }.window(now).is_err());
        let past = now - Duration::from_secs(3 * 86_400);
        assert!(Validity::Between { not_before: past, not_after: past + DAY }.window(now).is_ok());
    }
}
