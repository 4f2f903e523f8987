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
