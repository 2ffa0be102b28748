//! The Event Catalog section of the API reference, and products registering their event types.

use oa_domain::Scope;
use oa_e2e::{p1_escalation, status_and_json};
use oa_testkit::TestPlane;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn the_seeded_catalog_lists_realistic_event_types_with_filters() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let (status, list) = plane.get_json("/api/events", &org).await;
    assert_eq!(status, 200);
    let events = list["events"].as_array().unwrap();
    assert!(events.len() >= 24, "{}", events.len());
    for product in ["psa", "rmm", "defend", "backup", "billing", "hub"] {
        assert!(events.iter().any(|e| e["source_product"] == product), "{product}");
    }
    let created = events.iter().find(|e| e["id"] == "psa:ticket.created").unwrap();
    assert_eq!(created["display_name"], "Ticket Created");
    assert_eq!(created["category"], "service_desk");
    let priority =
        created["filterable_fields"].as_array().unwrap().iter().find(|f| f["path"] == "priority").unwrap();
    assert_eq!(
        *priority,
        json!({"path": "priority", "label": "Priority", "type": "enum", "enum_values": ["p1", "p2", "p3", "p4"]})
    );
    assert!(events.iter().all(|e| e["sample_payload"]["client_id"].is_string()));

    let (_, psa) = plane.get_json("/api/events?source_product=psa", &org).await;
    assert!(psa["events"].as_array().unwrap().iter().all(|e| e["source_product"] == "psa"));
    let (_, security) = plane.get_json("/api/events?category=security", &org).await;
    let security = security["events"].as_array().unwrap();
    assert!(!security.is_empty() && security.iter().all(|e| e["category"] == "security"));
    let (status, error) = plane.get_json("/api/events?category=weather", &org).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")));
    let (status, one) = plane.get_json("/api/events/defend:ransomware.detected", &org).await;
    assert_eq!((status, one["display_name"].as_str()), (200, Some("Ransomware Detected")));
    let (status, error) = plane.get_json("/api/events/psa:nothing", &org).await;
    assert_eq!((status, error["error"].as_str()), (404, Some("event_type_not_found")));
}

fn registration() -> Value {
    json!({
        "display_name": "Asset Warranty Expiring",
        "description": "Fires 30 days before a device's warranty ends",
        "category": "operations",
        "filterable_fields": [
            {"path": "days_left", "label": "Days left", "type": "number"},
            {"path": "vendor", "label": "Vendor", "type": "enum", "enum_values": ["dell", "hp", "lenovo"]}
        ],
        "sample_payload": {"client_id": "cl_acme", "device_id": "dev_1", "days_left": 30, "vendor": "dell"}
    })
}

#[tokio::test]
async fn a_product_key_registers_and_updates_its_event_types() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("enterprise").await.unwrap();
    let product = plane.db.create_product_key("rmm").await.unwrap();
    let (_, reader) = plane.db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    let path = "/api/events/rmm:warranty.expiring";

    let (status, created) = status_and_json(
        plane.as_key(Method::PUT, path, &product).json(&registration()).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (created["id"].as_str(), created["source_product"].as_str()),
        (Some("rmm:warranty.expiring"), Some("rmm"))
    );
    let mut changed = registration();
    changed["display_name"] = json!("Warranty Expiring");
    let (status, updated) =
        status_and_json(plane.as_key(Method::PUT, path, &product).json(&changed).send().await.unwrap()).await;
    assert_eq!((status, updated["display_name"].as_str()), (200, Some("Warranty Expiring")));

    // Admins steer agents, products own their event types; keys without the scope cannot either.
    let (status, _) = status_and_json(
        plane.as_user(Method::PUT, path, &org, "admin").json(&registration()).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) =
        status_and_json(plane.as_key(Method::PUT, path, &reader).json(&registration()).send().await.unwrap())
            .await;
    assert_eq!(status, 403);

    for (name, body, bad_path) in [
        (
            "enum without values",
            json!({"filterable_fields": [{"path": "vendor", "label": "V", "type": "enum"}]}),
            "filterable_fields[0].enum_values",
        ),
        ("unknown category", json!({"category": "weather"}), "category"),
        ("sample that is not an object", json!({"sample_payload": [1, 2]}), "sample_payload"),
    ] {
        let mut bad = registration();
        for (key, value) in body.as_object().unwrap() {
            bad[key] = value.clone();
        }
        let (status, error) =
            status_and_json(plane.as_key(Method::PUT, path, &product).json(&bad).send().await.unwrap()).await;
        assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")), "{name}");
        assert_eq!(error["details"][0]["path"], bad_path, "{name}");
    }
    let (status, error) = status_and_json(
        plane
            .as_key(Method::PUT, "/api/events/Not An Id", &product)
            .json(&registration())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (400, Some("bad_request")));
    let (_, kept) =
        status_and_json(plane.as_user(Method::GET, path, &org, "viewer").send().await.unwrap()).await;
    assert_eq!(kept["display_name"], "Warranty Expiring", "refused updates changed nothing");
}

#[tokio::test]
async fn an_event_type_cannot_drop_a_field_that_agents_filter_on() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("pro").await.unwrap();
    let product = plane.db.create_product_key("psa").await.unwrap();
    let (_, original) = plane.get_json("/api/events/psa:ticket.escalated", &org).await;
    let response = plane
        .as_user(Method::POST, "/api/agents", &org, "admin")
        .json(&p1_escalation("Uses escalated_to"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let mut without = original.clone();
    let fields: Vec<Value> = original["filterable_fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"] != "escalated_to")
        .cloned()
        .collect();
    without["filterable_fields"] = json!(fields);
    let (status, error) = status_and_json(
        plane
            .as_key(Method::PUT, "/api/events/psa:ticket.escalated", &product)
            .json(&without)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, error["error"].as_str()), (409, Some("conflict")), "{error}");
    assert_eq!(error["details"]["fields_in_use"], json!(["escalated_to"]));
    // That the field is in use, never where: no org, no agent.
    let text = error.to_string();
    assert!(!text.contains(&org) && !text.contains("agent_"), "{text}");

    // A field no agent filters on can go.
    let mut smaller = original.clone();
    let fields: Vec<Value> = original["filterable_fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["path"] != "reason")
        .cloned()
        .collect();
    smaller["filterable_fields"] = json!(fields);
    let (status, _) = status_and_json(
        plane
            .as_key(Method::PUT, "/api/events/psa:ticket.escalated", &product)
            .json(&smaller)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_catalog_belongs_to_the_products_and_a_tenant_key_cannot_write_it() {
    let plane = TestPlane::start().await.unwrap();
    let org = plane.db.create_org("enterprise").await.unwrap();
    let path = "/api/events/rmm:warranty.expiring";
    // An org's key cannot even be given catalog:write any more...
    let refused = plane.db.create_key(&org, &[Scope::CatalogWrite]).await;
    assert!(refused.unwrap_err().to_string().contains("product keys"));
    // ...and one that holds it from before the change is refused all the same.
    let (legacy_id, legacy) = plane.db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    sqlx::query(
        "UPDATE tenancy.integration_keys SET scopes = array_append(scopes, 'catalog:write') WHERE id = $1",
    )
    .bind(&legacy_id)
    .execute(&plane.db.admin)
    .await
    .unwrap();
    let (_, admin_key) =
        plane.db.create_key(&org, &[Scope::EventsPublish, Scope::AgentsWrite]).await.unwrap();
    for key in [&legacy, &admin_key] {
        let (status, body) =
            status_and_json(plane.as_key(Method::PUT, path, key).json(&registration()).send().await.unwrap())
                .await;
        assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
    }
    // Another product's key writes only its own event types.
    let psa = plane.db.create_product_key("psa").await.unwrap();
    let (status, body) =
        status_and_json(plane.as_key(Method::PUT, path, &psa).json(&registration()).send().await.unwrap())
            .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = plane.get_json(path, &org).await;
    assert_eq!(status, 404, "nothing was written");
    let rmm = plane.db.create_product_key("rmm").await.unwrap();
    let response = plane.as_key(Method::PUT, path, &rmm).json(&registration()).send().await.unwrap();
    assert_eq!(response.status(), 201);
    // A product key reads the catalog and does nothing else.
    assert_eq!(plane.as_key(Method::GET, "/api/agents", &rmm).send().await.unwrap().status(), 403);
}
