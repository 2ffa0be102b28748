//! The SANDBOX: local servers speaking the real protocols of the outside services the plane calls,
//! so `make run` and the tests need no outside account. It is labelled a sandbox in every answer
//! and page, and production configuration refuses to point at it.
//!
//! - `POST /v1/chat/completions` (OpenAI-compatible) and `POST /v1/messages` (Anthropic): answers
//!   derived deterministically from the requested JSON Schema.
//! - `POST /sms/messages`: an SMS API. `POST /webhooks/{name}`: incoming webhooks (Slack, Teams,
//!   custom). `POST /products/{product}/{path}`: product APIs for `action` steps, which check the
//!   org signature on every call (the development secret) and refuse a bad one with 401.
//! - SMTP on its own port: every message accepted and recorded.
//! - `GET /`: a page of everything received; `GET /records`: the same as JSON.
//!
//! Requests with an `Idempotency-Key` already seen are answered again without a second record,
//! as real APIs with idempotency keys do.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    /// llm, sms, email, webhook or action.
    pub kind: String,
    /// Where it was sent: the model, the phone number, the mailbox, the webhook or the operation.
    pub target: String,
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` the caller sent, if any: the call belongs to that trace.
    pub traceparent: Option<String>,
    pub body: Value,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// How many records the sandbox keeps (the oldest tenth goes when full); idempotency keys are kept
/// for good.
const MAX_RECORDS: usize = 50_000;

#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<(Vec<Record>, HashSet<String>)>>,
}

impl Recorder {
    /// Records unless the idempotency key was seen; returns whether it recorded.
    fn record(&self, kind: &str, target: &str, key: Option<String>, body: Value) -> bool {
        self.record_traced(kind, target, key, body, None)
    }

    /// Records as [`Recorder::record`] does, with the `traceparent` of the request's headers.
    fn record_traced(
        &self,
        kind: &str,
        target: &str,
        key: Option<String>,
        body: Value,
        headers: Option<&HeaderMap>,
    ) -> bool {
        let traceparent =
            headers.and_then(|h| h.get("traceparent")).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = &key
            && !inner.1.insert(format!("{kind}:{key}"))
        {
            return false;
        }
        // A long-running local plane keeps the most recent records, not all of them.
        if inner.0.len() >= MAX_RECORDS {
            inner.0.drain(..MAX_RECORDS / 10);
        }
        inner.0.push(Record {
            kind: kind.into(),
            target: target.into(),
            idempotency_key: key,
            traceparent,
            body,
            received_at: chrono::Utc::now(),
        });
        true
    }

    /// How many records there are, without copying them (the model stand-in numbers its answers).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn records(&self) -> Vec<Record> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    pub fn of_kind(&self, kind: &str) -> Vec<Record> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0.iter().filter(|r| r.kind == kind).cloned().collect()
    }
}

/// A value that satisfies `schema`, the same every time: the first enum value, a labelled string,
/// 0.9 for numbers, true for booleans, every declared property of an object.
pub fn value_for_schema(schema: &Value, name: &str) -> Value {
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && let Some(first) = values.first()
    {
        return first.clone();
    }
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => {
            kinds.iter().filter_map(Value::as_str).find(|k| *k != "null").unwrap_or("null")
        }
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match kind {
        "object" => {
            let mut object = Map::new();
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (key, property) in properties {
                    object.insert(key.clone(), value_for_schema(property, key));
                }
            }
            Value::Object(object)
        }
        "array" => {
            let item = schema
                .get("items")
                .map(|items| value_for_schema(items, name))
                .unwrap_or(json!("sandbox item"));
            let count = schema.get("minItems").and_then(Value::as_u64).unwrap_or(1).max(1);
            Value::Array((0..count).map(|_| item.clone()).collect())
        }
        "integer" => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(schema.get("minimum").and_then(Value::as_f64).map_or(0.9, |m| m.max(0.9))),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => json!(format!("sandbox {name}")),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A prompt containing `sandbox-delay-ms:<n>` is answered after n milliseconds (crash tests).
fn requested_delay(request: &Value) -> u64 {
    let text = request.to_string();
    text.split("sandbox-delay-ms:")
        .nth(1)
        .and_then(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok())
        .unwrap_or(0u64)
        .min(30_000)
}

/// A prompt containing `sandbox-nul` gets an answer whose strings hold a NUL character, as a
/// hostile or broken model may send (poison-input tests).
fn with_requested_nul(answer: Value, request: &Value) -> Value {
    if !request.to_string().contains("sandbox-nul") {
        return answer;
    }
    serde_json::from_str(&answer.to_string().replace("sandbox", "sandbox\\u0000")).unwrap_or(answer)
}

/// A prompt containing `sandbox-obey` gets every boolean of the answer turned to false, as a model
/// that followed text injected into its prompt would answer (prompt-injection tests).
fn with_requested_obedience(answer: Value, request: &Value) -> Value {
    if !request.to_string().contains("sandbox-obey") {
        return answer;
    }
    serde_json::from_str(&answer.to_string().replace("true", "false")).unwrap_or(answer)
}

async fn chat_completions(
    State(recorder): State<Recorder>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Json<Value> {
    let schema = &request["response_format"]["json_schema"]["schema"];
    let answer = with_requested_nul(value_for_schema(schema, "answer"), &request);
    let answer = with_requested_obedience(answer, &request);
    let model = request["model"].as_str().unwrap_or("sandbox").to_owned();
    recorder.record_traced("llm", &model, None, request.clone(), Some(&headers));
    let delay = requested_delay(&request);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    Json(json!({
        "id": format!("chatcmpl-sandbox-{}", recorder.len()),
        "object": "chat.completion",
        "model": model,
        "system_fingerprint": "one-agents-sandbox",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": answer.to_string()}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }))
}

async fn anthropic_messages(
    State(recorder): State<Recorder>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Json<Value> {
    let schema = &request["tools"][0]["input_schema"];
    let model = request["model"].as_str().unwrap_or("sandbox").to_owned();
    recorder.record_traced("llm", &model, None, request.clone(), Some(&headers));
    Json(json!({
        "id": "msg_sandbox",
        "type": "message",
        "role": "assistant",
        "model": model,
        "stop_reason": "tool_use",
        "content": [{"type": "tool_use", "id": "toolu_sandbox", "name": "step_output", "input": value_for_schema(schema, "answer")}],
        "usage": {"input_tokens": 10, "output_tokens": 10},
    }))
}

async fn sms(State(recorder): State<Recorder>, headers: HeaderMap, Json(body): Json<Value>) -> Json<Value> {
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    recorder.record_traced("sms", &to, idempotency_key(&headers), body, Some(&headers));
    Json(json!({"sid": "SMsandbox", "status": "queued", "sandbox": true}))
}

async fn webhook(
    State(recorder): State<Recorder>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> &'static str {
    // A message containing `sandbox-delay-ms:<n>` is answered after n milliseconds (budget tests).
    let delay = requested_delay(&body);
    recorder.record_traced("webhook", &name, idempotency_key(&headers), body, Some(&headers));
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    "ok"
}

async fn product(
    State(recorder): State<Recorder>,
    Path((product, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (http::StatusCode, Json<Value>) {
    use oa_auth::actions::{self, SignedCall};
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let org_id = header(actions::ORG_HEADER).unwrap_or_default().to_owned();
    let target = header(actions::ACTION_HEADER).map_or_else(|| format!("{product}./{path}"), str::to_owned);
    let call = SignedCall {
        method: "POST",
        path: &format!("/products/{product}/{path}"),
        timestamp: header(actions::TIMESTAMP_HEADER).and_then(|t| t.parse().ok()).unwrap_or_default(),
        org_id: &org_id,
        body: &body,
    };
    let verified = actions::verify(
        oa_config::DEV_ACTION_SECRET.as_bytes(),
        &call,
        header(actions::SIGNATURE_HEADER),
        chrono::Utc::now().timestamp(),
    );
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Err(refusal) = verified {
        recorder.record(
            "action_refused",
            &target,
            idempotency_key(&headers),
            json!({"org_id": org_id, "why": refusal.to_string()}),
        );
        return (
            http::StatusCode::UNAUTHORIZED,
            Json(json!({"error": refusal.to_string(), "sandbox": true})),
        );
    }
    // A slow product API, for crash tests: the request is received (and recorded) at once, the
    // answer comes after the `sandbox-delay-ms:<n>` a parameter holds.
    let delay = requested_delay(&body);
    let mut recorded = body;
    if let Value::Object(map) = &mut recorded {
        // What the product learnt from the signature: which org is calling.
        map.insert("_org_id".into(), json!(org_id));
    }
    recorder.record_traced("action", &target, idempotency_key(&headers), recorded, Some(&headers));
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    (http::StatusCode::OK, Json(json!({"status": "accepted", "operation": target, "sandbox": true})))
}

async fn records(State(recorder): State<Recorder>) -> Json<Value> {
    Json(json!({"sandbox": true, "records": recorder.records()}))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

async fn page(State(recorder): State<Recorder>) -> Html<String> {
    let mut rows = String::new();
    for record in recorder.records().iter().rev() {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            record.received_at.format("%H:%M:%S"),
            escape(&record.kind),
            escape(&record.target),
            escape(&serde_json::to_string_pretty(&record.body).unwrap_or_default())
        ));
    }
    Html(format!(
        "<!doctype html><title>One Agents SANDBOX</title><h1>One Agents SANDBOX</h1>\
         <p>Local stand-ins for the LLM, SMS, email, chat webhooks and product APIs. Nothing here left this machine.</p>\
         <table border=1 cellpadding=4><tr><th>time</th><th>kind</th><th>to</th><th>body</th></tr>{rows}</table>"
    ))
}

pub fn router(recorder: Recorder) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/records", get(records))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(anthropic_messages))
        .route("/sms/messages", post(sms))
        .route("/webhooks/{name}", post(webhook))
        .route("/products/{product}/{*path}", post(product))
        .with_state(recorder)
}

/// A minimal SMTP server (HELO/EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT): enough for any client
/// to deliver. Hand-written because the sandbox needs only to receive and record.
async fn smtp_session(stream: tokio::net::TcpStream, recorder: Recorder) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 one-agents-sandbox ESMTP SANDBOX\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::<String>::new());
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            write.write_all(b"250-one-agents-sandbox\r\n250 8BITMIME\r\n").await?;
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim().trim_matches(['<', '>']).to_owned();
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            to.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            write.write_all(b"250 OK\r\n").await?;
        } else if upper == "DATA" {
            write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
            let mut data = Vec::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push(line.strip_prefix('.').map(str::to_owned).unwrap_or(line));
            }
            let message = data.join("\n");
            let message_id = data
                .iter()
                .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                .map(|l| l[11..].trim().to_owned());
            let subject = data
                .iter()
                .find(|l| l.to_ascii_lowercase().starts_with("subject:"))
                .map(|l| l[8..].trim().to_owned());
            for recipient in &to {
                recorder.record(
                    "email",
                    recipient,
                    message_id.clone().map(|id| format!("{id}:{recipient}")),
                    json!({"from": from, "to": recipient, "subject": subject, "message": message}),
                );
            }
            write.write_all(b"250 OK queued\r\n").await?;
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 Bye\r\n").await?;
            return Ok(());
        } else {
            write.write_all(b"502 Command not implemented\r\n").await?;
        }
    }
    Ok(())
}

pub struct Sandbox {
    pub recorder: Recorder,
    pub http_addr: SocketAddr,
    pub smtp_addr: SocketAddr,
}

/// Starts the HTTP and SMTP servers; port 0 picks free ports.
pub async fn start(
    http: SocketAddr,
    smtp: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<Sandbox> {
    let recorder = Recorder::default();
    let http_listener = TcpListener::bind(http).await?;
    let smtp_listener = TcpListener::bind(smtp).await?;
    let sandbox = Sandbox {
        recorder: recorder.clone(),
        http_addr: http_listener.local_addr()?,
        smtp_addr: smtp_listener.local_addr()?,
    };
    let app = router(recorder.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(http_listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    });
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = smtp_listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let recorder = recorder.clone();
                        tokio::spawn(async move { let _ = smtp_session(stream, recorder).await; });
                    }
                }
            }
        }
    });
    tracing::info!(http = %sandbox.http_addr, smtp = %sandbox.smtp_addr, "SANDBOX listening (stand-ins for outside services)");
    Ok(sandbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_satisfy_their_schema_deterministically() {
        let schema = json!({"type": "object", "properties": {
            "priority": {"type": "string", "enum": ["p1", "p2"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "isolate": {"type": "boolean"},
            "items": {"type": "array", "items": {"type": "string"}},
            "summary": {"type": "string"}}});
        let value = value_for_schema(&schema, "answer");
        assert_eq!(value["priority"], "p1");
        assert_eq!(value["isolate"], true);
        assert_eq!(value["items"], json!(["sandbox items"]));
        assert_eq!(value, value_for_schema(&schema, "answer"));
    }
}
