//! A small client for the admin service, shared by the `coordinator` CLI's research-lead
//! commands and the simulation runner.

use std::time::Duration;

use fedcare_proto::v1 as pb;
use fedcare_proto::v1::admin_service_client::AdminServiceClient;
use futures::StreamExt;
use prost::Message;
use tonic::transport::Channel;

use crate::report::Report;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the coordinator at {url}")]
    Connect { url: String, source: tonic::transport::Error },
    /// The status is kept for its code; its message is the whole explanation (not a source, so
    /// reports do not repeat it).
    #[error("the coordinator refused: {}", .0.message())]
    Rpc(tonic::Status),
    #[error("the job failed: {0}")]
    JobFailed(String),
    #[error("the event stream ended before the job finished")]
    StreamEnded,
    #[error("the report is not valid JSON: {0}")]
    BadReport(String),
    #[error("mutual TLS: {0}")]
    Tls(String),
    #[error("the model download was damaged or cut short: {0}")]
    Download(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s)
    }
}

pub struct AdminClient {
    inner: AdminServiceClient<Channel>,
    channel: Channel,
}

impl AdminClient {
    /// The standard gRPC health check (grpc.health.v1) of `service` ("" for the server as a
    /// whole): whether it answers SERVING. What container and Kubernetes probes run, through
    /// `coordinator health`, since Kubernetes' own gRPC probe cannot present a certificate.
    pub async fn health(&mut self, service: &str) -> Result<bool, ClientError> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut client = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let status = client.check(tonic_health::pb::HealthCheckRequest { service: service.to_owned() }).await?.into_inner().status;
        Ok(status == ServingStatus::Serving as i32)
    }

    /// Connects without TLS (an `http://` URL; development only).
    pub async fn connect(url: &str) -> Result<AdminClient, ClientError> {
        Self::connect_as(url, None).await
    }

    /// Connects as the party whose TLS folder is `tls`: an `https://` URL needs one (mutual
    /// TLS, the coordinator's certificate must name the URL's host), an `http://` URL must not
    /// have one (so a typo never silently drops TLS).
    pub async fn connect_as(url: &str, tls: Option<&fedcare_pki::PartyFiles>) -> Result<AdminClient, ClientError> {
        let https = url.starts_with("https://");
        match (https, tls) {
            (true, Some(party)) => {
                let host = fedcare_pki::url_host(url).map_err(|e| ClientError::Tls(e.to_string()))?;
                let client = party.client(&host).map_err(|e| ClientError::Tls(e.to_string()))?;
                let channel = client.connect(url).await.map_err(|e| ClientError::Tls(e.to_string()))?;
                return Ok(AdminClient { inner: AdminServiceClient::new(channel.clone()), channel });
            }
            (true, None) => {
                return Err(ClientError::Tls(format!("{url} is https://: give the folder with your key and certificate (--tls DIR)")));
            }
            (false, Some(_)) => {
                return Err(ClientError::Tls(format!("a TLS folder was given but {url} is not https://; use https:// to connect with mutual TLS")));
            }
            (false, None) => {}
        }
        let endpoint = Channel::from_shared(url.to_owned())
            .map_err(|_| ClientError::Rpc(tonic::Status::invalid_argument(format!("{url:?} is not a valid URL"))))?
            .connect_timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(|source| ClientError::Connect { url: url.to_owned(), source })?;
        Ok(AdminClient { inner: AdminServiceClient::new(channel.clone()), channel })
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

    /// Every job the coordinator has recorded, newest first.
    pub async fn jobs(&mut self) -> Result<Vec<pb::JobSummary>, ClientError> {
        Ok(self.inner.list_jobs(pb::ListJobsRequest {}).await?.into_inner().jobs)
    }

    /// One job's summary, rounds, and report JSON (empty until it has finished).
    pub async fn job(&mut self, job_id: &str) -> Result<pb::GetJobResponse, ClientError> {
        Ok(self.inner.get_job(pb::GetJobRequest { job_id: job_id.to_owned() }).await?.into_inner())
    }

    /// Cancels a running job; returns its summary afterwards.
    pub async fn cancel(&mut self, job_id: &str, reason: &str) -> Result<pb::JobSummary, ClientError> {
        let r = self.inner.cancel_job(pb::CancelJobRequest { job_id: job_id.to_owned(), reason: reason.to_owned() }).await?.into_inner();
        r.summary.ok_or_else(|| ClientError::Rpc(tonic::Status::internal("the coordinator sent no summary")))
    }

    /// The full id of the job whose id starts with `prefix` (as `jobs list` shows them, 12
    /// characters), so research leads need not paste 64 hex digits. A full id is returned as is.
    pub async fn resolve(&mut self, prefix: &str) -> Result<String, ClientError> {
        if prefix.len() == 64 {
            return Ok(prefix.to_owned());
        }
        if prefix.len() < 4 {
            return Err(ClientError::Rpc(tonic::Status::invalid_argument(format!("job id {prefix:?} is too short: give at least 4 characters"))));
        }
        let matches: Vec<String> = self.jobs().await?.into_iter().map(|j| j.job_id).filter(|id| id.starts_with(prefix)).collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ClientError::Rpc(tonic::Status::not_found(format!("no job id starts with {prefix:?} (see `coordinator jobs list`)")))),
            many => Err(ClientError::Rpc(tonic::Status::invalid_argument(format!(
                "{} jobs start with {prefix:?}: give more characters",
                many.len()
            )))),
        }
    }

    /// The finished job's model (safetensors bytes) and report.
    pub async fn fetch(&mut self, job_id: &str) -> Result<(Vec<u8>, Report), ClientError> {
        let mut stream = self.inner.fetch_model(pb::FetchModelRequest { job_id: job_id.to_owned() }).await?.into_inner();
        let download = |e: fedcare_wire::chunk::ChunkError| ClientError::Download(e.to_string());
        let first = stream.message().await?.ok_or(ClientError::Download("the coordinator sent nothing".into()))?;
        let mut asm = fedcare_wire::chunk::Assembler::new(&first, fedcare_wire::chunk::MAX_PAYLOAD_BYTES).map_err(download)?;
        asm.push(&first).map_err(download)?;
        while let Some(c) = stream.message().await? {
            asm.push(&c).map_err(download)?;
        }
        let payload = asm.finish().map_err(download)?;
        let r = pb::FetchModelResponse::decode(payload.as_slice()).map_err(|e| ClientError::Download(e.to_string()))?;
        let report = serde_json::from_str(&r.report_json).map_err(|e| ClientError::BadReport(e.to_string()))?;
        Ok((r.safetensors, report))
    }
}

/// A progress line. Transient lines (which site finished what within a stage) are worth
/// showing on a terminal, overwritten in place, but not in a log.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub text: String,
    pub transient: bool,
}

/// One line describing an event, for progress output.
pub fn describe(event: &pb::JobEvent, rounds: u32) -> Option<Line> {
    use pb::job_event::Kind;
    let t = event.elapsed_ms as f64 / 1000.0;
    let of_rounds = if rounds > 0 { format!("/{rounds}") } else { String::new() };
    let line = |text: String| Some(Line { text, transient: false });
    match event.kind.as_ref()? {
        Kind::Joined(j) => line(format!("[{t:7.2}s] sites joined: {}", j.sites.join(", "))),
        Kind::StatsDone(s) => line(format!("[{t:7.2}s] federated feature statistics over {} training examples", s.total_examples)),
        Kind::Progress(p) => Some(Line {
            text: format!("[{t:7.2}s] round {:>3}{of_rounds} {:<5} sites done {}/{}", p.round, p.stage, p.sites_done, p.sites_total),
            transient: true,
        }),
        Kind::RoundDone(r) => line(format!(
            "[{t:7.2}s] round {:>3}{of_rounds} done: {} sites, train loss {}, test loss {:.4}, test accuracy {:.3} ({} ms)",
            r.round,
            r.sites,
            if r.train_loss.is_nan() { "n/a".to_owned() } else { format!("{:.4}", r.train_loss) },
            r.eval_loss,
            r.eval_accuracy,
            r.round_ms
        )),
        Kind::Refused(r) => line(format!("[{t:7.2}s] site {} left round {}: {}", r.site_id, r.round, r.reason)),
        Kind::Finished(_) => line(format!("[{t:7.2}s] job finished")),
        Kind::Failed(f) => line(format!("[{t:7.2}s] job FAILED: {}", f.reason)),
    }
}

/// Prints progress lines to stderr: transient ones overwrite each other on a terminal and are
/// skipped otherwise, so logs and CI output keep one line per notable event.
pub struct ProgressPrinter {
    tty: bool,
    pending: bool,
}

impl Default for ProgressPrinter {
    fn default() -> Self {
        use std::io::IsTerminal;
        ProgressPrinter { tty: std::io::stderr().is_terminal(), pending: false }
    }
}

impl ProgressPrinter {
    pub fn print(&mut self, line: &Line) {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        if line.transient {
            if self.tty {
                let _ = write!(err, "\r{}\x1b[K", line.text);
                let _ = err.flush();
                self.pending = true;
            }
            return;
        }
        if self.pending {
            let _ = write!(err, "\r\x1b[K");
            self.pending = false;
        }
        let _ = writeln!(err, "{}", line.text);
    }
}
