//! The command line: `serve`, `migrate`, `orgs`, `keys`, `dev-token`, `dev-jwks`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use oa_config::Config;
use oa_domain::Scope;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "one-agents", version, about = "The One Agents control plane")]
pub struct Args {
    /// A TOML config file; `ONE_AGENTS_*` environment variables override it.
    #[arg(long, global = true, env = "ONE_AGENTS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs services of the plane: `all`, or a comma-separated list such as `gateway`.
    Serve {
        #[arg(long, default_value = "all")]
        services: String,
    },
    /// Checks a running role, for container probes: exit 0 when it is ready.
    Probe {
        #[command(subcommand)]
        target: ProbeTarget,
    },
    /// Applies the database migrations (needs `database.admin_url`); with `--check`, only checks
    /// (as the app role) that the schema is at this build's version.
    Migrate {
        /// Check instead of applying: exit 0 when the schema is at this build's version.
        #[arg(long)]
        check: bool,
        /// Keep trying this many seconds while the database is unreachable (or, with --check,
        /// behind): for a migration job or init container that starts before the database.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Manages orgs (needs `database.admin_url`).
    Orgs {
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// Manages integration keys (needs `database.admin_url`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Prints a Hub-style JWT signed with the local dev key. Development only.
    DevToken {
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "admin")]
        role: String,
        #[arg(long, default_value = "dev-user")]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 12 * 3600)]
        ttl: i64,
    },
    /// Prints the JWKS of the local dev key, for the gateway's `auth.jwks_file`. Development only.
    DevJwks,
    /// Runs the local SANDBOX that stands in for the LLM, SMS, SMTP, chat webhooks and product
    /// APIs (`sandbox.http_listen`, `sandbox.smtp_listen`). Development only.
    Sandbox,
}

#[derive(Subcommand)]
enum ProbeTarget {
    /// `GET http://ADDR<path>` answers 2xx (the gateway's /healthz or /readyz).
    Http {
        addr: String,
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// The gRPC health protocol answers SERVING (a gRPC role; `--service` for one service).
    Grpc {
        addr: String,
        #[arg(long, default_value = "")]
        service: String,
        /// Liveness: pass when the server answers, whatever its status.
        #[arg(long)]
        live: bool,
        /// Speak TLS, trusting this CA (PEM); the server is named `localhost`.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OrgsCommand {
    /// Creates an org on a subscription tier.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "starter")]
        tier: String,
        /// A fixed id (`org_...`); a new one is generated when omitted.
        #[arg(long)]
        id: Option<String>,
        /// Succeed without change when the org already exists.
        #[arg(long)]
        if_absent: bool,
    },
    /// Sets an org's settings (its contacts and its own webhooks) from a JSON document, as
    /// `PUT /api/org/settings` does; with no --json, shows them.
    Settings {
        #[arg(long)]
        org: String,
        /// `{"contacts": {"on_call_sms": ["+15551234567"]}, "webhooks": {"slack": "https://..."}}`
        #[arg(long)]
        json: Option<String>,
    },
    /// Overrides (or, with no value, clears) an org's monthly credit allocation.
    SetCredits {
        #[arg(long)]
        org: String,
        #[arg(long)]
        credits: Option<i64>,
    },
    /// Overrides an org's share of the workers (`--weight`, against other orgs with work waiting)
    /// and its cap on executions running at once (`--max-running`); an option left out goes back
    /// to the tier's value.
    Dispatch {
        #[arg(long)]
        org: String,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        max_running: Option<u32>,
    },
}

/// Whose key: an org's (`--org`), or a product's (`--product`), which writes that product's event
/// types in the shared catalog and nothing else.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct KeyOwner {
    #[arg(long)]
    org: Option<String>,
    #[arg(long)]
    product: Option<String>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Creates a key and prints it once; only its hash is stored.
    Create {
        #[command(flatten)]
        owner: KeyOwner,
        #[arg(long)]
        name: String,
        /// An org key's scopes; repeat for several: agents:read, agents:write, executions:read,
        /// executions:write, approvals:read, approvals:decide, credits:read, events:publish.
        /// A product key needs none: it writes its product's event types (catalog:write).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Lists an org's or a product's keys (never their secrets).
    List {
        #[command(flatten)]
        owner: KeyOwner,
    },
    /// Revokes a key at once.
    Revoke {
        #[command(flatten)]
        owner: KeyOwner,
        #[arg(long)]
        key: String,
    },
}

/// Applies the migrations, or checks the schema is at this build's version, retrying until `wait`
/// has passed: the database may start after the job, and with `--check` the migration may still be
/// running.
async fn migrate(config: &Config, check: bool, wait: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    let expected = oa_store::expected_schema_version();
    let mut delay = Duration::from_millis(250);
    // Lazy: it connects on each attempt, so one pool serves every retry.
    let app = oa_store::app_pool(&config.database)?;
    loop {
        let attempt = async {
            if check {
                let pool = &app;
                let applied = oa_store::applied_schema_version(pool).await?;
                if applied < expected {
                    bail!(
                        "the database schema is at version {applied}; this build needs {expected}: run `one-agents migrate`"
                    );
                }
                println!("the schema is at version {applied} (this build needs {expected})");
            } else {
                let pool = admin_pool(config).await?;
                oa_store::migrate(&pool).await?;
                println!("migrations applied; the schema is at version {expected}");
            }
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() + delay < deadline => {
                eprintln!("waiting: {error:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

async fn admin_pool(config: &Config) -> anyhow::Result<oa_store::sqlx::PgPool> {
    let url = config
        .database
        .admin_url
        .as_ref()
        .context("database.admin_url (ONE_AGENTS_DATABASE__ADMIN_URL) is required for this command")?;
    Ok(oa_store::admin_pool(url.expose_secret()).await?)
}

fn dev_key(config: &Config) -> anyhow::Result<String> {
    let path = config.auth.dev_signing_key_file.as_ref().context(
        "no dev signing key is configured (auth.dev_signing_key_file); dev tokens exist only in development",
    )?;
    Ok(oa_auth::dev::read_pem(path)?)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    match args.command {
        Command::Serve { services } => serve(config, &services).await,
        Command::Probe { target } => match target {
            ProbeTarget::Http { addr, path } => one_agents::probe::http(&addr, &path).await,
            ProbeTarget::Grpc { addr, service, live, tls_ca } => {
                one_agents::probe::grpc(&addr, &service, live, tls_ca.as_deref()).await
            }
        },
        Command::Migrate { check, wait } => migrate(&config, check, Duration::from_secs(wait)).await,
        Command::Orgs { command } => orgs(config, command).await,
        Command::Keys { command } => keys(config, command).await,
        Command::DevToken { org, role, sub, ttl } => {
            if oa_domain::Role::parse(&role).is_none() {
                bail!("role must be admin, technician or viewer");
            }
            let pem = dev_key(&config)?;
            let claims = oa_auth::dev::claims(&config.auth, &org, &role, &sub, ttl);
            println!("{}", oa_auth::dev::sign(&pem, &config.auth.dev_signing_kid, &claims)?);
            Ok(())
        }
        Command::Sandbox => {
            if config.environment == oa_config::Environment::Production {
                bail!("the sandbox is for development and tests; production never runs it");
            }
            let _telemetry = oa_telemetry::init(&config.telemetry, "sandbox", config.environment.name())?;
            let shutdown = CancellationToken::new();
            let sandbox =
                oa_sandbox::start(config.sandbox.http_listen, config.sandbox.smtp_listen, shutdown.clone())
                    .await?;
            println!(
                "SANDBOX on http://{} (SMTP {}); every request it receives is shown there",
                sandbox.http_addr, sandbox.smtp_addr
            );
            shutdown_signal().await;
            shutdown.cancel();
            Ok(())
        }
        Command::DevJwks => {
            let pem = dev_key(&config)?;
            let jwks = oa_auth::dev::jwks_for_private_pem(&pem, &config.auth.dev_signing_kid)?;
            println!("{}", serde_json::to_string_pretty(&jwks)?);
            Ok(())
        }
    }
}

async fn serve(config: Config, services: &str) -> anyhow::Result<()> {
    let roles = oa_plane::parse_roles(services)?;
    let _telemetry =
        oa_telemetry::init(&config.telemetry, &oa_plane::process_role(&roles), config.environment.name())?;
    let plane = oa_plane::Plane::bind(config, &roles).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    tracing::info!(?roles, "the plane is starting; Ctrl-C or SIGTERM stops it");
    plane.run(shutdown).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Keeps the credits service's copy of an org's plan in step with tenancy.
async fn sync_plan(
    pool: &oa_store::sqlx::PgPool,
    config: &Config,
    org: &oa_tenancy::Org,
) -> anyhow::Result<()> {
    let tier = config.tiers.get(&org.tier).unwrap_or(&config.tiers.starter);
    let allocation = org.monthly_credits_override.unwrap_or(tier.monthly_credits);
    let mut tx = oa_store::begin_org(pool, &org.id).await?;
    oa_credits::store::set_plan(&mut tx, &org.id, &org.tier, org.monthly_credits_override, allocation)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn orgs(config: Config, command: OrgsCommand) -> anyhow::Result<()> {
    let pool = admin_pool(&config).await?;
    let store = oa_tenancy::OrgStore::new(pool.clone());
    match command {
        OrgsCommand::Create { name, tier, id, if_absent } => {
            match store.create(id.as_deref(), &name, &tier).await {
                Ok(org) => {
                    sync_plan(&pool, &config, &org).await?;
                    println!("{}", serde_json::to_string_pretty(&org)?);
                }
                Err(oa_tenancy::TenancyError::OrgExists(id)) if if_absent => {
                    if let Some(org) = store.get(&id).await? {
                        sync_plan(&pool, &config, &org).await?;
                    }
                    println!("org {id} already exists");
                }
                Err(error) => return Err(error.into()),
            }
        }
        OrgsCommand::Settings { org, json } => {
            if store.get(&org).await?.is_none() {
                bail!("no org {org}");
            }
            let settings = match json {
                Some(json) => {
                    let body: serde_json::Value =
                        serde_json::from_str(&json).context("--json is not JSON")?;
                    oa_agents::update_org_settings(&pool, &org, &body, "cli")
                        .await
                        .map_err(|e| anyhow::anyhow!("{}: {}", e.message, e.details.unwrap_or_default()))?
                }
                None => {
                    let mut tx = oa_store::begin_org(&pool, &org).await?;
                    let settings =
                        oa_agents::store::org_settings(&mut tx, &oa_domain::ids::OrgId::from(org.as_str()))
                            .await?;
                    tx.commit().await?;
                    settings
                }
            };
            println!("{}", serde_json::to_string_pretty(&settings.masked())?);
        }
        OrgsCommand::SetCredits { org, credits } => {
            let org = store.set_credit_override(&org, credits).await?;
            sync_plan(&pool, &config, &org).await?;
            println!("{}", serde_json::to_string_pretty(&org)?);
        }
        OrgsCommand::Dispatch { org, weight, max_running } => {
            let org = store.set_dispatch_override(&org, weight, max_running).await?;
            println!("{}", serde_json::to_string_pretty(&org)?);
        }
    }
    Ok(())
}

async fn keys(config: Config, command: KeysCommand) -> anyhow::Result<()> {
    let store = oa_tenancy::KeyStore::new(admin_pool(&config).await?);
    match command {
        KeysCommand::Create { owner: KeyOwner { product: Some(product), .. }, name, scopes } => {
            if !scopes.is_empty() {
                bail!("a product key takes no --scope: it writes {product}'s event types and nothing else");
            }
            let (key, plaintext) = store.create_product_key(&product, &name, "cli").await?;
            println!("{}", serde_json::to_string_pretty(&key)?);
            eprintln!("The key is shown this once; store it now:");
            println!("{plaintext}");
        }
        KeysCommand::Create { owner: KeyOwner { org, .. }, name, scopes } => {
            let org = org.context("--org or --product")?;
            if scopes.is_empty() {
                bail!("an org key needs at least one --scope");
            }
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s).with_context(|| format!("unknown scope {s:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let created = store.create(&org, &name, &scopes, "cli").await?;
            println!("{}", serde_json::to_string_pretty(&created.key)?);
            eprintln!("The key is shown this once; store it now:");
            println!("{}", created.plaintext);
        }
        KeysCommand::List { owner: KeyOwner { product: Some(product), .. } } => {
            println!("{}", serde_json::to_string_pretty(&store.list_product_keys(&product).await?)?);
        }
        KeysCommand::List { owner: KeyOwner { org, .. } } => {
            let org = org.context("--org or --product")?;
            println!("{}", serde_json::to_string_pretty(&store.list(&org).await?)?);
        }
        KeysCommand::Revoke { owner: KeyOwner { product: Some(product), .. }, key } => {
            if !store.revoke_product_key(&product, &key).await? {
                bail!("product {product} has no key {key}");
            }
            println!("key {key} revoked");
        }
        KeysCommand::Revoke { owner: KeyOwner { org, .. }, key } => {
            let org = org.context("--org or --product")?;
            if !store.revoke(&org, &key).await? {
                bail!("org {org} has no key {key}");
            }
            println!("key {key} revoked");
        }
    }
    Ok(())
}
