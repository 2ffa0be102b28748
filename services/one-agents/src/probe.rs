//! `one-agents probe`: the readiness and liveness checks a container runs on itself, so probes
//! work in a minimal image with no curl or grpc_health_probe (Kubernetes `exec` probes, and podman,
//! which runs its probes inside the container). Exit 0 when healthy; otherwise one line on stderr
//! saying what failed, and exit 1.

use std::time::Duration;

use anyhow::{Context, bail};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TIMEOUT: Duration = Duration::from_secs(3);

/// `GET http://<addr><path>` answers 2xx.
pub async fn http(addr: &str, path: &str) -> anyhow::Result<()> {
    let url = format!("http://{addr}{path}");
    let client = reqwest::Client::builder().timeout(TIMEOUT).no_proxy().build()?;
    let response = client.get(&url).send().await.with_context(|| format!("{url} did not answer"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}

/// The standard gRPC health check (`grpc.health.v1.Health/Check`) of `service` ("" for the
/// whole server) answers SERVING; with `live`, that it answers at all (a liveness probe: a role
/// that cannot reach its database yet is alive, only not ready).
/// With `tls_ca`, it speaks TLS and trusts that CA, naming the server `localhost` (a role's
/// certificate carries it, since probes run beside the role).
pub async fn grpc(
    addr: &str,
    service: &str,
    live: bool,
    tls_ca: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let scheme = if tls_ca.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT);
    if let Some(ca) = tls_ca {
        endpoint = endpoint.tls_config(oa_auth::service::client_tls(ca)?.domain_name("localhost"))?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("{addr} did not answer"))?;
    let request = HealthCheckRequest { service: service.to_owned() };
    let answer =
        HealthClient::new(channel).check(request).await.with_context(|| format!("{addr} health check"))?;
    let status = answer.into_inner().status();
    if status != ServingStatus::Serving && !live {
        bail!("{addr} is {}", status.as_str_name());
    }
    Ok(())
}
