//! Mutual TLS and roles at the coordinator: a party is known by its certificate. A research
//! lead cannot act as a site, a site cannot act as a research lead, a site cannot claim
//! another site's name, a connection without a client certificate is refused, and a site agent
//! with another site's certificate stops with a clear error before connecting. (Certificates
//! from another CA, expired or revoked are refused in the TLS handshake itself:
//! `crates/pki/tests/mtls.rs`.)

use fedcare_pki::{PartyFiles, Role};
use fedcare_proto::v1 as pb;
use fedcare_proto::v1::admin_service_client::AdminServiceClient;
use fedcare_proto::v1::site_service_client::SiteServiceClient;
use tonic::Code;

struct Federation {
    url: String,
    dir: tempfile::TempDir,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Federation {
    async fn start() -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        fedcare_pki::init_ca(&ca, "test federation", 30).unwrap();
        fedcare_pki::crl(&ca).unwrap();
        let coordinator = fedcare_sim::enrol(&ca, &dir.path().join("coordinator"), Role::Coordinator, "coordinator", &["127.0.0.1"]).unwrap();
        let (listener, addr, c) = fedcare_server::bind("127.0.0.1:0".parse().unwrap(), &dir.path().join("state.redb")).await.unwrap();
        let security = fedcare_server::Security::MutualTls { tls: coordinator.server().unwrap(), crl_path: None };
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut rx = rx;
            let _ = fedcare_server::serve_on(listener, c, security, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        });
        Federation { url: format!("https://{addr}"), dir, stop }
    }

    fn party(&self, role: Role, name: &str) -> PartyFiles {
        fedcare_sim::enrol(&self.dir.path().join("ca"), &self.dir.path().join(format!("{role}-{name}")), role, name, &[]).unwrap()
    }

    async fn channel(&self, party: &PartyFiles) -> tonic::transport::Channel {
        party.client("127.0.0.1").unwrap().connect(&self.url).await.unwrap()
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn join(site_id: &str) -> pb::JoinRequest {
    pb::JoinRequest {
        site_id: site_id.into(),
        protocol_version: fedcare_proto::PROTOCOL_VERSION,
        agent_version: "test".into(),
        identity_public_key: vec![1; 32],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_come_from_certificates_not_from_what_a_party_says() {
    let fed = Federation::start().await;
    let lead = fed.party(Role::ResearchLead, "alice");
    let site = fed.party(Role::Site, "cleveland");

    // A research lead cannot join as a site, whatever name it sends.
    let Err(err) = SiteServiceClient::new(fed.channel(&lead).await).join(join("cleveland")).await else { panic!("a research lead joined as a site") };
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("research-lead") && err.message().contains("alice"), "{}", err.message());

    // A site cannot act as a research lead: no job submission, no listing, no fetching.
    let mut admin = AdminServiceClient::new(fed.channel(&site).await);
    let err = admin.submit_job(pb::SubmitJobRequest { spec_toml: "x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = admin.list_sites(pb::ListSitesRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = admin.fetch_model(pb::FetchModelRequest { job_id: "0".repeat(64) }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A site cannot claim another site's name.
    let mut sites = SiteServiceClient::new(fed.channel(&site).await);
    let Err(err) = sites.join(join("hungarian")).await else { panic!("a site joined under another site's name") };
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("cleveland") && err.message().contains("hungarian"), "{}", err.message());
    let err = sites
        .submit(pb::SiteReply { site_id: "hungarian".into(), job_id: "0".repeat(64), task_id: 1, kind: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Under its own name it joins, and the research lead sees it listed under that name.
    let _stream = sites.join(join("cleveland")).await.expect("a site joins as itself").into_inner();
    let listed = AdminServiceClient::new(fed.channel(&lead).await).list_sites(pb::ListSitesRequest {}).await.unwrap().into_inner().sites;
    assert_eq!(listed.iter().map(|s| s.site_id.as_str()).collect::<Vec<_>>(), ["cleveland"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_client_certificate_is_refused() {
    let fed = Federation::start().await;
    // Plain gRPC to the TLS port: no handshake, no service.
    let plain = fed.url.replace("https://", "http://");
    let channel = tonic::transport::Channel::from_shared(plain).unwrap().connect().await;
    if let Ok(channel) = channel {
        let err = AdminServiceClient::new(channel).list_sites(pb::ListSitesRequest {}).await.unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }
    // The admin client refuses to send an https:// request without a TLS folder, and an
    // http:// one with a TLS folder (no silent downgrade).
    let err = fedcare_server::client::AdminClient::connect_as(&fed.url, None).await.err().expect("refused").to_string();
    assert!(err.contains("--tls"), "{err}");
    let lead = fed.party(Role::ResearchLead, "bob");
    let err = fedcare_server::client::AdminClient::connect_as(&fed.url.replace("https", "http"), Some(&lead)).await.err().expect("refused").to_string();
    assert!(err.contains("https://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_agent_with_another_sites_certificate_stops_before_connecting() {
    let fed = Federation::start().await;
    let hungarian = fed.party(Role::Site, "hungarian");
    let (mut cfg, base) = fedcare_e2e::site_config("cleveland", &fed.url);
    cfg.site.tls = Some(hungarian.dir.clone());
    let err = fedcare_agent::Agent::new(cfg, base).err().expect("refused").to_string();
    assert!(err.contains("hungarian") && err.contains("cleveland"), "{err}");
    // And with no TLS folder for an https:// coordinator.
    let (cfg, base) = fedcare_e2e::site_config("cleveland", &fed.url);
    let err = fedcare_agent::Agent::new(cfg, base).err().expect("refused").to_string();
    assert!(err.contains("[site].tls"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinators_audit_log_records_who_did_what_and_the_models_it_released() {
    let out = tempfile::tempdir().unwrap();
    let opts = fedcare_sim::SimOptions {
        rounds: Some(2),
        ..fedcare_e2e::sim_options(out.path())
    };
    let result = fedcare_sim::run(&opts, |_| {}).await.expect("simulation runs");
    let log = out.path().join("audit/coordinator.audit.jsonl");
    let verified = fedcare_audit::verify(&log).expect("the coordinator's log verifies");
    let entries = fedcare_audit::read_verified(&log).unwrap();
    assert_eq!(verified.entries, entries.len() as u64);
    use fedcare_audit::AuditEvent as E;
    // Sites are recorded under their certificates' identities, the job under the research lead's.
    let connected: Vec<(String, String)> =
        entries.iter().filter_map(|e| match &e.event { E::SiteConnected { site, identity } => Some((site.clone(), identity.clone())), _ => None }).collect();
    assert_eq!(connected.len(), 4, "{connected:?}");
    for (site, identity) in &connected {
        assert_eq!(identity, &format!("urn:fedcare:site:{site}"));
    }
    let submitted = entries.iter().find_map(|e| match &e.event { E::JobSubmitted { job_id, by, .. } => Some((job_id.clone(), by.clone())), _ => None });
    assert_eq!(submitted, Some((result.report.job_id.clone(), "urn:fedcare:research-lead:research-lead".to_owned())));
    // One entry per round, then the released model: its hash is that of the file written.
    let rounds: Vec<u32> = entries.iter().filter_map(|e| match &e.event { E::RoundCompleted { round, .. } => Some(*round), _ => None }).collect();
    assert_eq!(rounds, [1, 2]);
    let released = entries.iter().find_map(|e| match &e.event { E::ModelReleased { model_sha256, .. } => Some(model_sha256.clone()), _ => None });
    assert_eq!(released, Some(fedcare_audit::sha256_hex(&std::fs::read(&result.model_path).unwrap())));
    assert!(matches!(entries.last().map(|e| &e.event), Some(E::JobEnded { success: true, .. })), "{:?}", entries.last());

    // Every message is digested on both sides: what the coordinator recorded as sent to va is,
    // byte for byte, what va recorded as received, and the other way round.
    let coordinator_digests: Vec<fedcare_audit::PayloadDigest> = entries
        .iter()
        .flat_map(|e| match &e.event {
            E::RoundCompleted { payloads, .. } | E::PayloadsExchanged { payloads, .. } => payloads.clone(),
            _ => Vec::new(),
        })
        .filter(|d| d.site == "va")
        .collect();
    let va = fedcare_audit::read_verified(out.path().join("audit/va.audit.jsonl")).unwrap();
    let va_received: Vec<&str> = va.iter().filter_map(|e| match &e.event { E::PayloadReceived { sha256, .. } => Some(sha256.as_str()), _ => None }).collect();
    let va_sent: Vec<&str> = va.iter().filter_map(|e| match &e.event { E::PayloadSent { sha256, .. } => Some(sha256.as_str()), _ => None }).collect();
    let sent_to_va: Vec<&str> = coordinator_digests.iter().filter(|d| d.direction == "sent").map(|d| d.sha256.as_str()).collect();
    let received_from_va: Vec<&str> = coordinator_digests.iter().filter(|d| d.direction == "received").map(|d| d.sha256.as_str()).collect();
    assert!(sent_to_va.len() >= 2 * 5, "offer, stats, and per round train/keys/mask/unmask/eval: {}", sent_to_va.len());
    // (The job's last message, its end, may still be in flight when the simulation stops.)
    let n = sent_to_va.len() - 1;
    assert!(va_received.len() >= n, "{} of {n}", va_received.len());
    assert_eq!(sent_to_va[..n], va_received[..n], "coordinator's sent digests vs va's received");
    assert_eq!(received_from_va, va_sent, "coordinator's received digests vs va's sent");

    // Tampering is found at the entry it touched: change the second round's model hash.
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().position(|l| l.contains("\"round\":2") && l.contains("round_completed")).expect("round 2 entry");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[line] = lines[line].replacen("model_sha256\":\"", "model_sha256\":\"0", 1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let err = fedcare_audit::verify(&log).unwrap_err().to_string();
    assert!(err.contains(&format!("line {}", line + 1)), "{err}");
}
