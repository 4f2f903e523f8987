//! Who a certificate speaks for: a [`Role`] and a name, carried in exactly one subject
//! alternative name URI of the form `urn:fedcare:<role>:<name>`.
//!
//! Why a URI and not the subject's common name: a CN is free text that CSRs, tools and
//! humans all fill in, and a certificate may carry several attributes that look alike. One
//! SAN URI in a namespace of our own, written only by the CA ([`crate::sign_csr`]), is
//! unambiguous: [`identity_of`] refuses a certificate with none or with more than one.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;

use crate::PkiError;

/// The namespace of every identity URI; compared case-insensitively when counting, so that a
/// certificate cannot smuggle in a second identity as `URN:FEDCARE:...`.
const URN_PREFIX: &str = "urn:fedcare:";

/// The longest name a party may have (the same bound as the protocol's site ids).
pub const MAX_NAME_LEN: usize = 64;

/// What a party may do in the federation. The CA operator grants it when signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The coordinator service; the only role whose certificate may carry DNS names or IP
    /// addresses and serve TLS.
    Coordinator,
    /// A hospital site agent; its name is the site id.
    Site,
    /// Submits jobs and reads results through the admin API.
    ResearchLead,
    /// Runs the federation (admin API, enrolment).
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Coordinator, Role::Site, Role::ResearchLead, Role::Operator];

    /// The role as written in identity URIs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Site => "site",
            Role::ResearchLead => "research-lead",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Role, PkiError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| PkiError::BadRole(s.to_owned()))
    }
}

/// A party of the federation as its certificate names it. Built only from a valid role and
/// name, so its URI always parses back to itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    role: Role,
    name: String,
}

impl Identity {
    /// `name`: 1 to 64 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit
    /// (a site's name is its site id, e.g. `site-a`).
    pub fn new(role: Role, name: &str) -> Result<Identity, PkiError> {
        check_name(name)?;
        Ok(Identity { role, name: name.to_owned() })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `urn:fedcare:<role>:<name>`, the SAN URI that carries this identity.
    pub fn urn(&self) -> String {
        format!("{URN_PREFIX}{}:{}", self.role, self.name)
    }

    /// Parses an identity URI; it must be exactly what [`Identity::urn`] writes.
    pub fn from_urn(uri: &str) -> Result<Identity, PkiError> {
        let bad = |why: &str| PkiError::BadIdentityUri { uri: uri.to_owned(), reason: why.to_owned() };
        let rest = uri.strip_prefix(URN_PREFIX).ok_or_else(|| bad("it does not start with urn:fedcare:"))?;
        let (role, name) = rest.split_once(':').ok_or_else(|| bad("it has no name after the role"))?;
        let role = role.parse::<Role>().map_err(|_| bad("unknown role"))?;
        Identity::new(role, name).map_err(|e| bad(&e.to_string()))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), PkiError> {
    let bad = |reason: &str| PkiError::BadName { name: name.to_owned(), reason: reason.to_owned() };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad("it must be 1 to 64 characters long"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(bad("only ASCII letters, digits, '.', '_' and '-' are allowed"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(bad("it must start with a letter or a digit"));
    }
    Ok(())
}

/// Reads the identity a certificate (DER) was issued for: its one `urn:fedcare:` SAN URI.
///
/// This only *reads*: it does not check who signed the certificate or whether it is still
/// valid. Use it on certificates that TLS has verified against the federation's CA and CRL
/// (as [`crate::peer_identity`] does), or on the CA's own records.
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::BadCertificate(format!("cannot parse it: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate("trailing bytes after the certificate".into()));
    }
    let mut found = Vec::new();
    for ext in cert.extensions() {
        if ext.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
            continue;
        }
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            return Err(PkiError::BadCertificate("its subject alternative names cannot be parsed".into()));
        };
        for name in &san.general_names {
            if let GeneralName::URI(uri) = name
                && uri.get(..URN_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(URN_PREFIX))
            {
                found.push(*uri);
            }
        }
    }
    match found.as_slice() {
        [] => Err(PkiError::NoIdentity),
        [uri] => Identity::from_urn(uri),
        many => Err(PkiError::AmbiguousIdentity(many.iter().map(|u| u.to_string()).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urn_round_trips_for_every_role() {
        for role in Role::ALL {
            let id = Identity::new(role, "site-a.b_c").unwrap();
            assert_eq!(Identity::from_urn(&id.urn()).unwrap(), id);
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert_eq!(Identity::new(Role::ResearchLead, "alice").unwrap().urn(), "urn:fedcare:research-lead:alice");
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "-a", ".", "..", "a:b", "a/b", "é", "a b", &"x".repeat(65)] {
            assert!(Identity::new(Role::Site, bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Identity::new(Role::Site, &"x".repeat(64)).is_ok());
    }

    #[test]
    fn urns_must_be_exact() {
        for bad in [
            "urn:fedcare:site",
            "urn:fedcare:Site:a",
            "urn:fedcare:admin:a",
            "URN:FEDCARE:site:a",
            "urn:fedcare:site:a:b",
            "urn:fedcare:site:",
            "urn:other:site:a",
        ] {
            assert!(Identity::from_urn(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(identity_of(b"not a certificate"), Err(PkiError::BadCertificate(_))));
        assert!(matches!(identity_of(&[]), Err(PkiError::BadCertificate(_))));
    }
}
