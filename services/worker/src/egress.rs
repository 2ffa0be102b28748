//! The one way out for calls a tenant or a template can aim (webhooks, chat channels, SMS and
//! product APIs): an HTTP client that
//! - resolves names itself and connects only to the addresses it checked, so a name that
//!   resolves to a public address once and to 127.0.0.1 the next time (DNS rebinding) gets nowhere;
//! - refuses loopback, link-local, private (RFC 1918, ULA, CGNAT), multicast, broadcast and
//!   unspecified addresses, and the plane's own listeners, unless `egress.allow` admits them;
//! - follows no redirect, and needs https in production;
//! - tells the tenant only what class of failure happened; the URL and the answer's body go to
//!   the operator's logs alone.
//!
//! IP literals never reach a resolver in reqwest, so they are checked before the request is sent.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use oa_config::EgressRule;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Looks a host name up: the system resolver by default, another one in tests.
pub type Lookup =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> + Send + Sync>;

fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addresses.map(|a| a.ip()).collect())
        })
    })
}

/// Which addresses outbound calls may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow: Vec<EgressRule>,
    /// The plane's own listeners: never a target, allow-listed or not.
    pub own_listeners: Vec<SocketAddr>,
    pub https_only: bool,
}

impl Policy {
    pub fn from_config(config: &oa_config::Config) -> Policy {
        Policy {
            allow: config.egress_rules(),
            own_listeners: vec![config.gateway.listen, config.grpc.listen],
            https_only: config.environment == oa_config::Environment::Production,
        }
    }

    /// Whether `address`, reached as `host`, may be connected to.
    pub fn permits(&self, host: &str, address: SocketAddr) -> bool {
        let ip = canonical(address.ip());
        let own = self.own_listeners.iter().any(|listener| {
            listener.port() == address.port()
                && (listener.ip().is_unspecified() || canonical(listener.ip()) == ip)
        });
        if own {
            return false;
        }
        let allowed = self.allow.iter().any(|rule| match rule {
            EgressRule::Network(network) => network.contains(&ip),
            EgressRule::HostPort(allowed_host, port) => {
                *port == address.port()
                    && (allowed_host.eq_ignore_ascii_case(host)
                        || allowed_host.parse::<IpAddr>().is_ok_and(|a| canonical(a) == ip))
            }
        });
        allowed || is_public(ip)
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether an address is on the public internet: not loopback, link-local, private, shared
/// (CGNAT), multicast, broadcast, unspecified or documentation space.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Resolves for one port, keeping only the addresses the policy permits.
struct CheckedResolver {
    policy: Arc<Policy>,
    lookup: Lookup,
    port: u16,
}

#[derive(Debug, thiserror::Error)]
#[error("no permitted address for {0}")]
struct NotPermitted(String);

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (policy, lookup, port) = (self.policy.clone(), self.lookup.clone(), self.port);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = lookup(host.clone()).await?;
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .filter(|address| policy.permits(&host, *address))
                .collect();
            if permitted.is_empty() {
                tracing::warn!(
                    host,
                    port,
                    "egress refused: the name resolves only to addresses not permitted"
                );
                return Err(Box::new(NotPermitted(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

fn caused_by_refusal(error: &reqwest::Error) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if current.is::<NotPermitted>() {
            return true;
        }
        cause = current.source();
    }
    false
}

/// Why an outbound call failed, as the tenant may see it: a class, never a body or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressError {
    /// The URL is not one the plane may call (bad URL, scheme, or a refused address).
    Refused,
    /// No answer: the connection failed or timed out.
    Unreachable,
    /// The endpoint answered with this status class (`3xx`, `4xx`, `5xx`).
    Status(u16),
}

impl EgressError {
    /// What the tenant reads in the step's error.
    pub fn tenant_message(&self) -> String {
        match self {
            EgressError::Refused => {
                "the destination is not permitted (only public http(s) addresses, or ones the operator allows)".into()
            }
            EgressError::Unreachable => "the destination did not answer".into(),
            EgressError::Status(status) => format!("the destination answered with a {}xx status", status / 100),
        }
    }

    /// A 429 or a 5xx, or no answer, may succeed when sent again.
    pub fn is_retryable(&self) -> bool {
        match self {
            EgressError::Refused => false,
            EgressError::Unreachable => true,
            EgressError::Status(status) => *status == 429 || *status >= 500,
        }
    }
}

/// The outbound HTTP client; see the module's documentation.
pub struct Egress {
    policy: Arc<Policy>,
    lookup: Lookup,
    /// One client per port: the resolver must know the port to apply `host:port` rules.
    clients: Mutex<HashMap<u16, reqwest::Client>>,
}

impl Egress {
    pub fn new(policy: Policy) -> Egress {
        Egress::with_lookup(policy, system_lookup())
    }

    pub fn with_lookup(policy: Policy, lookup: Lookup) -> Egress {
        Egress { policy: Arc::new(policy), lookup, clients: Mutex::new(HashMap::new()) }
    }

    fn client(&self, port: u16) -> reqwest::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(port)
            .or_insert_with(|| {
                let resolver =
                    CheckedResolver { policy: self.policy.clone(), lookup: self.lookup.clone(), port };
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .dns_resolver(Arc::new(resolver))
                    .build()
                    .expect("a client with a resolver and no TLS settings of its own builds")
            })
            .clone()
    }

    /// Posts `body` as JSON to `url` with an idempotency key, and returns the answer's JSON (or
    /// null for an empty answer).
    pub async fn post_json(
        &self,
        url: &str,
        key: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, EgressError> {
        let bytes = serde_json::to_vec(body).map_err(|_| EgressError::Refused)?;
        self.post_bytes(url, key, bytes, &[], timeout).await
    }

    /// Posts JSON `body` bytes exactly as given (a signature covers them) with extra `headers`.
    pub async fn post_bytes(
        &self,
        url: &str,
        key: &str,
        body: Vec<u8>,
        headers: &[(&'static str, String)],
        timeout: Duration,
    ) -> Result<serde_json::Value, EgressError> {
        let refused = |why: &str| {
            tracing::warn!(url, why, "egress refused");
            EgressError::Refused
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| refused("not a URL"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if !self.policy.https_only => {}
            _ => return Err(refused("scheme")),
        }
        let host = parsed.host().ok_or_else(|| refused("no host"))?;
        let port = parsed.port_or_known_default().ok_or_else(|| refused("no port"))?;
        let literal = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = literal
            && !self.policy.permits(&ip.to_string(), SocketAddr::new(ip, port))
        {
            return Err(refused("address"));
        }
        let host_name = host.to_string();
        let mut request = self
            .client(port)
            .post(parsed)
            .timeout(timeout)
            .header("Idempotency-Key", key)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let (span, trace) = oa_telemetry::outgoing_http("POST", &host_name);
        let response = request.headers(trace).body(body).send().instrument(span.clone()).await;
        if let Ok(response) = &response {
            span.record("http.response.status_code", response.status().as_u16());
        }
        let response = response.map_err(|error| {
            tracing::warn!(url, error = %format!("{error:#}"), "outbound call failed");
            if caused_by_refusal(&error) { EgressError::Refused } else { EgressError::Unreachable }
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let excerpt: String = text.chars().take(300).collect();
            tracing::warn!(url, %status, body = excerpt, "outbound call answered with an error");
            return Err(EgressError::Status(status.as_u16()));
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> Policy {
        Policy {
            allow: allow.iter().map(|e| EgressRule::parse(e).unwrap()).collect(),
            own_listeners: vec!["0.0.0.0:8080".parse().unwrap()],
            https_only: false,
        }
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_permitted() {
        let policy = policy(&[]);
        for refused in [
            "127.0.0.1:80",
            "169.254.169.254:80",
            "10.0.0.1:80",
            "172.16.5.4:443",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "224.0.0.1:80",
            "[::1]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(!policy.permits("h", refused.parse().unwrap()), "{refused}");
        }
        assert!(policy.permits("h", "93.184.216.34:443".parse().unwrap()));
        assert!(!policy.permits("h", "93.184.216.34:8080".parse().unwrap()), "the plane's own port");
    }

    #[test]
    fn the_allow_list_admits_networks_and_exact_host_ports() {
        let policy = policy(&["10.20.0.0/16", "127.0.0.1:59100", "psa.internal:8443"]);
        assert!(policy.permits("x", "10.20.3.4:443".parse().unwrap()));
        assert!(!policy.permits("x", "10.21.3.4:443".parse().unwrap()));
        assert!(policy.permits("127.0.0.1", "127.0.0.1:59100".parse().unwrap()));
        assert!(!policy.permits("127.0.0.1", "127.0.0.1:59101".parse().unwrap()));
        assert!(policy.permits("psa.internal", "10.9.9.9:8443".parse().unwrap()));
        assert!(!policy.permits("psa.internal", "10.9.9.9:22".parse().unwrap()));
    }
}
