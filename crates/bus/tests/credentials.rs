//! The plane connects to a NATS server that asks for credentials: a token, or a user and a
//! password, from `nats.*` (the chart carries the secret parts in its Secret). Without them, or
//! with wrong ones, the connection is refused.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oa_config::NatsConfig;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A nats-server (the one deploy/local/install.sh installs) on a free port, with `auth` flags.
async fn server(auth: &[&str]) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(auth)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is on PATH (deploy/local/env.sh)");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (Server(child), format!("nats://127.0.0.1:{port}"))
}

async fn works(config: &NatsConfig) -> bool {
    match oa_bus::connect(config).await {
        Ok(client) => client.publish("probe", "ok".into()).await.is_ok() && client.flush().await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_token_or_a_user_and_password_from_the_config_open_the_connection() {
    let (_token_server, url) = server(&["--auth", "a-nats-token-of-some-length"]).await;
    let mut config = NatsConfig { url, ..NatsConfig::default() };
    assert!(!works(&config).await, "no token, no connection");
    config.token = Some("a-wrong-token".into());
    assert!(!works(&config).await, "a wrong token is refused");
    config.token = Some("a-nats-token-of-some-length".into());
    assert!(works(&config).await, "the right token connects");

    let (_user_server, url) = server(&["--user", "plane", "--pass", "a-nats-password"]).await;
    let mut config = NatsConfig { url, ..NatsConfig::default() };
    assert!(!works(&config).await, "no credentials, no connection");
    config.user = Some("plane".into());
    config.password = Some("a-nats-password".into());
    assert!(works(&config).await, "the user and password connect");
}

#[test]
fn half_a_credential_is_refused_by_the_config() {
    let mut config = oa_config::Config::default();
    config.nats.user = Some("plane".into());
    assert!(config.validate().unwrap_err().to_string().contains("nats.user and nats.password"));
    config.nats.password = Some("pw".into());
    config.nats.token = Some("t".into());
    assert!(config.validate().unwrap_err().to_string().contains("not both"));
}
