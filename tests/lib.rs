//! Shared helpers of the end-to-end tests; the tests themselves are the files beside this one.

/// Reads a response as `(status, body bytes)`.
pub async fn status_and_body(response: reqwest::Response) -> (u16, Vec<u8>) {
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a readable body").to_vec();
    (status, body)
}

/// Reads a response as `(status, JSON body)`.
pub async fn status_and_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let (status, body) = status_and_body(response).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("a JSON body, got {:?}", String::from_utf8_lossy(&body)));
    (status, json)
}

/// A valid custom agent definition on `psa:ticket.escalated`, named `name`.
pub fn p1_escalation(name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "description": "SMS notify senior technicians when a ticket is escalated to P1",
        "category": "service_desk",
        "trigger": {"type": "bus_event", "event_type": "ticket.escalated", "source_product": "psa",
                    "filters": [{"field": "escalated_to", "operator": "eq", "value": "p1"}]},
        "conditions": [],
        "steps": [{"type": "notification", "id": "notify_senior", "channel": "sms",
                   "recipients": ["+15551234567"], "body": "P1 escalation: {{event_payload.ticket_id}}"}],
        "conflict_behavior": "additive",
        "client_scope": "all"
    })
}
