//! The CA and enrolment on disk: files and their modes, what a certificate says, revocation.

mod common;

use common::{Federation, mode};
use fedcare_pki::{HostName, Identity, PkiError, Revoke, Role, Serial, Validity};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

fn cert_with_sans(sans: &[&str], common_name: &str) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.strip_prefix("dns:") {
            Some(dns) => SanType::DnsName(dns.to_string().try_into().unwrap()),
            None => SanType::URI(s.to_string().try_into().unwrap()),
        })
        .collect();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn identity_of_reads_role_and_name() {
    let fed = Federation::new("test federation");
    for (role, name) in [
        (Role::Site, "site-a"),
        (Role::ResearchLead, "alice"),
        (Role::Operator, "ops.1"),
        (Role::Coordinator, "coord"),
    ] {
        let party = fed.enrol(role, name);
        let identity = fedcare_pki::identity_of_pem(&party.cert).unwrap();
        assert_eq!((identity.role(), identity.name()), (role, name));
    }
    // Other URIs beside the one fedcare URI do not matter.
    let der = cert_with_sans(&["https://example.org/", "urn:fedcare:site:site-b", "dns:example.org"], "x");
    assert_eq!(fedcare_pki::identity_of(&der).unwrap(), Identity::new(Role::Site, "site-b").unwrap());
}

#[test]
fn identity_of_refuses_no_uri_two_uris_or_a_bad_one() {
    // A common name that looks like an identity is not one.
    let none = cert_with_sans(&["dns:localhost"], "urn:fedcare:operator:root");
    assert!(matches!(fedcare_pki::identity_of(&none), Err(PkiError::NoIdentity)));
    let no_sans = cert_with_sans(&[], "site-a");
    assert!(matches!(fedcare_pki::identity_of(&no_sans), Err(PkiError::NoIdentity)));

    for two in [
        &["urn:fedcare:site:site-a", "urn:fedcare:operator:root"][..],
        &["urn:fedcare:site:site-a", "urn:fedcare:site:site-a"],
        &["urn:fedcare:site:site-a", "URN:Fedcare:operator:root"],
    ] {
        let der = cert_with_sans(two, "x");
        assert!(matches!(fedcare_pki::identity_of(&der), Err(PkiError::AmbiguousIdentity(_))), "{two:?}");
    }
    for bad in ["urn:fedcare:admin:root", "urn:fedcare:site:", "urn:fedcare:site:a:b", "urn:fedcare:site:a/b"] {
        let der = cert_with_sans(&[bad], "x");
        assert!(matches!(fedcare_pki::identity_of(&der), Err(PkiError::BadIdentityUri { .. })), "{bad}");
    }
}

#[test]
fn the_ca_names_the_party_not_the_csr() {
    let fed = Federation::new("test federation");
    // A CSR that asks to be an operator, under another name.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "root");
    params.subject_alt_names = vec![
        SanType::URI("urn:fedcare:operator:root".to_string().try_into().unwrap()),
        SanType::DnsName("coordinator.example.org".to_string().try_into().unwrap()),
    ];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let cert = fedcare_pki::sign_csr(&fed.ca_dir(), &csr, Role::Site, "site-a", Validity::Days(10), &[]).unwrap();
    assert_eq!(fedcare_pki::identity_of_pem(&cert).unwrap(), Identity::new(Role::Site, "site-a").unwrap());
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = parsed.subject_alternative_name().unwrap().unwrap();
    assert_eq!(sans.value.general_names.len(), 1, "the CSR's names must not be copied");
    assert!(parsed.subject().to_string().contains("site-a"));
    // The certificate certifies the CSR's key.
    assert_eq!(parsed.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
}

#[test]
fn a_csr_with_a_bad_signature_is_refused() {
    let fed = Federation::new("test federation");
    let dir = tempfile::tempdir().unwrap();
    let (_, csr_path) = fedcare_pki::make_key_and_csr(dir.path(), "site-a").unwrap();
    let csr = std::fs::read_to_string(csr_path).unwrap();
    let tampered = tamper_near_end(&csr);
    assert_ne!(tampered, csr);
    let err = fedcare_pki::sign_csr(&fed.ca_dir(), &tampered, Role::Site, "site-a", Validity::Days(1), &[]).unwrap_err();
    assert!(matches!(err, PkiError::BadCsr(_)), "{err:?}");
    assert!(matches!(
        fedcare_pki::sign_csr(&fed.ca_dir(), "garbage", Role::Site, "site-a", Validity::Days(1), &[]),
        Err(PkiError::BadCsr(_))
    ));
}

/// Flips bits in a character near the end of a PEM body: inside the signature.
fn tamper_near_end(pem: &str) -> String {
    let lines: Vec<&str> = pem.lines().collect();
    let (first, last) = (lines[0], lines[lines.len() - 1]);
    let mut body: Vec<char> = lines[1..lines.len() - 1].concat().chars().collect();
    let i = body.len() - 20;
    body[i] = if body[i] == 'A' { 'B' } else { 'A' };
    let body: Vec<String> = body.chunks(64).map(|line| line.iter().collect()).collect();
    format!("{first}\n{}\n{last}\n", body.join("\n"))
}

#[test]
fn keys_are_private_and_never_overwritten() {
    let fed = Federation::new("test federation");
    assert_eq!(mode(&fed.ca_dir().join("ca.key")), 0o600);
    assert_eq!(mode(&fed.ca_dir().join("ca.pem")), 0o644);
    let ca_key = std::fs::read(fed.ca_dir().join("ca.key")).unwrap();
    let again = fedcare_pki::init_ca(&fed.ca_dir(), "test federation", 365);
    assert!(matches!(again, Err(PkiError::Exists(_))), "{again:?}");
    assert_eq!(std::fs::read(fed.ca_dir().join("ca.key")).unwrap(), ca_key);

    let dir = tempfile::tempdir().unwrap();
    let (key_path, csr_path) = fedcare_pki::make_key_and_csr(dir.path(), "site-a").unwrap();
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&csr_path), 0o644);
    let key = std::fs::read(&key_path).unwrap();
    let again = fedcare_pki::make_key_and_csr(dir.path(), "site-a");
    assert!(matches!(again, Err(PkiError::Exists(_))), "{again:?}");
    assert_eq!(std::fs::read(&key_path).unwrap(), key);
    // Even with the CSR gone, the key is not replaced.
    std::fs::remove_file(&csr_path).unwrap();
    assert!(matches!(fedcare_pki::make_key_and_csr(dir.path(), "site-a"), Err(PkiError::Exists(p)) if p == key_path));
    assert_eq!(std::fs::read(&key_path).unwrap(), key);
    // Names that could escape the directory are refused.
    assert!(matches!(fedcare_pki::make_key_and_csr(dir.path(), "../x"), Err(PkiError::BadName { .. })));
}

#[test]
fn host_names_belong_to_the_coordinator_only() {
    let fed = Federation::new("test federation");
    let dir = tempfile::tempdir().unwrap();
    let (_, csr_path) = fedcare_pki::make_key_and_csr(dir.path(), "p").unwrap();
    let csr = std::fs::read_to_string(csr_path).unwrap();
    let host: HostName = "coordinator.example.org".parse().unwrap();
    let sign = |role, hosts: &[HostName]| fedcare_pki::sign_csr(&fed.ca_dir(), &csr, role, "p", Validity::Days(1), hosts);
    assert!(matches!(sign(Role::Site, std::slice::from_ref(&host)), Err(PkiError::HostsNotAllowed(Role::Site))));
    assert!(matches!(sign(Role::Coordinator, &[]), Err(PkiError::CoordinatorNeedsHost)));
    let cert = sign(Role::Coordinator, &[host, "10.1.2.3".parse().unwrap()]).unwrap();
    let identity = fedcare_pki::identity_of_pem(&cert).unwrap();
    assert_eq!(identity.role(), Role::Coordinator);
}

#[test]
fn validity_is_bounded_by_the_ca() {
    let fed = Federation::new("test federation");
    let dir = tempfile::tempdir().unwrap();
    let (_, csr_path) = fedcare_pki::make_key_and_csr(dir.path(), "p").unwrap();
    let csr = std::fs::read_to_string(csr_path).unwrap();
    let sign = |validity| fedcare_pki::sign_csr(&fed.ca_dir(), &csr, Role::Site, "p", validity, &[]);
    assert!(matches!(sign(Validity::Days(366)), Err(PkiError::BadValidity(_))));
    assert!(matches!(sign(Validity::Days(0)), Err(PkiError::BadValidity(_))));
    let issued = fedcare_pki::list_issued(&fed.ca_dir()).unwrap();
    assert!(issued.is_empty(), "a refused request must leave no certificate behind");
    sign(Validity::Days(364)).unwrap();
}

#[test]
fn revocation_is_recorded_and_listed() {
    let fed = Federation::new("test federation");
    let a = fed.enrol(Role::Site, "site-a");
    let b = fed.enrol(Role::ResearchLead, "alice");
    let serial_a = Serial::of_cert_pem(&a.cert).unwrap();

    assert!(fedcare_pki::revoke(&fed.ca_dir(), Revoke::Serial(&serial_a)).unwrap());
    assert!(!fedcare_pki::revoke(&fed.ca_dir(), Revoke::CertPem(&a.cert)).unwrap(), "already revoked");
    let unknown: Serial = "4a".parse().unwrap();
    assert!(matches!(fedcare_pki::revoke(&fed.ca_dir(), Revoke::Serial(&unknown)), Err(PkiError::NotIssuedHere(_))));
    let other = Federation::new("another federation");
    let stranger = other.enrol(Role::Site, "site-a");
    assert!(matches!(
        fedcare_pki::revoke(&fed.ca_dir(), Revoke::CertPem(&stranger.cert)),
        Err(PkiError::NotIssuedHere(_))
    ));

    let mut issued = fedcare_pki::list_issued(&fed.ca_dir()).unwrap();
    issued.sort_by(|x, y| x.identity.cmp(&y.identity));
    let summary: Vec<(String, bool)> = issued.iter().map(|i| (i.identity.to_string(), i.revoked)).collect();
    assert_eq!(summary, vec![("site site-a".to_string(), true), ("research-lead alice".to_string(), false)]);
    assert_eq!(issued[0].serial, serial_a);
    assert_eq!(issued[1].serial, Serial::of_cert_pem(&b.cert).unwrap());

    // The CRL lists exactly the revoked serial, and its number grows.
    let first = fed.crl();
    let second = fed.crl();
    let parse = |pem: &str| {
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let serials: Vec<Vec<u8>> = crl.iter_revoked_certificates().map(|r| r.raw_serial().to_vec()).collect();
        (crl.crl_number().unwrap().clone(), serials)
    };
    let (n1, serials) = parse(&first);
    let (n2, _) = parse(&second);
    assert!(n2 > n1);
    assert_eq!(serials, vec![serial_a.as_bytes().to_vec()]);
    assert_eq!(std::fs::read_to_string(fed.ca_dir().join("crl.pem")).unwrap(), second);
}
