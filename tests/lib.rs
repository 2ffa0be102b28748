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
