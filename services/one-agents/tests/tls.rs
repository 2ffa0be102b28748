//! gRPC between roles over TLS: the gateway, the services and the worker talk over TLS with
//! certificates from files (as the chart mounts them), the service token is still checked, a
//! plaintext client gets nowhere, and the exec probe speaks TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use oa_proto::common::WhoAmIRequest;
use oa_proto::common::diagnostics_client::DiagnosticsClient;
use oa_testkit::TestPlane;
use serde_json::json;

/// A CA and a role certificate for localhost and 127.0.0.1, made with the openssl CLI.
fn certificates(dir: &Path) -> oa_config::GrpcTlsConfig {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=one-agents test CA"],
        ]
        .concat(),
    );
    openssl(
        &[&["req"][..], &ec, &["-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost"]].concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    oa_config::GrpcTlsConfig {
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
        ca_file: dir.join("ca.crt"),
    }
}

fn temp_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("oa-tls-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn probe(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_one-agents"))
        .arg("probe")
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn roles_talk_grpc_over_tls_and_still_check_the_service_token() {
    let dir = temp_dir();
    let files = certificates(&dir);
    let tls = files.clone();
    let plane = TestPlane::start_with(move |c| {
        c.grpc.tls = Some(tls);
        // Rewritten to the port the plane binds; https:// because TLS is on.
        for endpoint in c.grpc.endpoints.values_mut() {
            *endpoint = "https://127.0.0.1:1".into();
        }
    })
    .await
    .unwrap();
    let endpoint = plane.config.grpc.endpoints["agents"].clone();
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    // Gateway → agents → catalog, over TLS.
    let org = plane.db.create_org("pro").await.unwrap();
    let definition = json!({
        "name": "Over TLS", "category": "service_desk",
        "trigger": {"type": "bus_event", "source_product": "psa", "event_type": "ticket.created"},
        "steps": [{"id": "tell", "type": "notification", "channel": "sms", "recipients": ["+15550100077"],
                   "body": "tls {{ event_payload.ticket_id }}"}],
        "client_scope": "all"
    });
    let id = common::active_agent(&plane, &org, &definition).await;

    // The worker → agents, executions and credits, over TLS.
    let event = oa_bus::Envelope::new(
        &org,
        "psa",
        "ticket.created",
        json!({"ticket_id": "tkt_tls", "client_id": "c"}),
    );
    plane.publish_on_bus(&event).await.unwrap();
    let done = plane
        .eventually(30, || async {
            let (_, list) =
                plane.get_json(&format!("/api/executions?agent_id={id}&status=completed"), &org).await;
            list["executions"].get(0).cloned()
        })
        .await;
    assert!(done.is_some(), "the execution completes over TLS");
    assert_eq!(plane.sandbox.of_kind("sms")[0].body["body"], "tls tkt_tls");

    // Over TLS but without the service token: refused, as in plaintext.
    let channel = oa_auth::service::channel(&endpoint, &plane.config.grpc).unwrap();
    let status = DiagnosticsClient::new(channel).who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // A plaintext client gets nowhere; the probe passes with the CA, as the chart runs it.
    let addr = endpoint.trim_start_matches("https://");
    let plain = probe(&["grpc", addr]).await;
    assert!(!plain.status.success(), "plaintext to a TLS server fails");
    let ca = files.ca_file.to_string_lossy().into_owned();
    let secure = probe(&["grpc", addr, "--tls-ca", &ca]).await;
    assert!(secure.status.success(), "{}", String::from_utf8_lossy(&secure.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tls_settings_that_cannot_work_are_refused_with_one_line() {
    let mut config = oa_config::Config::default();
    config.grpc.tls = Some(oa_config::GrpcTlsConfig {
        cert_file: "/nonexistent/tls.crt".into(),
        key_file: "/nonexistent/tls.key".into(),
        ca_file: "/nonexistent/ca.crt".into(),
    });
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("grpc.tls.cert_file /nonexistent/tls.crt is not a file"), "{error}");

    let dir = temp_dir();
    config.grpc.tls = Some(certificates(&dir));
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("must be an https:// address"), "{error}");
    config.grpc.tls = None;
    config.grpc.endpoints.insert("agents".into(), "https://agents:50051".into());
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("set grpc.tls"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}
