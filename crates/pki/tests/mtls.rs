//! Real localhost tonic servers over mutual TLS: who gets in, who does not, and what the
//! server learns about the caller.

mod common;

use std::time::{Duration, SystemTime};

use common::{Federation, Server, call, raw_call};
use fedcare_pki::{Identity, PkiError, Revoke, Role, Serial, Validity};

/// A refusal, for the reason expected: the TLS alert or verifier error in the message.
fn refused(result: Result<(), String>, why: &str) {
    match result {
        Ok(()) => panic!("accepted; expected a refusal ({why})"),
        Err(e) => assert!(e.contains(why), "refused, but not for {why:?}: {e}"),
    }
}

#[tokio::test]
async fn a_valid_client_gets_in_and_the_server_sees_its_identity() {
    let fed = Federation::new("test federation");
    let server = Server::start(&fed.server_tls(), None).await;
    let site = fed.enrol(Role::Site, "site-a");
    let lead = fed.enrol(Role::ResearchLead, "alice");

    call(&fed.client(&site), &server.url()).await.unwrap();
    call(&fed.client(&lead), &server.url()).await.unwrap();

    assert_eq!(
        server.seen(),
        vec![Identity::new(Role::Site, "site-a").unwrap(), Identity::new(Role::ResearchLead, "alice").unwrap()]
    );
    server.stop().await;
}

#[tokio::test]
async fn the_raw_client_gets_in_with_a_valid_certificate() {
    // The control for the refusals below: the same raw client, with a good certificate.
    let fed = Federation::new("test federation");
    let server = Server::start(&fed.server_tls(), None).await;
    let site = fed.enrol(Role::Site, "site-a");
    raw_call(&fed.ca_pem, Some((&site.cert, &site.key)), server.addr).await.unwrap();
    assert_eq!(server.seen(), vec![Identity::new(Role::Site, "site-a").unwrap()]);
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let fed = Federation::new("test federation");
    let server = Server::start(&fed.server_tls(), None).await;
    refused(raw_call(&fed.ca_pem, None, server.addr).await, "CertificateRequired");
    assert!(server.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let fed = Federation::new("test federation");
    let other = Federation::new("another federation");
    let server = Server::start(&fed.server_tls(), None).await;
    // Same role and name, signed by the other CA.
    let impostor = other.enrol(Role::Site, "site-a");
    refused(raw_call(&fed.ca_pem, Some((&impostor.cert, &impostor.key)), server.addr).await, "UnknownCA");
    // Our own client refuses to even present it with our CA.
    let refused = fedcare_pki::client_tls(&fed.ca_pem, None, &impostor.cert, &impostor.key, "localhost");
    assert!(matches!(refused, Err(PkiError::BadCertificate(_))), "{refused:?}");
    assert!(server.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let fed = Federation::new("test federation");
    let server = Server::start(&fed.server_tls(), None).await;
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let expired = fed.enrol_with(
        Role::Site,
        "site-a",
        Validity::Between { not_before: now - 10 * day, not_after: now - day },
        &[],
    );
    refused(raw_call(&fed.ca_pem, Some((&expired.cert, &expired.key)), server.addr).await, "CertificateExpired");
    refused(call(&fed.client(&expired), &server.url()).await, "CertificateExpired");
    // Not yet valid is refused too.
    let future = fed.enrol_with(
        Role::Site,
        "site-b",
        Validity::Between { not_before: now + day, not_after: now + 10 * day },
        &[],
    );
    refused(raw_call(&fed.ca_pem, Some((&future.cert, &future.key)), server.addr).await, "alert");
    assert!(server.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused() {
    let fed = Federation::new("test federation");
    let site_a = fed.enrol(Role::Site, "site-a");
    let site_b = fed.enrol(Role::Site, "site-b");
    assert!(fedcare_pki::revoke(&fed.ca_dir(), Revoke::CertPem(&site_a.cert)).unwrap());
    // The server starts with a CRL that lists site-a.
    let server = Server::start(&fed.server_tls(), None).await;
    refused(raw_call(&fed.ca_pem, Some((&site_a.cert, &site_a.key)), server.addr).await, "CertificateRevoked");
    refused(call(&fed.client(&site_a), &server.url()).await, "CertificateRevoked");
    call(&fed.client(&site_b), &server.url()).await.unwrap();
    assert_eq!(server.seen(), vec![Identity::new(Role::Site, "site-b").unwrap()]);
    server.stop().await;
}

#[tokio::test]
async fn revoking_while_serving_takes_effect_with_the_new_crl() {
    let fed = Federation::new("test federation");
    let tls = fed.server_tls();
    let server = Server::start(&tls, None).await;
    let site = fed.enrol(Role::Site, "site-a");
    let client = fed.client(&site);
    call(&client, &server.url()).await.unwrap();

    let serial = Serial::of_cert_pem(&site.cert).unwrap();
    assert!(fedcare_pki::revoke(&fed.ca_dir(), Revoke::Serial(&serial)).unwrap());
    // Until the server loads a new CRL, the old one still lets the site in...
    call(&client, &server.url()).await.unwrap();
    // ...and from then on it does not, with resumption off no session skips the check.
    tls.set_crl(&fed.crl()).unwrap();
    refused(call(&client, &server.url()).await, "CertificateRevoked");
    assert_eq!(server.seen().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn roles_gate_what_a_caller_may_do() {
    let fed = Federation::new("test federation");
    let server = Server::start(&fed.server_tls(), Some(vec![Role::Operator, Role::ResearchLead])).await;
    let site = fed.enrol(Role::Site, "site-a");
    let lead = fed.enrol(Role::ResearchLead, "alice");

    let denied = common::check(fed.client(&site).connect(&server.url()).await.unwrap()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("site site-a"), "{}", denied.message());
    call(&fed.client(&lead), &server.url()).await.unwrap();
    assert_eq!(server.seen(), vec![Identity::new(Role::ResearchLead, "alice").unwrap()]);
    server.stop().await;
}

#[tokio::test]
async fn the_client_refuses_a_server_from_another_ca() {
    let fed = Federation::new("test federation");
    let other = Federation::new("another federation");
    // A coordinator of the other federation, with the right host names.
    let server = Server::start(&other.server_tls(), None).await;
    let site = fed.enrol(Role::Site, "site-a");
    refused(call(&fed.client(&site), &server.url()).await, "UnknownIssuer");
    assert!(server.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn the_client_refuses_a_server_under_another_name() {
    let fed = Federation::new("test federation");
    let server = Server::start(&fed.server_tls(), None).await;
    let site = fed.enrol(Role::Site, "site-a");
    let client = fedcare_pki::client_tls(&fed.ca_pem, None, &site.cert, &site.key, "coordinator.example.org").unwrap();
    refused(call(&client, &server.url()).await, "not valid for name \"coordinator.example.org\"");
    assert!(server.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn the_client_refuses_a_revoked_coordinator_when_it_has_the_crl() {
    let fed = Federation::new("test federation");
    let coord = fed.enrol(Role::Coordinator, "coord");
    let tls = fedcare_pki::server_tls(&fed.ca_pem, &fed.crl(), &coord.cert, &coord.key).unwrap();
    let server = Server::start(&tls, None).await;
    let site = fed.enrol(Role::Site, "site-a");
    fedcare_pki::revoke(&fed.ca_dir(), Revoke::CertPem(&coord.cert)).unwrap();
    let crl = fed.crl();
    // Without the CRL the site cannot know; with it, it refuses.
    call(&fed.client(&site), &server.url()).await.unwrap();
    let careful = fedcare_pki::client_tls(&fed.ca_pem, Some(&crl), &site.cert, &site.key, "localhost").unwrap();
    refused(call(&careful, &server.url()).await, "Revoked");
    server.stop().await;
}

#[tokio::test]
async fn only_a_coordinator_certificate_can_serve() {
    let fed = Federation::new("test federation");
    let site = fed.enrol(Role::Site, "site-a");
    let err = fedcare_pki::server_tls(&fed.ca_pem, &fed.crl(), &site.cert, &site.key).unwrap_err();
    assert!(matches!(err, PkiError::RoleNotAllowed { .. }), "{err:?}");
}

#[tokio::test]
async fn a_crl_from_another_ca_is_refused() {
    let fed = Federation::new("test federation");
    let other = Federation::new("another federation");
    let coord = fed.enrol(Role::Coordinator, "coord");
    let err = fedcare_pki::server_tls(&fed.ca_pem, &other.crl(), &coord.cert, &coord.key).unwrap_err();
    assert!(matches!(err, PkiError::BadCrl(_)), "{err:?}");
    let tls = fedcare_pki::server_tls(&fed.ca_pem, &fed.crl(), &coord.cert, &coord.key).unwrap();
    assert!(matches!(tls.set_crl(&other.crl()), Err(PkiError::BadCrl(_))));
    assert!(matches!(tls.set_crl("not a crl"), Err(PkiError::Pem { .. })));
}

#[tokio::test]
async fn urls_must_be_https_with_a_port() {
    assert!(fedcare_pki::ClientTls::endpoint("https://127.0.0.1:7000").is_ok());
    for bad in ["http://127.0.0.1:7000", "https://127.0.0.1", "127.0.0.1:7000", "not a url"] {
        assert!(matches!(fedcare_pki::ClientTls::endpoint(bad), Err(PkiError::BadUrl { .. })), "{bad}");
    }
}
