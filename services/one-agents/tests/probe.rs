//! `one-agents probe`, as a container's exec probe runs it: against a running plane's gateway and
//! gRPC roles it exits 0; against nothing, or a role that is draining, it exits 1 with one line.

use std::process::Output;

use oa_testkit::TestPlane;

async fn probe(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_one-agents"))
        .arg("probe")
        .args(args)
        .env("ONE_AGENTS_TELEMETRY__LOG_FILTER", "error")
        .output()
        .await
        .expect("the one-agents binary runs")
}

fn dead_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

#[tokio::test]
async fn probes_pass_on_a_ready_plane_and_fail_with_one_line_otherwise() {
    let mut plane = TestPlane::start().await.unwrap();
    let gateway = plane.addr.to_string();
    let grpc = plane.config.grpc.endpoints["agents"].trim_start_matches("http://").to_owned();
    for args in
        [vec!["http", gateway.as_str()], vec!["http", &gateway, "--path", "/healthz"], vec!["grpc", &grpc]]
    {
        let output = probe(&args).await;
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let agents = probe(&["grpc", &grpc, "--service", "oneagents.agents.v1.Agents"]).await;
    assert!(agents.status.success(), "{}", String::from_utf8_lossy(&agents.stderr));

    let nothing = dead_port();
    for args in [vec!["http", nothing.as_str()], vec!["grpc", &nothing]] {
        let output = probe(&args).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&nothing) && stderr.trim().lines().count() <= 3, "{stderr}");
    }
    // A stopped plane fails its probes.
    plane.restart().await.unwrap();
    let output = probe(&["grpc", &grpc]).await;
    assert!(!output.status.success(), "the old address is gone after a restart");
}

#[tokio::test]
async fn serve_refuses_an_unknown_role_with_one_line() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_one-agents"))
        .args(["serve", "--services", "gateway,nope"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown service \"nope\""), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_production_pod_missing_a_secret_exits_at_start_with_one_line_naming_it() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_one-agents"))
        .args(["serve", "--services", "gateway"])
        .env("ONE_AGENTS_ENVIRONMENT", "production")
        .env("ONE_AGENTS_AUTH__JWKS_URL", "https://hub.example/jwks.json")
        .env("ONE_AGENTS_GRPC__SERVICE_TOKEN", "a-real-secret-of-32-characters-xx")
        .env("ONE_AGENTS_APPROVALS__LINK_SECRET", "another-real-secret-of-32-chars-x")
        .env("ONE_AGENTS_ACTIONS__SIGNING_SECRET", "a-third-real-secret-of-32-chars-xx")
        .env("ONE_AGENTS_CHANNELS__SMTP_TLS", "tls")
        .env("ONE_AGENTS_LLM__PROVIDERS__SANDBOX__BASE_URL", "https://llm.example")
        .env("ONE_AGENTS_CHANNELS__SMS_URL", "https://sms.example/messages")
        .envs(
            ["PSA", "RMM", "DEFEND", "BACKUP", "BILLING", "HUB"]
                .map(|p| (format!("ONE_AGENTS_ACTIONS__ENDPOINTS__{p}"), "https://products.example")),
        )
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("ONE_AGENTS_DATABASE__URL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_worker_is_ready_while_it_consumes_the_bus_and_not_once_it_drains() {
    let roles = ["gateway", "agents", "catalog", "executions", "approvals", "credits"];
    let plane = TestPlane::start_roles(&roles, |_| {}).await.unwrap();
    let port = dead_port();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_one-agents"))
        .args(["serve", "--services", "worker"])
        .envs(oa_testkit::process_env(&plane.config))
        .env("ONE_AGENTS_GRPC__LISTEN", &port)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = plane
        .eventually(30, || async {
            probe(&["grpc", &port, "--service", "oneagents.worker.v1.Worker"])
                .await
                .status
                .success()
                .then_some(())
        })
        .await;
    assert!(ready.is_some(), "the worker reports SERVING once it consumes");
    assert!(probe(&["grpc", &port]).await.status.success(), "and so does its server");
    let kill = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || worker.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert!(!probe(&["grpc", &port]).await.status.success(), "a drained worker is not ready");
}
