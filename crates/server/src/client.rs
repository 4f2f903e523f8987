//! A small client for the admin service, shared by the `coordinator` CLI's research-lead
//! commands and the simulation runner.

use std::time::Duration;

use fedcare_proto::v1 as pb;
use fedcare_proto::v1::admin_service_client::AdminServiceClient;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::report::Report;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the coordinator at {url}: {source}")]
    Connect { url: String, source: tonic::transport::Error },
    #[error("the coordinator refused: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("the job failed: {0}")]
    JobFailed(String),
    #[error("the event stream ended before the job finished")]
    StreamEnded,
    #[error("the report is not valid JSON: {0}")]
    BadReport(String),
}

pub struct AdminClient {
    inner: AdminServiceClient<Channel>,
}

impl AdminClient {
    pub async fn connect(url: &str) -> Result<AdminClient, ClientError> {
        let endpoint = Channel::from_shared(url.to_owned())
            .map_err(|_| ClientError::Rpc(tonic::Status::invalid_argument(format!("{url:?} is not a valid URL"))))?
            .connect_timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(|source| ClientError::Connect { url: url.to_owned(), source })?;
        Ok(AdminClient { inner: AdminServiceClient::new(channel) })
    }

    pub async fn submit(&mut self, spec_toml: &str) -> Result<String, ClientError> {
        let r = self.inner.submit_job(pb::SubmitJobRequest { spec_toml: spec_toml.to_owned() }).await?;
        Ok(r.into_inner().job_id)
    }

    pub async fn sites(&mut self) -> Result<Vec<pb::SiteInfo>, ClientError> {
        Ok(self.inner.list_sites(pb::ListSitesRequest {}).await?.into_inner().sites)
    }

    /// Follows a job's events, calling `on_event` for each, until it finishes (returning its
    /// report) or fails.
    pub async fn watch(&mut self, job_id: &str, mut on_event: impl FnMut(&pb::JobEvent)) -> Result<Report, ClientError> {
        let mut stream = self.inner.watch_job(pb::WatchJobRequest { job_id: job_id.to_owned() }).await?.into_inner();
        while let Some(event) = stream.next().await {
            let event = event?;
            on_event(&event);
            match event.kind {
                Some(pb::job_event::Kind::Finished(f)) => {
                    return serde_json::from_str(&f.report_json).map_err(|e| ClientError::BadReport(e.to_string()));
                }
                Some(pb::job_event::Kind::Failed(f)) => return Err(ClientError::JobFailed(f.reason)),
                _ => {}
            }
        }
        Err(ClientError::StreamEnded)
    }

    /// The finished job's model (safetensors bytes) and report.
    pub async fn fetch(&mut self, job_id: &str) -> Result<(Vec<u8>, Report), ClientError> {
        let r = self.inner.fetch_model(pb::FetchModelRequest { job_id: job_id.to_owned() }).await?.into_inner();
        let report = serde_json::from_str(&r.report_json).map_err(|e| ClientError::BadReport(e.to_string()))?;
        Ok((r.safetensors, report))
    }
}

/// One line describing an event, for progress output.
pub fn describe(event: &pb::JobEvent, rounds: u32) -> Option<String> {
    use pb::job_event::Kind;
    let t = event.elapsed_ms as f64 / 1000.0;
    Some(match event.kind.as_ref()? {
        Kind::Joined(j) => format!("[{t:7.2}s] sites joined: {}", j.sites.join(", ")),
        Kind::StatsDone(s) => format!("[{t:7.2}s] federated feature statistics over {} training examples", s.total_examples),
        Kind::Progress(p) if p.stage == "train" || p.stage == "eval" => format!(
            "[{t:7.2}s] round {:>3}/{rounds} {:<5} sites done {}/{}",
            p.round, p.stage, p.sites_done, p.sites_total
        ),
        Kind::Progress(_) => return None,
        Kind::RoundDone(r) => format!(
            "[{t:7.2}s] round {:>3}/{rounds} done: {} sites, train loss {:.4}, test loss {:.4}, test accuracy {:.3} ({} ms)",
            r.round, r.sites, r.train_loss, r.eval_loss, r.eval_accuracy, r.round_ms
        ),
        Kind::Refused(r) => format!("[{t:7.2}s] site {} left round {}: {}", r.site_id, r.round, r.reason),
        Kind::Finished(_) => format!("[{t:7.2}s] job finished"),
        Kind::Failed(f) => format!("[{t:7.2}s] job FAILED: {}", f.reason),
    })
}
