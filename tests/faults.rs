//! Faults the federation must survive or report clearly (more in `secure_aggregation.rs`,
//! `hostile_sites.rs` and `processes.rs`): a lost site is shown as lost and rejoins, and a
//! coordinator whose state file cannot be used says which file and why before serving.

use std::time::Duration;

use fedcare_e2e::TestCoordinator;

async fn site_state(url: &str, site: &str) -> Option<bool> {
    let mut admin = fedcare_server::client::AdminClient::connect(url).await.unwrap();
    admin.sites().await.unwrap().into_iter().find(|s| s.site_id == site).map(|s| s.connected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_site_is_shown_as_lost_and_comes_back() {
    let coordinator = TestCoordinator::start().await;
    let agent = coordinator.spawn_site("cleveland");
    coordinator.wait_for_sites(1).await;
    assert_eq!(site_state(&coordinator.url, "cleveland").await, Some(true));
    // The agent's machine goes away: its connection closes.
    agent.abort();
    let mut lost = false;
    for _ in 0..200 {
        if site_state(&coordinator.url, "cleveland").await == Some(false) {
            lost = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(lost, "the coordinator shows cleveland as lost");
    let mut admin = fedcare_server::client::AdminClient::connect(&coordinator.url).await.unwrap();
    let info = admin.sites().await.unwrap().into_iter().find(|s| s.site_id == "cleveland").unwrap();
    assert!(!info.connected && info.lost_ms_ago < 60_000, "{info:?}");
    // It restarts and reconnects: shown as connected again, once.
    let _again = coordinator.spawn_site("cleveland");
    coordinator.wait_for_sites(1).await;
    let sites = admin.sites().await.unwrap();
    assert_eq!(sites.iter().filter(|s| s.site_id == "cleveland").count(), 1, "{sites:?}");
    assert_eq!(site_state(&coordinator.url, "cleveland").await, Some(true));
    coordinator.stop().await;
}

#[tokio::test]
async fn a_state_file_that_cannot_be_used_is_a_clear_error_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    // Its folder is a regular file.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let state = blocker.join("coordinator.redb");
    let err = fedcare_server::bind("127.0.0.1:0".parse().unwrap(), &state).await.err().map(|e| e.to_string()).expect("refused");
    assert!(err.contains(&state.display().to_string()) || err.contains("not-a-folder"), "{err}");
    // It exists but is not a state file (e.g. a backup restored to the wrong name).
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
    let err = fedcare_server::bind("127.0.0.1:0".parse().unwrap(), &garbage).await.err().map(|e| e.to_string()).expect("refused");
    assert!(err.contains("garbage.redb"), "{err}");
    // Nothing was written over it.
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x5a; 4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_tools_work_health_answers_serving_and_reflection_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let coordinator = TestCoordinator::start().await;
    let channel = tonic::transport::Channel::from_shared(coordinator.url.clone()).unwrap().connect().await.unwrap();
    // grpc.health.v1 (what Kubernetes probes and grpc_health_probe ask).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "fedcare.v1.SiteService", "fedcare.v1.AdminService"] {
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service:?}");
    }
    // Server reflection (what `grpcurl list` asks).
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut responses = ServerReflectionClient::new(channel).server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().expect("a reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("{response:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["fedcare.v1.SiteService", "fedcare.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    coordinator.stop().await;
}
