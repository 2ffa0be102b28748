//! The Helm chart, run for real: the image is built with podman (deploy/image/build.sh, the runtime
//! stage of deploy/Dockerfile with this build's binary), the chart is rendered with
//! values-local.yaml plus this test's own database, bus names, sandbox and ports, and played with
//! `podman kube play`. The migration pod exits 0, every role becomes ready by its own probe run in
//! its container, events published through the gateway pod are matched by the two worker pods,
//! which split the work with no duplicate, and nothing is left behind.
//!
//! In the nextest group `heavy` (one at a time; see .config/nextest.toml).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use oa_domain::Scope;
use oa_testkit::TestDb;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn local_dir() -> PathBuf {
    std::env::var_os("ONE_AGENTS_LOCAL_DIR").map(PathBuf::from).unwrap_or(root().join(".local"))
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", root().join("deploy/image/containers.conf"))
        .output()
        .expect("podman runs (deploy/local/install.sh installs it)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Plays a rendered release and removes all of it when dropped, whatever happened.
struct Release {
    dir: PathBuf,
    manifest: Value,
}

impl Release {
    fn strings(&self, key: &str) -> Vec<String> {
        self.manifest[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    fn down(&self) {
        podman(&["kube", "down", &self.dir.join("play.yaml").to_string_lossy()]);
        for pod in self.strings("pods") {
            podman(&["pod", "rm", "-f", &pod]);
        }
        for secret in self.strings("secrets") {
            podman(&["secret", "rm", &secret]);
        }
        for volume in self.strings("volumes") {
            podman(&["volume", "rm", "-f", &volume]);
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.down();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn logs(container: &str) -> String {
    let output = podman(&["logs", container]);
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_runs_as_pods_and_two_workers_split_the_work_without_duplicates() {
    let started = Instant::now();
    // 1. The image, as users build it (the runtime stage), with this build's binary.
    let tag = "localhost/one-agents:test";
    let build = Command::new("bash")
        .arg(root().join("deploy/image/build.sh"))
        .arg(tag)
        .env("ONE_AGENTS_BINARY", env!("CARGO_BIN_EXE_one-agents"))
        .output()
        .unwrap();
    assert!(build.status.success(), "make image: {}", String::from_utf8_lossy(&build.stderr));
    let image_took = started.elapsed();

    // 2. This test's own database, bus names, Redis prefix and sandbox; ports of its own.
    let db = TestDb::create().await.unwrap();
    let sandbox_stop = tokio_util::sync::CancellationToken::new();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let sandbox = oa_sandbox::start(any, any, sandbox_stop.clone()).await.unwrap();
    let mut config = oa_testkit::test_config(&db, None);
    oa_testkit::use_sandbox(&mut config, &sandbox);
    let release = format!("kp{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let gateway_port = free_port();
    let mut roles = serde_json::Map::new();
    let mut metrics_ports = vec![("gateway", free_port())];
    roles.insert(
        "gateway".into(),
        json!({"httpPort": gateway_port, "grpcPort": free_port(), "metricsPort": metrics_ports[0].1}),
    );
    for role in ["agents", "catalog", "executions", "approvals", "credits", "worker"] {
        let metrics_port = free_port();
        metrics_ports.push((role, metrics_port));
        roles.insert(role.into(), json!({"grpcPort": free_port(), "metricsPort": metrics_port}));
    }
    let worker_b_metrics = free_port();
    metrics_ports.push(("worker", worker_b_metrics));
    let base = format!("http://{}", sandbox.http_addr);
    let admin_url = db.app_url.replacen("one_agents_app@", "postgres@", 1);
    let values = json!({
        "image": {"repository": "localhost/one-agents", "tag": "test", "pullPolicy": "Never"},
        "roles": roles,
        "additionalWorkers": [{"name": "worker-b", "grpcPort": free_port(), "metricsPort": worker_b_metrics}],
        "secrets": {
            "databaseUrl": db.app_url, "databaseAdminUrl": admin_url,
            "redisUrl": config.redis.url.expose_secret(),
        },
        "config": {
            "telemetry": {"log_filter": "info,oa_worker=debug,sqlx=warn,async_nats=warn"},
            "redis": {"key_prefix": config.redis.key_prefix},
            "nats": {
                "url": config.nats.url, "subject_prefix": config.nats.subject_prefix,
                "bus_stream": config.nats.bus_stream, "work_stream": config.nats.work_stream,
                "consumer": config.nats.consumer, "event_concurrency": 2, "work_concurrency": 2,
            },
            "sandbox": {"http_listen": sandbox.http_addr.to_string(), "smtp_listen": sandbox.smtp_addr.to_string()},
            "llm": {"providers": {"sandbox": {"kind": "openai", "base_url": base}}},
            "channels": {"sms_url": config.channels.sms_url, "smtp_host": config.channels.smtp_host,
                         "smtp_port": config.channels.smtp_port},
            "actions": {"endpoints": config.actions.endpoints},
            "approvals": {"public_url": format!("http://127.0.0.1:{gateway_port}")},
        },
    });
    let dir = std::env::temp_dir().join(format!("oa-{release}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("values.json"), values.to_string()).unwrap();
    let python = local_dir().join("venv/bin/python");
    let rendered = Command::new(&python)
        .arg(root().join("deploy/chart/chart.py"))
        .args(["podman", "--name", &release, "--out"])
        .arg(&dir)
        .arg("-f")
        .arg(root().join("helm/one-agents/values-local.yaml"))
        .arg("-f")
        .arg(dir.join("values.json"))
        .output()
        .unwrap();
    assert!(rendered.status.success(), "render: {}", String::from_utf8_lossy(&rendered.stderr));
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let release = Release { dir: dir.clone(), manifest };

    // 3. Play it.
    for secret in release.strings("secrets") {
        let file = dir.join("secrets").join(format!("{secret}.json"));
        let created = podman(&["secret", "create", &secret, &file.to_string_lossy()]);
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    }
    let played = podman(&["kube", "play", &dir.join("play.yaml").to_string_lossy()]);
    assert!(played.status.success(), "kube play: {}", String::from_utf8_lossy(&played.stderr));

    // 4. The migration Job's pod exits 0.
    let jobs = release.strings("jobs");
    assert_eq!(jobs.len(), 1, "the migration job");
    let waited = podman(&["wait", &jobs[0]]);
    assert_eq!(String::from_utf8_lossy(&waited.stdout).trim(), "0", "migrate: {}", logs(&jobs[0]));

    // 5. Every role becomes ready, by the chart's own readiness probe run in its container.
    let containers = release.manifest["containers"].as_array().unwrap().clone();
    assert_eq!(containers.len(), 8, "seven roles and a second worker");
    for container in &containers {
        let name = container["name"].as_str().unwrap();
        let probe: Vec<&str> =
            container["probe"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exec = podman(&[&["exec", name][..], &probe].concat());
            if exec.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready: {}\n{}",
                String::from_utf8_lossy(&exec.stderr),
                logs(name)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let ready_took = started.elapsed() - image_took;

    // Every pod serves its role's metrics on the chart's metrics port.
    let http = reqwest::Client::new();
    for (role, port) in &metrics_ports {
        let text =
            http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with("oneagents_build_info") && l.contains(&format!("role=\"{role}\""))),
            "{role} on {port} serves its metrics: {}",
            text.chars().take(400).collect::<String>()
        );
        assert!(text.contains("# HELP oneagents_"), "{role}: HELP lines");
    }

    // 6. Events through the gateway pod; the worker pods match them and run the executions.
    let org = db.create_org("pro").await.unwrap();
    let (_, key) = db.create_key(&org, &[Scope::EventsPublish, Scope::ExecutionsRead]).await.unwrap();
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let events = 24;
    for n in 0..events {
        let body = json!({"source_product": "psa", "event_type": "ticket.created",
            // The sandbox model answers after 300 ms: a worker with two slots cannot take it all.
            "payload": {"ticket_id": format!("tkt_{n}"), "priority": "p2", "subject": "VPN down sandbox-delay-ms:300",
                        "client_id": "cl_acme", "client_name": "Acme"}});
        let response = http
            .post(format!("{gateway}/api/events/publish"))
            .header("X-Integration-Key", &key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap_or_default());
    }
    let get = |url: &str| {
        let request = http.get(url).header("X-Integration-Key", &key);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let list = loop {
        let list = get(&format!("{gateway}/api/executions?agent_id=agent_system_dispatch&limit=100")).await;
        let executions = list["executions"].as_array().cloned().unwrap_or_default();
        if executions.len() >= events && executions.iter().all(|e| e["status"] == "completed") {
            break list;
        }
        assert!(Instant::now() < deadline, "the executions did not all complete: {list}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(list["total"], events, "one execution per event, none twice");
    let id = list["executions"][0]["id"].as_str().unwrap();
    let detail = get(&format!("{gateway}/api/executions/{id}")).await;
    assert!(!detail["steps"].as_array().unwrap().is_empty(), "a trace: {detail}");
    assert_eq!(detail["steps"][0]["status"], "completed", "{detail}");

    // 7. Both worker pods ran a share of the executions; no event was matched twice and no
    // execution was run twice.
    let workers: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .filter(|name| name.ends_with("-worker"))
        .collect();
    assert_eq!(workers.len(), 2);
    let matched: Vec<usize> = workers.iter().map(|w| logs(w).matches("event matched").count()).collect();
    let tail = |w: &&str| {
        let config = podman(&["exec", w, "cat", "/etc/one-agents/one-agents.toml"]);
        let inspect = podman(&["inspect", w, "--format", "{{json .Mounts}}"]);
        format!(
            "{}\nconfig: {}{}\nmounts: {}",
            logs(w).lines().rev().take(4).collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&config.stdout).chars().take(300).collect::<String>(),
            String::from_utf8_lossy(&config.stderr),
            String::from_utf8_lossy(&inspect.stdout)
        )
    };
    assert_eq!(
        matched.iter().sum::<usize>(),
        events,
        "each event matched once: {matched:?}\n{}",
        workers.iter().map(tail).collect::<Vec<_>>().join("\n---\n")
    );
    let ran: Vec<usize> = workers.iter().map(|w| logs(w).matches("run settled").count()).collect();
    assert!(
        ran.iter().all(|r| *r > 0),
        "both workers ran executions: {ran:?} (events matched {matched:?})\n{}",
        workers.iter().map(tail).collect::<Vec<_>>().join("\n---\n")
    );
    assert_eq!(ran.iter().sum::<usize>(), events, "each execution ran once: {ran:?}");

    // 8. Nothing is left behind.
    release.down();
    let left = podman(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={}", release_name(&release)),
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "", "containers left behind");
    let secrets = podman(&["secret", "ls", "--format", "{{.Name}}"]);
    for secret in release.strings("secrets") {
        assert!(!String::from_utf8_lossy(&secrets.stdout).contains(&secret), "secret {secret} left behind");
    }
    sandbox_stop.cancel();
    eprintln!(
        "kube play: image {:.1}s, pods ready {:.1}s, whole run {:.1}s; per worker: events matched {matched:?}, work run {ran:?}",
        image_took.as_secs_f64(),
        ready_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn release_name(release: &Release) -> String {
    release.strings("pods")[0].split('-').next().unwrap().to_owned()
}
