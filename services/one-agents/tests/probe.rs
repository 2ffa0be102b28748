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
