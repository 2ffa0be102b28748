//! Services trust only the plane: a gRPC call without the internal service credential is refused,
//! and the caller's identity arrives intact in metadata.

use oa_domain::{Caller, Principal, Role, Scope};
use oa_proto::common::WhoAmIRequest;
use oa_proto::common::diagnostics_client::DiagnosticsClient;
use secrecy::SecretString;
use tokio_stream::wrappers::TcpListenerStream;

const TOKEN: &str = "a-test-service-token-of-some-length";

async fn start_guarded_service() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = oa_auth::service::Diagnostics::guarded("agents", SecretString::from(TOKEN));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });
    format!("http://{addr}")
}

fn client(endpoint: &str) -> DiagnosticsClient<tonic::transport::Channel> {
    DiagnosticsClient::new(oa_auth::service::channel(endpoint, &oa_config::GrpcConfig::default()).unwrap())
}

#[tokio::test]
async fn a_service_refuses_calls_without_the_internal_credential() {
    let endpoint = start_guarded_service().await;
    let caller = Caller {
        org_id: "org_a".into(),
        tier: "pro".into(),
        principal: Principal::User { sub: "u1".into(), role: Role::Admin },
    };

    let status = client(&endpoint).who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let forged = oa_auth::service::outgoing(
        WhoAmIRequest {},
        &caller,
        &SecretString::from("a-wrong-token-of-some-length"),
    );
    let status = client(&endpoint).who_am_i(forged).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(oa_proto::status::api_error(&status).code, oa_domain::ErrorCode::Unauthorized);
}

#[tokio::test]
async fn the_callers_identity_reaches_the_service_in_metadata() {
    let endpoint = start_guarded_service().await;
    let token = SecretString::from(TOKEN);
    let user = Caller {
        org_id: "org_a".into(),
        tier: "pro".into(),
        principal: Principal::User { sub: "u1".into(), role: Role::Technician },
    };
    let answer = client(&endpoint)
        .who_am_i(oa_auth::service::outgoing(WhoAmIRequest {}, &user, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            answer.service.as_str(),
            answer.org_id.as_str(),
            answer.principal_type.as_str(),
            answer.principal_id.as_str(),
            answer.role.as_str()
        ),
        ("agents", "org_a", "user", "u1", "technician")
    );

    let key = Caller {
        org_id: "org_b".into(),
        tier: "starter".into(),
        principal: Principal::IntegrationKey { key_id: "key_1".into(), scopes: vec![Scope::EventsPublish] },
    };
    let answer = client(&endpoint)
        .who_am_i(oa_auth::service::outgoing(WhoAmIRequest {}, &key, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.org_id.as_str(), answer.principal_type.as_str()), ("org_b", "integration_key"));
    assert_eq!(answer.scopes, vec!["events:publish".to_owned()]);
}
