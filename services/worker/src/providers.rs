//! Clients of the outside services steps call: LLM providers (OpenAI-compatible chat completions
//! and the Anthropic Messages API), notification channels (an SMS HTTP API, SMTP, incoming
//! webhooks for Slack, Teams and others) and product APIs. Every side effect carries an
//! idempotency key.
//!
//! Retries use `backon`; the per-provider circuit breaker is hand-written (a failure counter and an
//! open-until instant) because the crates that offer one bring a runtime model of their own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use oa_config::{ActionsConfig, ChannelsConfig, LlmConfig, ProviderConfig, SmtpTls};
use oa_telemetry::metrics;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::egress::{Egress, EgressError};

/// Why a step failed, as its trace shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepError {
    pub code: String,
    pub message: String,
}

impl StepError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        // The message is stored and shown: whatever it quotes, it must hold no NUL.
        StepError { code: code.to_owned(), message: message.into().replace('\0', "\\u0000") }
    }

    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

#[derive(Debug)]
struct CallError {
    message: String,
    retryable: bool,
}

async fn send_json(request: reqwest::RequestBuilder, body: &Value) -> Result<Value, CallError> {
    // The provider's URL and its own words stay in the logs: the step error (read by the tenant)
    // says only what class of failure it was.
    let response = request.json(body).send().await.map_err(|e| {
        tracing::warn!(error = %e, "model provider call failed");
        let what = if e.is_timeout() { "timed out" } else { "could not be reached" };
        CallError { message: what.to_owned(), retryable: e.is_timeout() || e.is_connect() }
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let excerpt: String = text.chars().take(300).collect();
        tracing::warn!(%status, body = excerpt, "model provider answered with an error");
        return Err(CallError {
            message: format!("answered with a {}xx status", status.as_u16() / 100),
            retryable: status.as_u16() == 429 || status.is_server_error(),
        });
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text)
        .map_err(|e| CallError { message: format!("answer is not JSON: {e}"), retryable: false })
}

fn backoff(max_retries: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(max_retries as usize)
        .with_jitter()
}

#[derive(Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

pub struct Llm {
    http: reqwest::Client,
    config: LlmConfig,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl Llm {
    pub fn new(config: LlmConfig) -> Self {
        Llm { http: reqwest::Client::new(), config, breakers: Mutex::new(HashMap::new()) }
    }

    fn breaker_open(&self, provider: &str) -> bool {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let open =
            breakers.get(provider).and_then(|b| b.open_until).is_some_and(|until| Instant::now() < until);
        breaker_gauge(provider, open);
        open
    }

    fn record(&self, provider: &str, config: &ProviderConfig, ok: bool) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let breaker = breakers.entry(provider.to_owned()).or_default();
        if ok {
            *breaker = Breaker::default();
            breaker_gauge(provider, false);
        } else {
            breaker.consecutive_failures += 1;
            if breaker.consecutive_failures >= config.breaker_failures.max(1) {
                breaker.open_until = Some(Instant::now() + Duration::from_millis(config.breaker_open_ms));
                tracing::warn!(provider, "LLM provider circuit opened");
                breaker_gauge(provider, true);
            }
        }
    }

    /// Asks the tier's model for JSON matching `schema`; an answer that does not match gets one
    /// repair attempt, then the step fails with the validation errors.
    pub async fn reason(
        &self,
        tier: &str,
        system: Option<&str>,
        prompt: &str,
        schema: &Value,
    ) -> Result<Value, StepError> {
        let model = self.config.tiers.get(tier).ok_or_else(|| {
            StepError::new("model_unavailable", format!("no model is configured for tier {tier}"))
        })?;
        let provider = self.config.providers.get(&model.provider).ok_or_else(|| {
            StepError::new("model_unavailable", format!("provider {} is not configured", model.provider))
        })?;
        let labels = CallLabels { provider: &model.provider, tier };
        if self.breaker_open(&model.provider) {
            labels.outcome("breaker_open");
            return Err(StepError::new(
                "model_unavailable",
                format!("provider {} is failing; its circuit is open", model.provider),
            ));
        }
        let validator = jsonschema::validator_for(schema).map_err(|e| {
            StepError::new("invalid_output_schema", format!("output_schema is not a valid JSON Schema: {e}"))
        })?;
        let mut messages = vec![json!({"role": "user", "content": prompt})];
        for attempt in 0..2 {
            let started = Instant::now();
            let called = self.call(provider, model, &labels, system, &messages, schema).await;
            labels.duration(started.elapsed().as_secs_f64());
            let answer = match called {
                Ok(answer) => {
                    labels.outcome("ok");
                    self.record(&model.provider, provider, true);
                    answer
                }
                Err(error) => {
                    labels.outcome("error");
                    self.record(&model.provider, provider, false);
                    return Err(StepError::new(
                        "model_error",
                        format!("{} {}", model.provider, error.message),
                    ));
                }
            };
            let problems: Vec<String> =
                validator.iter_errors(&answer).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            if problems.is_empty() {
                return Ok(answer);
            }
            if attempt == 1 {
                return Err(StepError::new(
                    "invalid_model_output",
                    format!(
                        "the model's answer did not match output_schema after one repair: {}",
                        problems.join("; ")
                    ),
                ));
            }
            messages.push(json!({"role": "assistant", "content": answer.to_string()}));
            messages.push(json!({"role": "user", "content": format!(
                "That answer does not match the required JSON Schema: {}. Answer again with only JSON that matches it.",
                problems.join("; ")
            )}));
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn call(
        &self,
        provider: &ProviderConfig,
        tier: &oa_config::TierModel,
        labels: &CallLabels<'_>,
        system: Option<&str>,
        messages: &[Value],
        schema: &Value,
    ) -> Result<Value, CallError> {
        let base = provider.base_url.trim_end_matches('/');
        let host =
            reqwest::Url::parse(base).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        let host = host.as_str();
        let timeout = Duration::from_millis(provider.timeout_ms);
        let attempt = || async {
            match provider.kind.as_str() {
                "anthropic" => {
                    let mut request = self
                        .http
                        .post(format!("{base}/v1/messages"))
                        .timeout(timeout)
                        .header("anthropic-version", "2023-06-01");
                    if let Some(key) = &provider.api_key {
                        request = request.header("x-api-key", key.expose_secret());
                    }
                    let (span, trace) = oa_telemetry::outgoing_http("POST", host);
                    let request = request.headers(trace);
                    let body = json!({
                        "model": tier.model,
                        "max_tokens": tier.max_tokens,
                        "system": system.unwrap_or("Answer by calling the step_output tool."),
                        "messages": messages,
                        "tools": [{"name": "step_output", "description": "The structured answer", "input_schema": schema}],
                        "tool_choice": {"type": "tool", "name": "step_output"},
                    });
                    let answer = send_json(request, &body).instrument(span).await?;
                    labels.tokens(&answer["usage"], "input_tokens", "output_tokens");
                    answer["content"]
                        .as_array()
                        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_use"))
                        .map(|b| b["input"].clone())
                        .ok_or(CallError {
                            message: "the answer has no tool_use block".into(),
                            retryable: false,
                        })
                }
                _ => {
                    let mut request = self.http.post(format!("{base}/v1/chat/completions")).timeout(timeout);
                    if let Some(key) = &provider.api_key {
                        request = request.bearer_auth(key.expose_secret());
                    }
                    let (span, trace) = oa_telemetry::outgoing_http("POST", host);
                    let request = request.headers(trace);
                    let mut all = Vec::new();
                    if let Some(system) = system {
                        all.push(json!({"role": "system", "content": system}));
                    }
                    all.extend_from_slice(messages);
                    let body = json!({
                        "model": tier.model,
                        "max_tokens": tier.max_tokens,
                        "temperature": 0,
                        "messages": all,
                        "response_format": {"type": "json_schema", "json_schema": {"name": "step_output", "schema": schema}},
                    });
                    let answer = send_json(request, &body).instrument(span).await?;
                    labels.tokens(&answer["usage"], "prompt_tokens", "completion_tokens");
                    let content = answer["choices"][0]["message"]["content"].as_str().ok_or(CallError {
                        message: "the answer has no message content".into(),
                        retryable: false,
                    })?;
                    serde_json::from_str(content).map_err(|e| CallError {
                        message: format!("the model did not answer JSON: {e}"),
                        retryable: false,
                    })
                }
            }
        };
        attempt
            .retry(backoff(provider.max_retries))
            .when(|e: &CallError| e.retryable)
            .notify(|_, _| labels.retried())
            .await
    }
}

/// The labels of one model call's series: its provider and tier.
struct CallLabels<'a> {
    provider: &'a str,
    tier: &'a str,
}

impl CallLabels<'_> {
    fn outcome(&self, outcome: &'static str) {
        metrics::counter!(metrics::LLM_CALLS, "role" => "worker", "provider" => self.provider.to_owned(),
            "tier" => self.tier.to_owned(), "outcome" => outcome)
        .increment(1);
    }

    fn duration(&self, seconds: f64) {
        metrics::histogram!(metrics::LLM_DURATION, "role" => "worker", "provider" => self.provider.to_owned(),
            "tier" => self.tier.to_owned())
        .record(seconds);
    }

    fn retried(&self) {
        metrics::counter!(metrics::LLM_RETRIES, "role" => "worker", "provider" => self.provider.to_owned())
            .increment(1);
    }

    /// Counts the prompt and completion tokens of an answer's `usage` object.
    fn tokens(&self, usage: &Value, prompt: &str, completion: &str) {
        for (field, kind) in [(prompt, "prompt"), (completion, "completion")] {
            if let Some(count) = usage[field].as_u64() {
                metrics::counter!(metrics::LLM_TOKENS, "role" => "worker", "provider" => self.provider.to_owned(),
                    "tier" => self.tier.to_owned(), "kind" => kind)
                .increment(count);
            }
        }
    }
}

fn breaker_gauge(provider: &str, open: bool) {
    metrics::gauge!(metrics::LLM_BREAKER_OPEN, "role" => "worker", "provider" => provider.to_owned())
        .set(if open { 1.0 } else { 0.0 });
}

/// Notification channels and product actions, all through the one egress client.
pub struct Outbound {
    egress: Egress,
    channels: ChannelsConfig,
    smtp_tls: SmtpTls,
    actions: ActionsConfig,
}

impl Outbound {
    pub fn new(config: &oa_config::Config, egress: Egress) -> Self {
        Outbound {
            egress,
            channels: config.channels.clone(),
            smtp_tls: config.smtp_tls(),
            actions: config.actions.clone(),
        }
    }

    /// Posts to `url`, retrying what may succeed again. `what` names the call for the tenant
    /// ("the webhook", "the SMS"); the URL and any answer stay in the logs.
    async fn post(
        &self,
        what: &str,
        url: &str,
        key: &str,
        body: &Value,
        timeout_ms: u64,
    ) -> Result<Value, StepError> {
        let timeout = Duration::from_millis(timeout_ms);
        let attempt = || self.egress.post_json(url, key, body, timeout);
        attempt.retry(backoff(3)).when(EgressError::is_retryable).await.map_err(|e| {
            StepError::new("delivery_failed", format!("{what} was not delivered: {}", e.tenant_message()))
        })
    }

    /// Sends one notification to every recipient under one idempotency key per recipient. On
    /// Slack and Teams, a recipient that is not a URL (a channel name) goes through the org's own
    /// incoming webhook, `org_webhook`; the operator's are never used for an org's messages.
    pub async fn notify(
        &self,
        channel: &str,
        recipients: &[String],
        subject: Option<&str>,
        body: &str,
        key: &str,
        org_webhook: Option<&str>,
    ) -> Result<Value, StepError> {
        let mut delivered = Vec::new();
        for (index, recipient) in recipients.iter().enumerate() {
            let key = format!("{key}:{index}");
            match channel {
                "sms" => {
                    let mut payload = json!({"to": recipient, "body": body});
                    if let Some(api_key) = &self.channels.sms_api_key {
                        payload["api_key"] = json!(api_key.expose_secret());
                    }
                    self.post("the SMS", &self.channels.sms_url, &key, &payload, self.channels.timeout_ms)
                        .await?;
                }
                "email" => {
                    self.email(recipient, subject.unwrap_or("One Agents notification"), body, &key).await?
                }
                _ => {
                    let (url, payload) =
                        if recipient.starts_with("https://") || recipient.starts_with("http://") {
                            (recipient.clone(), json!({"text": body}))
                        } else {
                            let Some(url) = org_webhook else {
                                let error = format!("the org has no {channel} webhook in its settings");
                                return Err(StepError::new("delivery_failed", error));
                            };
                            (url.to_owned(), json!({"channel": recipient, "text": body}))
                        };
                    let what = format!("the {channel} message to recipient {}", index + 1);
                    self.post(&what, &url, &key, &payload, self.channels.timeout_ms).await?;
                }
            }
            delivered.push(recipient.clone());
        }
        Ok(json!({ "channel": channel, "delivered_to": delivered }))
    }

    async fn email(&self, to: &str, subject: &str, body: &str, key: &str) -> Result<(), StepError> {
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        // The relay's own words may name hosts of the operator's: they go to the logs only.
        let failed = |e: &dyn std::fmt::Display| {
            tracing::warn!(to, error = %e, "email not delivered");
            StepError::new("delivery_failed", format!("the email to {to} was not delivered"))
        };
        let message = Message::builder()
            .from(self.channels.email_from.parse().map_err(|e| failed(&e))?)
            .to(to.parse().map_err(|e| failed(&e))?)
            .subject(subject)
            // The idempotency key as Message-ID lets a relay or inbox drop a resend.
            .message_id(Some(format!("<{}@one-agents>", key.replace(':', "."))))
            .body(body.to_owned())
            .map_err(|e| failed(&e))?;
        let host = &self.channels.smtp_host;
        let builder = match self.smtp_tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(|e| failed(&e))?
            }
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| failed(&e))?,
        };
        let transport = builder
            .port(self.channels.smtp_port)
            .timeout(Some(Duration::from_millis(self.channels.timeout_ms)))
            .build();
        transport.send(message).await.map_err(|e| failed(&e))?;
        Ok(())
    }

    /// Calls an operation of the action catalogue at its product's endpoint, on the path the
    /// catalogue gives, signed with the org's identity (`oa_auth::actions`).
    pub async fn act(
        &self,
        org_id: &str,
        operation: &oa_domain::actions::Operation,
        params: &Value,
        key: &str,
    ) -> Result<Value, StepError> {
        use oa_auth::actions::{self, SignedCall};
        let product = operation.product();
        let base = self.actions.endpoints.get(product).ok_or_else(|| {
            StepError::new("action_unavailable", format!("no endpoint is configured for product {product}"))
        })?;
        let url = format!("{}{}", base.trim_end_matches('/'), operation.path);
        let path = reqwest::Url::parse(&url).map(|u| u.path().to_owned()).map_err(|_| {
            StepError::new("action_unavailable", format!("the endpoint of product {product} is not a URL"))
        })?;
        let body = serde_json::to_vec(params).map_err(|e| StepError::new("invalid_params", e.to_string()))?;
        let timestamp = chrono::Utc::now().timestamp();
        let call = SignedCall { method: "POST", path: &path, timestamp, org_id, body: &body };
        let signature = actions::sign(self.actions.secret_for(product).expose_secret().as_bytes(), &call);
        let headers = [
            (actions::ORG_HEADER, org_id.to_owned()),
            (actions::ACTION_HEADER, operation.action.clone()),
            (actions::TIMESTAMP_HEADER, timestamp.to_string()),
            (actions::SIGNATURE_HEADER, signature),
        ];
        let timeout = Duration::from_millis(self.actions.timeout_ms);
        let attempt = || self.egress.post_bytes(&url, key, body.clone(), &headers, timeout);
        attempt.retry(backoff(3)).when(EgressError::is_retryable).await.map_err(|e| {
            StepError::new(
                "delivery_failed",
                format!("the {} call was not delivered: {}", operation.action, e.tenant_message()),
            )
        })
    }
}
