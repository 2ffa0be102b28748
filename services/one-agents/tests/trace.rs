//! One trace per event, end to end, across real processes: every role runs as its own
//! `one-agents` process exporting spans over OTLP/gRPC (configured by the standard `OTEL_*`
//! variables) to a real receiver. A ransomware detection published through the gateway and
//! approved by a human is one tree: the gateway's request, the services' gRPC spans, the worker's
//! ingest, the execution, its runs and one span per step; the model and the product action
//! received that trace's `traceparent`; and the run after the approval links to the decision's
//! own trace. The same processes' JSON logs carry the trace ids and none of the secrets sent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use oa_testkit::otlp::{ReceivedSpan, Receiver};
use oa_testkit::{HUB_TEST_KEY_PEM, HUB_TEST_KID, TempDir, TestDb, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ROLES: [&str; 7] = ["gateway", "agents", "catalog", "executions", "approvals", "credits", "worker"];
const PROVIDER_KEY: &str = "sk-provider-secret-0123456789";
const REFUSED_KEY: &str = "oak_refused_secret_0123456789abcdef";
const BODY_SECRET: &str = "body-secret-9f8e7d6c5b4a";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every role as its own process; killed on drop. Each writes its stdout (JSON logs) to a file.
struct Split {
    children: Vec<Child>,
    gateway: SocketAddr,
    config: oa_config::Config,
    logs: Vec<std::path::PathBuf>,
    _sandbox: CancellationToken,
    _dir: TempDir,
}

impl Drop for Split {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self._sandbox.cancel();
    }
}

impl Split {
    /// Every role as its own process, exporting to `receiver` with the sampler `sampler`
    /// (`OTEL_TRACES_SAMPLER` and its argument).
    async fn start(db: &TestDb, receiver: &Receiver, sampler: [&str; 2]) -> (Split, oa_sandbox::Recorder) {
        let dir = TempDir::new().unwrap();
        let jwks_path = dir.0.join("jwks.json");
        let jwks = oa_auth::dev::jwks_for_private_pem(HUB_TEST_KEY_PEM, HUB_TEST_KID).unwrap();
        std::fs::write(&jwks_path, serde_json::to_vec(&jwks).unwrap()).unwrap();
        let stop = CancellationToken::new();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let sandbox = oa_sandbox::start(any, any, stop.clone()).await.unwrap();
        let mut config = oa_testkit::test_config(db, Some(jwks_path.clone()));
        oa_testkit::use_sandbox(&mut config, &sandbox);
        let ports: BTreeMap<&str, u16> = ROLES.iter().map(|role| (*role, free_port())).collect();
        for role in ["agents", "catalog", "executions", "approvals", "credits"] {
            config.grpc.endpoints.insert(role.to_owned(), format!("http://127.0.0.1:{}", ports[role]));
        }
        let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut env = oa_testkit::process_env(&config);
        env.extend([
            ("ONE_AGENTS_AUTH__JWKS_FILE".to_owned(), jwks_path.display().to_string()),
            (
                "ONE_AGENTS_TELEMETRY__LOG_FILTER".to_owned(),
                "info,oa_worker=debug,sqlx=warn,async_nats=warn".to_owned(),
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{}", receiver.addr)),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), "grpc".to_owned()),
            ("OTEL_TRACES_SAMPLER".to_owned(), sampler[0].to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG".to_owned(), sampler[1].to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ]);
        for name in config.llm.providers.keys() {
            env.push((
                format!("ONE_AGENTS_LLM__PROVIDERS__{}__API_KEY", name.to_uppercase()),
                PROVIDER_KEY.into(),
            ));
        }
        let mut children = Vec::new();
        let mut logs = Vec::new();
        for role in ROLES {
            let log = dir.0.join(format!("{role}.log"));
            let child = Command::new(env!("CARGO_BIN_EXE_one-agents"))
                .args(["serve", "--services", role])
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env("ONE_AGENTS_GRPC__LISTEN", format!("127.0.0.1:{}", ports[role]))
                .env("ONE_AGENTS_GATEWAY__LISTEN", gateway.to_string())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the one-agents binary starts");
            children.push(child);
            logs.push(log);
        }
        let split = Split { children, gateway, config, logs, _sandbox: stop, _dir: dir };
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(response) = http.get(format!("http://{gateway}/readyz")).send().await
                && response.status().is_success()
            {
                return (split, sandbox.recorder);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the split plane did not become ready");
    }

    fn token(&self, org: &str) -> String {
        let claims = oa_auth::dev::claims(&self.config.auth, org, "admin", "user-1", 3600);
        oa_auth::dev::sign(HUB_TEST_KEY_PEM, HUB_TEST_KID, &claims).unwrap()
    }

    fn logs(&self) -> String {
        self.logs.iter().map(|path| std::fs::read_to_string(path).unwrap_or_default()).collect()
    }
}

/// The JSON a signed-in GET answers, if it answers.
async fn get_json(http: &reqwest::Client, url: String, token: &str) -> Option<Value> {
    http.get(url).bearer_auth(token).send().await.ok()?.json().await.ok()
}

fn trace_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

#[tokio::test]
async fn an_approved_ransomware_detection_is_one_trace_from_the_gateway_to_the_last_step() {
    let receiver = Receiver::start().await.unwrap();
    let db = TestDb::create().await.unwrap();
    let (plane, sandbox) = Split::start(&db, &receiver, ["parentbased_always_on", ""]).await;
    let org = db.create_org("pro").await.unwrap();
    let settings =
        json!({"contacts": {"on_call_sms": ["+15550100200"], "security_email": ["security@msp.example"]}});
    db.set_org_settings(&org, settings).await.unwrap();
    let (_, key) = db.create_key(&org, &[oa_domain::Scope::EventsPublish]).await.unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", plane.gateway);
    let token = plane.token(&org);

    // A detection through the gateway.
    let body = json!({"source_product": "defend", "event_type": "ransomware.detected",
        "payload": {"detection_id": "det_1", "confidence": 0.97, "severity": "critical", "encrypted_files": 412,
                    "process": "svch0st.exe", "client_id": "cl_acme", "client_name": "Acme Corp",
                    "api_token": BODY_SECRET,
                    "device": {"id": "dev_1", "hostname": "WS-01", "role": "workstation"}}});
    let published = http.post(url("/api/events/publish")).header("x-integration-key", &key).json(&body);
    assert_eq!(published.send().await.unwrap().status(), 202);

    // Guardian stops at its gate; a human approves it.
    let gate = eventually(60, || async {
        let list = get_json(&http, url("/api/approvals?status=pending"), &token).await?;
        list["approvals"].as_array()?.first().cloned()
    })
    .await
    .expect("Guardian's gate");
    let execution_id = gate["execution_id"].as_str().unwrap().to_owned();
    // The gate's notification carries a signed decision link; opening it shows the gate.
    let link_token = eventually(30, || async {
        sandbox.records().iter().find_map(|record| {
            let text = record.body.to_string();
            let at = text.find("link?token=")? + "link?token=".len();
            let token: String =
                text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
            (!token.is_empty()).then_some(token)
        })
    })
    .await
    .expect("a decision link in the gate's notification");
    let page = http.get(url(&format!("/approvals/{}/link?token={link_token}", gate["id"].as_str().unwrap())));
    assert_eq!(page.send().await.unwrap().status(), 200, "the link page opens");
    let decision = http
        .post(url(&format!("/api/approvals/{}/decision", gate["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .json(&json!({"decision": "approved"}));
    assert_eq!(decision.send().await.unwrap().status(), 200);
    let execution = eventually(60, || async {
        let execution = get_json(&http, url(&format!("/api/executions/{execution_id}")), &token).await?;
        (execution["status"] == "completed").then_some(execution)
    })
    .await
    .expect("the execution completes");
    let ran: BTreeSet<String> = execution["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "completed")
        .map(|s| s["step_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ran.contains("isolate_device"), "{execution}");

    // The spans of the execution's steps arrive (batches leave every 100 ms).
    let spans = eventually(30, || async {
        let spans = receiver.spans();
        let steps: BTreeSet<String> = spans
            .iter()
            .filter(|s| s.name == "step" && s.attributes.get("execution_id") == Some(&json!(execution_id)))
            .filter_map(|s| s.attributes.get("step_id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        // A run's span closes after its last step's: wait for both runs too.
        let runs = spans
            .iter()
            .filter(|s| {
                s.name == "execution.run" && s.attributes.get("execution_id") == Some(&json!(execution_id))
            })
            .count();
        (ran.is_subset(&steps) && runs >= 2).then_some(spans)
    })
    .await
    .unwrap_or_else(|| panic!("a span for each step that ran, and both runs: {:?}", receiver.spans()));

    let root = spans
        .iter()
        .find(|s| {
            s.service == "one-agents-gateway"
                && s.attributes.get("path") == Some(&json!("/api/events/publish"))
        })
        .expect("the gateway's span of the publish request");
    assert!(root.parent_span_id.is_empty(), "the request starts the trace");
    let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    for service in ["one-agents-gateway", "one-agents-worker", "one-agents-credits", "one-agents-approvals"] {
        assert!(services.contains(service), "{service} in the trace: {services:?}");
    }
    let named = |name: &str| trace.iter().filter(|s| s.name == name).count();
    assert!(named("bus_event") >= 1, "the worker's ingest span");
    assert_eq!(named("execution"), 1, "one execution span");
    assert!(named("execution.run") >= 2, "the run up to the gate and the run after the approval");
    let grpc: Vec<&&ReceivedSpan> =
        trace.iter().filter(|s| s.attributes.get("rpc.system") == Some(&json!("grpc"))).collect();
    assert!(grpc.iter().any(|s| s.service == "one-agents-credits"), "credits' gRPC server span");
    assert!(grpc.iter().all(|s| s.attributes.contains_key("rpc.method")));

    // One span per step that ran, with its attributes.
    for step_id in &ran {
        let step = trace
            .iter()
            .find(|s| s.name == "step" && s.attributes.get("step_id") == Some(&json!(step_id)))
            .unwrap_or_else(|| panic!("a span for step {step_id}"));
        assert_eq!(step.attributes["execution_id"], json!(execution_id));
        assert!(step.attributes["step_type"].is_string());
    }
    let reasoning = trace
        .iter()
        .find(|s| s.name == "step" && s.attributes.get("step_type") == Some(&json!("ai_reason")))
        .expect("the ai_reason step's span");
    assert!(reasoning.attributes["model_tier"].is_string());
    assert!(reasoning.attributes["credits"].as_i64().unwrap() > 0);
    let run = trace.iter().find(|s| s.name == "execution.run").unwrap();
    assert_eq!(run.attributes["org_id"], json!(org));
    assert_eq!(run.attributes["agent_id"], json!("agent_system_guardian"));

    // The model and the product action were called inside the trace.
    for kind in ["llm", "action"] {
        let calls = sandbox.of_kind(kind);
        assert!(!calls.is_empty(), "a {kind} call");
        for call in calls {
            let traceparent =
                call.traceparent.as_deref().unwrap_or_else(|| panic!("{kind} got a traceparent"));
            assert_eq!(trace_of(traceparent), root.trace_id, "{kind}'s traceparent");
        }
    }

    // One tree: one root, and every other span's parent is in the trace.
    let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    for span in &trace {
        if span.span_id != root.span_id {
            assert!(
                ids.contains(span.parent_span_id.as_str()),
                "{} of {} is an orphan (parent {})",
                span.name,
                span.service,
                span.parent_span_id
            );
        }
    }

    // The run after the approval links to the decision's own trace, which starts at the gateway.
    let resumed: Vec<&&ReceivedSpan> =
        trace.iter().filter(|s| s.name == "execution.run" && !s.links.is_empty()).collect();
    assert_eq!(resumed.len(), 1, "the resumed run links to the decision");
    let decision_trace = &resumed[0].links[0];
    assert_ne!(decision_trace, &root.trace_id);
    assert!(spans.iter().any(|s| &s.trace_id == decision_trace
        && s.service == "one-agents-gateway"
        && s.attributes.get("path").and_then(Value::as_str).is_some_and(|p| p.ends_with("/decision"))));

    // Resources: a service name per role, the version and the environment.
    assert_eq!(root.resource["service.version"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(root.resource["deployment.environment"], json!("development"));

    // The JSON logs: one object per line, no colour codes, trace ids inside requests and runs,
    // and none of the secrets the plane was sent or holds.
    let logs = plane.logs();
    assert!(!logs.contains('\u{1b}'), "no ANSI codes in a log file");
    let lines: Vec<Value> = logs.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let in_trace: Vec<&Value> = lines.iter().filter(|l| l["trace_id"] == json!(root.trace_id)).collect();
    assert!(!in_trace.is_empty(), "lines logged inside the trace carry its id");
    assert!(in_trace.iter().all(|l| l["span_id"].is_string()));
    assert!(in_trace.iter().any(|l| l["span"]["org_id"] == json!(org)), "and the org they work for");
    let step_lines: Vec<&&Value> =
        in_trace.iter().filter(|l| l["fields"]["message"] == "step finished").collect();
    assert!(step_lines.len() >= ran.len(), "a line per step: {step_lines:?}");
    assert!(
        step_lines
            .iter()
            .all(|l| l["span"]["execution_id"] == json!(execution_id) && l["span"]["org_id"] == json!(org)),
        "a step's lines name the execution and the org: {step_lines:?}"
    );
    // A request's lines carry the trace its caller sent.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let refused = http
        .get(url("/api/agents"))
        .header("x-integration-key", REFUSED_KEY)
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"));
    assert_eq!(refused.send().await.unwrap().status(), 401);
    let refusal = eventually(10, || async {
        plane.logs().lines().find(|l| l.contains("refused an unknown")).map(str::to_owned)
    })
    .await
    .expect("the refusal is logged");
    let refusal: Value = serde_json::from_str(&refusal).unwrap();
    assert_eq!(refusal["trace_id"], json!(caller_trace), "{refusal}");
    let logs = plane.logs();
    for secret in [key.as_str(), token.as_str(), link_token.as_str(), PROVIDER_KEY, REFUSED_KEY, BODY_SECRET]
    {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
    eprintln!(
        "one trace: {} spans from {services:?}; steps {ran:?}; {} log lines, {} in the trace",
        trace.len(),
        lines.len(),
        in_trace.len()
    );
}

#[tokio::test]
async fn an_unsampled_event_exports_no_span_stores_no_traceparent_and_keeps_its_trace_id_in_logs() {
    let receiver = Receiver::start().await.unwrap();
    let db = TestDb::create().await.unwrap();
    let (plane, _sandbox) = Split::start(&db, &receiver, ["parentbased_traceidratio", "0"]).await;
    let org = db.create_org("pro").await.unwrap();
    let settings = json!({"contacts": {"on_call_sms": ["+15550100200"]}});
    db.set_org_settings(&org, settings).await.unwrap();
    let (_, key) = db.create_key(&org, &[oa_domain::Scope::EventsPublish]).await.unwrap();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", plane.gateway);

    // The publisher's trace, which its sampler dropped (flags 00).
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let body = json!({"source_product": "defend", "event_type": "ransomware.detected",
        "payload": {"detection_id": "det_2", "confidence": 0.97, "severity": "critical", "encrypted_files": 12,
                    "process": "svch0st.exe", "client_id": "cl_acme", "client_name": "Acme Corp",
                    "device": {"id": "dev_2", "hostname": "WS-02", "role": "workstation"}}});
    let published = http
        .post(url("/api/events/publish"))
        .header("x-integration-key", &key)
        .header("traceparent", format!("00-{caller_trace}-b7ad6b7169203331-00"))
        .json(&body);
    assert_eq!(published.send().await.unwrap().status(), 202);

    // Guardian runs up to its gate.
    let execution_id = eventually(60, || async {
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM executions.executions WHERE org_id = $1 AND status = 'waiting_approval'",
        )
        .bind(&org)
        .fetch_optional(&db.admin)
        .await
        .ok()
        .flatten()
    })
    .await
    .expect("Guardian waits at its gate");
    let stored: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM executions.executions WHERE id = $1")
            .bind(&execution_id)
            .fetch_one(&db.admin)
            .await
            .unwrap();
    assert_eq!(stored, None, "an unsampled execution stores no traceparent");

    // Its run's lines still carry the publisher's trace id, through the work item's header.
    let step_line = eventually(30, || async {
        plane.logs().lines().find_map(|line| {
            let line: Value = serde_json::from_str(line).ok()?;
            (line["fields"]["message"] == "step finished"
                && line["span"]["execution_id"] == json!(execution_id))
            .then_some(line)
        })
    })
    .await
    .expect("a step's line");
    assert_eq!(step_line["trace_id"], json!(caller_trace), "{step_line}");

    // Nothing is exported (batches would leave every 100 ms).
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert!(receiver.spans().is_empty(), "unsampled spans were exported: {:?}", receiver.spans());
}
