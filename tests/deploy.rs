#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error.
//! The deployment artefacts, checked for real: the Helm chart is linted, rendered and validated
//! (deploy/chart/chart.py, on the official Helm library and the Kubernetes schemas), its objects
//! are checked one by one, every secret setting of the config is proven to travel through the
//! Secret and never the ConfigMap, the config it renders is one the plane loads, and
//! docker-compose.yml is validated and compared with the chart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn python() -> PathBuf {
    let local = std::env::var_os("ONE_AGENTS_LOCAL_DIR").map(PathBuf::from).unwrap_or(root().join(".local"));
    local.join("venv/bin/python")
}

fn chart_py(args: &[&str]) -> std::process::Output {
    Command::new(python())
        .arg(root().join("deploy/chart/chart.py"))
        .args(args)
        .output()
        .expect("deploy/chart/chart.py runs (deploy/local/install.sh installs its tools)")
}

/// A temporary values file holding `values`.
struct ValuesFile(PathBuf);

impl ValuesFile {
    fn new(values: &Value) -> ValuesFile {
        let path = std::env::temp_dir().join(format!("oa-values-{}.json", uuid_like()));
        std::fs::write(&path, values.to_string()).unwrap();
        ValuesFile(path)
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Renders the chart with the values files, then `values` on top: Ok(objects) or Err(stderr).
fn try_render(files: &[&str], values: &Value) -> Result<Vec<Value>, String> {
    let extra = ValuesFile::new(values);
    let mut args = vec!["render".to_owned(), "--json".to_owned()];
    for file in files {
        args.extend(["-f".to_owned(), root().join(file).to_string_lossy().into_owned()]);
    }
    args.extend(["-f".to_owned(), extra.0.to_string_lossy().into_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = chart_py(&args);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let rendered: Vec<Value> = serde_json::from_slice(&output.stdout).expect("chart.py renders JSON");
    Ok(rendered.into_iter().map(|entry| entry["object"].clone()).collect())
}

fn render(files: &[&str], values: &Value) -> Vec<Value> {
    try_render(files, values).unwrap_or_else(|error| panic!("the chart renders: {error}"))
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn pod_spec(object: &Value) -> &Value {
    &object["spec"]["template"]["spec"]
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect()
}

const ROLES: [&str; 7] = ["gateway", "agents", "catalog", "executions", "approvals", "credits", "worker"];

#[test]
fn the_chart_lints_strictly_and_renders_and_validates_with_every_values_file() {
    let output = chart_py(&["check"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for case in ["lint --strict is clean", "default values", "values-production.yaml", "monolith mode"] {
        assert!(stdout.contains(case), "{stdout}");
    }
}

#[test]
fn the_charts_app_version_follows_the_workspace_version() {
    let chart = std::fs::read_to_string(root().join("helm/one-agents/Chart.yaml")).unwrap();
    let workspace: toml::Value = std::fs::read_to_string(root().join("Cargo.toml")).unwrap().parse().unwrap();
    let version = workspace["workspace"]["package"]["version"].as_str().unwrap();
    assert!(chart.contains(&format!("appVersion: \"{version}\"")), "Chart.yaml appVersion is not {version}");
}

#[test]
fn each_enabled_role_is_a_deployment_running_its_role_with_exec_probes_and_a_locked_down_context() {
    let objects = render(&[], &json!({}));
    let deployments = of_kind(&objects, "Deployment");
    assert_eq!(deployments.len(), ROLES.len());
    for role in ROLES {
        let deployment = named(&objects, "Deployment", &format!("one-agents-{role}"))
            .unwrap_or_else(|| panic!("a Deployment for {role}"));
        let spec = pod_spec(deployment);
        let container = &spec["containers"][0];
        assert_eq!(container["args"], json!(["serve", "--services", role]));
        for probe in ["readinessProbe", "livenessProbe"] {
            let command = &container[probe]["exec"]["command"];
            assert_eq!(
                command.as_array().unwrap()[0..2],
                [json!("one-agents"), json!("probe")],
                "{role} {probe}"
            );
        }
        let init = &spec["initContainers"][0];
        assert_eq!(
            init["args"].as_array().unwrap()[0..2],
            [json!("migrate"), json!("--check")],
            "{role} waits for its schema"
        );
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        for c in [container, init] {
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(c["envFrom"][0]["secretRef"]["name"], "one-agents-secrets");
        }
        assert_eq!(spec["terminationGracePeriodSeconds"], 30, "the drain grace (25) plus a margin");
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert!(
            annotations["checksum/config"].as_str().is_some_and(|c| c.len() == 64),
            "pods roll on config"
        );
        let env = env_of(container);
        assert_eq!(env["ONE_AGENTS_GRPC__ENDPOINTS__CREDITS"], "http://one-agents-credits:50051");
        assert_eq!(env["ONE_AGENTS_SHUTDOWN__GRACE_SECONDS"], "25");
    }
    let gateway = pod_spec(named(&objects, "Deployment", "one-agents-gateway").unwrap());
    assert_eq!(gateway["containers"][0]["readinessProbe"]["exec"]["command"][3], "127.0.0.1:8080");
    assert_eq!(gateway["containers"][0]["readinessProbe"]["exec"]["command"][5], "/readyz");
    for role in ["gateway", "agents", "catalog", "executions", "approvals", "credits"] {
        assert!(named(&objects, "Service", &format!("one-agents-{role}")).is_some(), "a Service for {role}");
    }
    assert!(named(&objects, "ServiceAccount", "one-agents").is_some());

    // A disabled role has no Deployment and no Service; the others still find it by its address.
    let without = render(&[], &json!({"roles": {"agents": {"enabled": false}}}));
    assert!(named(&without, "Deployment", "one-agents-agents").is_none());
    assert!(named(&without, "Service", "one-agents-agents").is_none());
    assert_eq!(of_kind(&without, "Deployment").len(), ROLES.len() - 1);

    // Monolith mode: one Deployment running everything; the roles reach each other in the pod.
    let monolith = render(&[], &json!({"mode": "monolith"}));
    let deployments = of_kind(&monolith, "Deployment");
    assert_eq!(deployments.len(), 1);
    let container = &pod_spec(deployments[0])["containers"][0];
    assert_eq!(container["args"], json!(["serve", "--services", "all"]));
    assert_eq!(env_of(container)["ONE_AGENTS_GRPC__ENDPOINTS__AGENTS"], "http://127.0.0.1:50051");
    assert_eq!(of_kind(&monolith, "PodDisruptionBudget").len(), 1);
}

#[test]
fn migrations_run_as_a_hook_job_or_as_a_plain_job_for_gitops() {
    let objects = render(&[], &json!({}));
    let job = named(&objects, "Job", "one-agents-migrate").expect("the migration Job");
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-install,pre-upgrade");
    let container = &pod_spec(job)["containers"][0];
    assert_eq!(container["args"], json!(["migrate", "--wait", "300"]), "it waits for Postgres first");
    assert_eq!(pod_spec(job)["restartPolicy"], "Never");
    // The hook runs before the release's objects exist: what it reads is a hook too, made first.
    for kind in ["ConfigMap", "Secret"] {
        let object = of_kind(&objects, kind)[0];
        assert_eq!(object["metadata"]["annotations"]["helm.sh/hook-weight"], "-10", "{kind}");
    }

    let gitops = render(&[], &json!({"migrations": {"useHelmHooks": false}}));
    let job = named(&gitops, "Job", "one-agents-migrate").expect("a plain Job");
    assert!(job["metadata"].get("annotations").is_none(), "no hook annotations: {job}");
    assert!(of_kind(&gitops, "ConfigMap")[0]["metadata"].get("annotations").is_none());
}

#[test]
fn the_worker_scales_on_cpu_or_keda_and_every_deployment_has_a_disruption_budget() {
    let objects = render(&[], &json!({}));
    let hpas = of_kind(&objects, "HorizontalPodAutoscaler");
    assert_eq!(hpas.len(), 1);
    assert_eq!(hpas[0]["spec"]["scaleTargetRef"]["name"], "one-agents-worker");
    assert_eq!(hpas[0]["spec"]["metrics"][0]["resource"]["name"], "cpu");
    assert!(
        named(&objects, "Deployment", "one-agents-worker").unwrap()["spec"].get("replicas").is_none(),
        "the HPA owns the worker's replicas"
    );
    let budgets = of_kind(&objects, "PodDisruptionBudget");
    assert_eq!(budgets.len(), ROLES.len());
    for budget in budgets {
        let role = budget["metadata"]["name"].as_str().unwrap().trim_start_matches("one-agents-");
        assert_eq!(budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], role);
    }

    let production = render(&["helm/one-agents/values-production.yaml"], &json!({}));
    let hpa = named(&production, "HorizontalPodAutoscaler", "one-agents-worker").unwrap();
    assert_eq!(
        (hpa["spec"]["minReplicas"].as_i64(), hpa["spec"]["maxReplicas"].as_i64()),
        (Some(2), Some(20))
    );
    assert_eq!(named(&production, "Deployment", "one-agents-gateway").unwrap()["spec"]["replicas"], 3);
    for role in ["agents", "catalog", "executions", "approvals", "credits"] {
        assert_eq!(
            named(&production, "Deployment", &format!("one-agents-{role}")).unwrap()["spec"]["replicas"],
            2
        );
    }

    // KEDA (a CRD kind: kubernetes-validate has no schema for it, so its fields are checked here).
    let keda = render(&[], &json!({"roles": {"worker": {"keda": {"enabled": true}}}}));
    assert!(named(&keda, "HorizontalPodAutoscaler", "one-agents-worker").is_none(), "KEDA makes its own HPA");
    let scaled = named(&keda, "ScaledObject", "one-agents-worker").expect("a ScaledObject");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "one-agents-worker");
    // Ingest scales on the bus consumer's lag; running work on the dispatch queue's backlog.
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "nats-jetstream");
    for field in ["natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"] {
        assert!(trigger["metadata"][field].is_string(), "{field} is a string: {trigger}");
    }
    assert_eq!(
        (trigger["metadata"]["stream"].as_str(), trigger["metadata"]["consumer"].as_str()),
        (Some("BUS"), Some("workers_bus"))
    );
    let backlog = &scaled["spec"]["triggers"][1];
    assert_eq!(backlog["type"], "prometheus");
    for field in ["serverAddress", "query", "threshold"] {
        assert!(backlog["metadata"][field].is_string(), "{field} is a string: {backlog}");
    }
    let query = backlog["metadata"]["query"].as_str().unwrap();
    assert!(query.contains(oa_telemetry::metrics::DISPATCH_BACKLOG), "{query}");
}

#[test]
fn production_values_use_tls_between_roles_network_policies_and_an_existing_secret() {
    let objects = render(&["helm/one-agents/values-production.yaml"], &json!({}));
    assert!(of_kind(&objects, "Secret").is_empty(), "the operator's own Secret, none of the chart's");
    let certificate =
        named(&objects, "Certificate", "one-agents-grpc-tls").expect("a cert-manager Certificate");
    assert_eq!(certificate["apiVersion"], "cert-manager.io/v1");
    assert_eq!(certificate["spec"]["secretName"], "one-agents-grpc-tls");
    let names = certificate["spec"]["dnsNames"].as_array().unwrap();
    for role in ["agents", "catalog", "executions", "approvals", "credits"] {
        assert!(names.contains(&json!(format!("one-agents-{role}"))), "{role} in {names:?}");
    }
    assert!(names.contains(&json!("localhost")), "the probes reach 127.0.0.1 as localhost");
    assert!(certificate["spec"]["issuerRef"]["name"].is_string());
    for role in ROLES {
        let spec = pod_spec(named(&objects, "Deployment", &format!("one-agents-{role}")).unwrap());
        let container = &spec["containers"][0];
        assert_eq!(container["envFrom"][0]["secretRef"]["name"], "one-agents-secrets");
        let env = env_of(container);
        assert_eq!(env["ONE_AGENTS_GRPC__ENDPOINTS__AGENTS"], "https://one-agents-agents:50051");
        assert_eq!(env["ONE_AGENTS_GRPC__TLS__CA_FILE"], "/etc/one-agents/tls/ca.crt");
        let volumes = spec["volumes"].as_array().unwrap();
        assert!(volumes.iter().any(|v| v["secret"]["secretName"] == "one-agents-grpc-tls"), "{role}");
        if role != "gateway" {
            let probe = container["readinessProbe"]["exec"]["command"].as_array().unwrap();
            assert!(probe.contains(&json!("--tls-ca")), "{role}'s probe speaks TLS: {probe:?}");
        }
    }
    let policies = of_kind(&objects, "NetworkPolicy");
    assert_eq!(policies.len(), 3);
    let grpc = named(&objects, "NetworkPolicy", "one-agents-grpc").unwrap();
    let from = &grpc["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"];
    assert!(from.to_string().contains("gateway") && from.to_string().contains("worker"), "{from}");
    let worker = named(&objects, "NetworkPolicy", "one-agents-worker").unwrap();
    assert_eq!(
        worker["spec"]["ingress"],
        json!([{"ports": [{"port": "metrics"}],
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}]),
        "workers take no traffic but Prometheus' from the monitoring namespace"
    );
    assert!(named(&objects, "Ingress", "one-agents").is_some());
}

#[test]
fn bad_values_fail_at_render_and_name_the_field() {
    for (values, field) in [
        (json!({"roles": {"gateway": {"replicsa": 2}}}), "replicsa"),
        (json!({"mode": "cluster"}), "mode"),
        (json!({"shutdown": {"graceSeconds": "soon"}}), "graceSeconds"),
        (json!({"config": {"gatway": {}}}), "gatway"),
        (json!({"additionalWorkers": [{"grpcPort": 1}]}), "name"),
    ] {
        let error = try_render(&[], &values).expect_err("refused");
        assert!(error.contains(field), "{values}: {error}");
    }
}

/// Every setting of the config typed `SecretString`, read from the config struct itself: a dotted
/// path, `*` standing for a map key (`llm.providers.*.api_key`).
fn secret_settings() -> Vec<String> {
    let source = std::fs::read_to_string(root().join("crates/config/src/lib.rs")).unwrap();
    let file = syn::parse_file(&source).expect("the config crate parses");
    let mut structs: BTreeMap<String, Vec<(String, syn::Type)>> = BTreeMap::new();
    for item in file.items {
        if let syn::Item::Struct(item) = item
            && let syn::Fields::Named(fields) = item.fields
        {
            let fields =
                fields.named.into_iter().filter_map(|f| Some((f.ident?.to_string(), f.ty))).collect();
            structs.insert(item.ident.to_string(), fields);
        }
    }
    fn walk(
        structs: &BTreeMap<String, Vec<(String, syn::Type)>>,
        ty: &syn::Type,
        path: &str,
        out: &mut Vec<String>,
    ) {
        let syn::Type::Path(ty) = ty else { return };
        let Some(last) = ty.path.segments.last() else { return };
        let arguments: Vec<&syn::Type> = match &last.arguments {
            syn::PathArguments::AngleBracketed(a) => a
                .args
                .iter()
                .filter_map(|a| if let syn::GenericArgument::Type(t) = a { Some(t) } else { None })
                .collect(),
            _ => Vec::new(),
        };
        match last.ident.to_string().as_str() {
            "SecretString" => out.push(path.to_owned()),
            "Option" | "Box" => walk(structs, arguments[0], path, out),
            "BTreeMap" | "HashMap" => walk(structs, arguments[1], &format!("{path}.*"), out),
            "Vec" => walk(structs, arguments[0], &format!("{path}.*"), out),
            name => {
                for (field, ty) in structs.get(name).into_iter().flatten() {
                    let nested = if path.is_empty() { field.clone() } else { format!("{path}.{field}") };
                    walk(structs, ty, &nested, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    let config: syn::Type = syn::parse_str("Config").unwrap();
    walk(&structs, &config, "", &mut out);
    out
}

/// Does the environment variable `name` carry the setting `path` (figment nests on `__`)?
fn carries(name: &str, path: &str) -> bool {
    let Some(rest) = name.strip_prefix("ONE_AGENTS_") else { return false };
    let segments: Vec<&str> = rest.split("__").collect();
    let parts: Vec<&str> = path.split('.').collect();
    segments.len() == parts.len()
        && segments
            .iter()
            .zip(&parts)
            .all(|(segment, part)| *part == "*" || segment.eq_ignore_ascii_case(part))
}

#[test]
fn every_secret_setting_of_the_config_travels_in_the_secret_and_never_in_the_configmap() {
    let settings = secret_settings();
    for expected in
        ["database.url", "grpc.service_token", "llm.providers.*.api_key", "actions.signing_secrets.*"]
    {
        assert!(settings.contains(&expected.to_owned()), "the walk finds {expected}: {settings:?}");
    }
    // Every secret the chart takes, each with a value no ConfigMap may hold.
    let values = json!({"secrets": {
        "databaseUrl": "SENTINEL-database-url", "databaseAdminUrl": "SENTINEL-admin-url",
        "redisUrl": "SENTINEL-redis-url", "serviceToken": "SENTINEL-service-token",
        "natsPassword": "SENTINEL-nats-password", "natsToken": "SENTINEL-nats-token",
        "approvalLinkSecret": "SENTINEL-link-secret", "smsApiKey": "SENTINEL-sms-key",
        "actionSigningSecret": "SENTINEL-action-secret", "actionSigningSecrets": {"psa": "SENTINEL-psa"},
        "llmApiKeys": {"openai": "SENTINEL-openai"}}});
    for mode in ["split", "monolith"] {
        let mut values = values.clone();
        values["mode"] = json!(mode);
        let objects = render(&[], &values);
        let secret = named(&objects, "Secret", "one-agents-secrets").expect("the chart's Secret");
        let keys: Vec<&str> = secret["stringData"].as_object().unwrap().keys().map(String::as_str).collect();
        for setting in &settings {
            assert!(
                keys.iter().any(|key| carries(key, setting)),
                "the config has a secret setting {setting} that the chart's Secret cannot carry (keys: {keys:?})"
            );
        }
        for config_map in of_kind(&objects, "ConfigMap") {
            assert!(!config_map.to_string().contains("SENTINEL"), "a secret in a ConfigMap: {config_map}");
            let toml: toml::Value = config_map["data"]["one-agents.toml"].as_str().unwrap().parse().unwrap();
            for setting in &settings {
                let mut at = Some(&toml);
                for part in setting.split('.').take_while(|p| *p != "*") {
                    at = at.and_then(|v| v.get(part));
                }
                assert!(at.is_none() || setting.contains('*'), "{setting} in the ConfigMap: {toml}");
            }
        }
    }
    // Setting one in `config` is refused at render, naming it.
    for setting in &settings {
        let mut config = json!({});
        let parts: Vec<String> =
            setting.split('.').map(|p| if p == "*" { "x".into() } else { p.to_owned() }).collect();
        let mut at = &mut config;
        for part in &parts[..parts.len() - 1] {
            at = at.as_object_mut().unwrap().entry(part.clone()).or_insert(json!({}));
        }
        at[parts.last().unwrap()] = json!("leaked");
        let error = try_render(&[], &json!({"config": config})).expect_err("refused");
        let named_path = setting.trim_end_matches(".*").replace('*', "x");
        assert!(error.contains(&format!("config.{named_path}")), "{setting}: {error}");
    }
}

#[test]
fn the_config_the_chart_renders_is_one_the_plane_loads_in_production() {
    let values = json!({"secrets": {
        "databaseUrl": "postgres://one_agents_app:pw@pg.internal/one_agents",
        "redisUrl": "rediss://redis.internal", "serviceToken": "a-service-token-of-32-characters-x",
        "approvalLinkSecret": "a-link-secret-of-32-characters-xxx",
        "actionSigningSecret": "an-action-secret-of-32-characters-x",
        "llmApiKeys": {"openai": "sk-test"}}});
    let objects =
        render(&["helm/one-agents/values-production.yaml"], &json!({"secrets": {"existingSecret": ""}}));
    let with_secret = render(&["helm/one-agents/values-production.yaml"], &{
        let mut v = values.clone();
        v["secrets"]["existingSecret"] = json!("");
        v
    });
    let toml = of_kind(&objects, "ConfigMap")[0]["data"]["one-agents.toml"].as_str().unwrap().to_owned();
    let secret = named(&with_secret, "Secret", "one-agents-secrets").unwrap()["stringData"].clone();
    let gateway = named(&objects, "Deployment", "one-agents-gateway").unwrap();
    let env = env_of(&pod_spec(gateway)["containers"][0]);
    figment::Jail::expect_with(|jail| {
        jail.create_file("one-agents.toml", &toml)?;
        for (name, value) in secret.as_object().unwrap() {
            jail.set_env(name, value.as_str().unwrap());
        }
        for (name, value) in env.iter().filter(|(name, _)| name.as_str() != "ONE_AGENTS_CONFIG") {
            jail.set_env(name, value);
        }
        // The certificates the chart mounts, stood in for by files in the jail.
        for (variable, file) in [("CERT_FILE", "tls.crt"), ("KEY_FILE", "tls.key"), ("CA_FILE", "ca.crt")] {
            let mounted = format!("/etc/one-agents/tls/{file}");
            assert_eq!(env[&format!("ONE_AGENTS_GRPC__TLS__{variable}")], mounted);
            jail.create_file(file, "PEM")?;
            jail.set_env(format!("ONE_AGENTS_GRPC__TLS__{variable}"), jail.directory().join(file).display());
        }
        let config = oa_config::Config::load(Some(Path::new("one-agents.toml")))
            .map_err(|error| figment::Error::from(error.to_string()))?;
        assert_eq!(config.environment, oa_config::Environment::Production);
        assert_eq!(config.channels.smtp_port, 587, "whole numbers stay whole through Helm");
        assert_eq!(config.shutdown.grace_seconds, 60);
        assert_eq!(config.endpoint("credits").unwrap(), "https://one-agents-credits:50051");
        assert!(config.llm.providers["openai"].api_key.is_some(), "the key came from the Secret");
        Ok(())
    });
}

#[test]
fn docker_compose_is_valid_and_does_not_drift_from_the_chart() {
    let output = chart_py(&["compose"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let compose: Value = serde_json::from_slice(&output.stdout).unwrap();
    let services = compose["services"].as_object().unwrap();
    let chart = render(&[], &json!({}));
    let repository = "ghcr.io/one-agents/one-agents";
    let mut seen = BTreeSet::new();
    for (name, service) in services {
        let command: Vec<&str> =
            service["command"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let environment = service["environment"].as_object().cloned().unwrap_or_default();
        let compose_env = |key: &str| environment.get(key).and_then(Value::as_str).map(str::to_owned);
        if service["image"].as_str().is_some_and(|i| i.contains("one-agents")) {
            assert!(service["image"].as_str().unwrap().contains(repository), "{name}: the chart's image");
            assert!(compose_env("ONE_AGENTS_DATABASE__URL").is_some(), "{name} gets the database URL");
        }
        if command.first() == Some(&"migrate") {
            assert!(compose_env("ONE_AGENTS_DATABASE__ADMIN_URL").is_some(), "migrate needs the admin URL");
            continue;
        }
        let ["serve", "--services", role] = command[..] else { continue };
        seen.insert(role.to_owned());
        let deployment = named(&chart, "Deployment", &format!("one-agents-{role}")).unwrap();
        let container = &pod_spec(deployment)["containers"][0];
        for (key, chart_value) in env_of(container) {
            let value = compose_env(&key).unwrap_or_else(|| panic!("{name} lacks the chart's {key}"));
            let port = |v: &str| v.rsplit(':').next().map(str::to_owned);
            match key.as_str() {
                "ONE_AGENTS_SHUTDOWN__UNREADY_DELAY_MS" => {}
                k if k.starts_with("ONE_AGENTS_GRPC__ENDPOINTS__") => {
                    let service_name = k.trim_start_matches("ONE_AGENTS_GRPC__ENDPOINTS__").to_lowercase();
                    assert_eq!(value, format!("http://{service_name}:50051"), "{name} {key}");
                    assert_eq!(chart_value, format!("http://one-agents-{service_name}:50051"), "{key}");
                }
                k if k.ends_with("__LISTEN") => assert_eq!(port(&value), port(&chart_value), "{name} {key}"),
                _ => assert_eq!(value, chart_value, "{name} {key}"),
            }
        }
        // Secrets the roles need, under the chart's keys; the same probe; the same drain.
        assert!(compose_env("ONE_AGENTS_REDIS__URL").is_some(), "{name}");
        let probe = &container["readinessProbe"]["exec"]["command"];
        assert_eq!(service["healthcheck"]["test"][0], "CMD", "{name}");
        assert_eq!(
            service["healthcheck"]["test"].as_array().unwrap()[1..],
            probe.as_array().unwrap()[..],
            "{name}"
        );
        let grace = pod_spec(deployment)["terminationGracePeriodSeconds"].as_i64().unwrap();
        assert_eq!(service["stop_grace_period"], format!("{grace}s"), "{name}");
        for dependency in ["migrate", "nats", "redis"] {
            assert!(
                service["depends_on"][dependency]["condition"].is_string(),
                "{name} waits on {dependency}"
            );
        }
    }
    assert_eq!(seen, ROLES.iter().map(|r| (*r).to_owned()).collect(), "compose runs every role");
    let workers =
        services.values().filter(|s| s["command"] == json!(["serve", "--services", "worker"])).count();
    assert_eq!(workers, 2, "two workers");
    for infrastructure in ["postgres", "nats", "redis", "s3"] {
        assert!(services[infrastructure]["healthcheck"]["test"].is_array(), "{infrastructure} health");
    }
    // The config file compose mounts is one the plane loads.
    figment::Jail::expect_with(|_| {
        oa_config::Config::load(Some(&root().join("deploy/compose/one-agents.toml")))
            .map_err(|error| figment::Error::from(error.to_string()))?;
        Ok(())
    });
}

#[test]
fn every_pod_serves_metrics_that_prometheus_may_scrape_and_the_operator_objects_carry_the_kit() {
    let objects = render(
        &[],
        &json!({"networkPolicy": {"enabled": true},
                "metrics": {"serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true},
                            "scrapeFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}}),
    );
    let deployments = of_kind(&objects, "Deployment");
    assert_eq!(deployments.len(), ROLES.len());
    let service = named(&objects, "Service", "one-agents-metrics").expect("the metrics Service");
    for deployment in &deployments {
        let pod = &deployment["spec"]["template"];
        let container = &pod_spec(deployment)["containers"][0];
        let port = container["ports"].as_array().unwrap().iter().find(|p| p["name"] == "metrics").unwrap();
        let port = port["containerPort"].as_i64().unwrap();
        assert_eq!(env_of(container)["ONE_AGENTS_TELEMETRY__METRICS_ADDR"], format!("0.0.0.0:{port}"));
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], port.to_string());
        // The metrics Service selects every pod of the release.
        for (key, value) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&pod["metadata"]["labels"][key], value, "{key}");
        }
    }
    let monitor = &of_kind(&objects, "ServiceMonitor")[0];
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][key], value, "{key}");
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    // The PrometheusRule is the kit's alert file, as it is.
    let rules: Value = serde_json::to_value(serde_yaml_from(
        &std::fs::read_to_string(root().join("deploy/observability/alerts.yaml")).unwrap(),
    ))
    .unwrap();
    assert_eq!(of_kind(&objects, "PrometheusRule")[0]["spec"]["groups"], rules["groups"]);
    // Every policy lets the scrapers reach the metrics port, and only them.
    for policy in of_kind(&objects, "NetworkPolicy") {
        let rule = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ports"][0]["port"] == "metrics")
            .unwrap_or_else(|| panic!("{} lets Prometheus in", policy["metadata"]["name"]));
        assert_eq!(rule["from"][0]["namespaceSelector"]["matchLabels"]["name"], "monitoring");
    }
}

/// YAML text as JSON values (the chart tool's renderer parses YAML the same way).
fn serde_yaml_from(text: &str) -> Value {
    let output = std::process::Command::new(python())
        .args(["-c", "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap()
}
