//! A real Prometheus server (Debian's `prometheus`, installed by `deploy/local/install.sh`) that
//! scrapes a test's planes every second, and `promtool`. Each test starts its own, on a free
//! loopback port with its storage in a temporary folder.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::TempDir;

pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
    http: reqwest::Client,
    _dir: TempDir,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` of each target (job name, address) every second, and
    /// waits until it answers.
    pub async fn start(targets: &[(&str, SocketAddr)]) -> anyhow::Result<Prometheus> {
        let dir = TempDir::new()?;
        let jobs: Vec<String> = targets
            .iter()
            .map(|(job, addr)| {
                format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n")
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{}",
            jobs.concat()
        );
        let config_path = dir.0.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus (installed by deploy/local/install.sh)")?;
        let prometheus = Prometheus { addr, child, http: reqwest::Client::new(), _dir: dir };
        for _ in 0..100 {
            let ready = prometheus.http.get(format!("http://{addr}/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(prometheus);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("prometheus did not become ready on {addr}")
    }

    /// The result of an instant query: (labels, value) per series.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
        let response: serde_json::Value = self
            .http
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", expr)])
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(response["status"] == "success", "query {expr}: {response}");
        let series = response["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(series
            .into_iter()
            .map(|s| {
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect())
    }

    /// The value of a query that yields one series (`sum(...)`), or `None` while it yields none.
    pub async fn scalar(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        Ok(self.query(expr).await?.first().map(|(_, value)| *value))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on Prometheus text: its exit code and what it printed.
pub fn promtool_check_metrics(text: &str) -> anyhow::Result<(i32, String)> {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool (installed with prometheus by deploy/local/install.sh)")?;
    child.stdin.take().context("promtool's stdin")?.write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    let printed =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.code().unwrap_or(-1), printed))
}
