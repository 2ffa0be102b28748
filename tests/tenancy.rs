//! Tenancy in depth: keys are stored only as hashes, and row-level security holds even when the
//! code forgets to scope a query.

use oa_domain::Scope;
use oa_testkit::TestDb;
use sha2::Digest;
use sqlx::Row;

#[tokio::test]
async fn an_integration_key_is_stored_only_as_prefix_and_hash() {
    let db = TestDb::create().await.unwrap();
    let org = db.create_org("pro").await.unwrap();
    let (key_id, plaintext) = db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    let (prefix, secret) = plaintext.strip_prefix("oak_").unwrap().split_once('_').unwrap();

    let row = sqlx::query("SELECT to_jsonb(k)::text AS everything, prefix, secret_hash FROM tenancy.integration_keys k WHERE id = $1")
        .bind(&key_id)
        .fetch_one(&db.admin)
        .await
        .unwrap();
    let everything: String = row.get("everything");
    assert!(!everything.contains(secret), "the secret must not be stored in any column");
    assert!(!everything.contains(&plaintext));
    assert_eq!(row.get::<String, _>("prefix"), prefix);
    let expected: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
    assert_eq!(row.get::<Vec<u8>, _>("secret_hash"), expected.to_vec());

    // The listing shows the key without its secret.
    let listed = oa_tenancy::KeyStore::new(db.app.clone()).list(&org).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!serde_json::to_string(&listed).unwrap().contains(secret));
}

#[tokio::test]
async fn the_app_role_sees_no_rows_without_an_org_in_its_transaction() {
    let db = TestDb::create().await.unwrap();
    let org = db.create_org("pro").await.unwrap();
    db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    let admin_count: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.integration_keys")
        .fetch_one(&db.admin)
        .await
        .unwrap();
    assert_eq!(admin_count, 1);

    // A query that forgot its org scope sees nothing.
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenancy.integration_keys").fetch_one(&db.app).await.unwrap();
    let orgs: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.orgs").fetch_one(&db.app).await.unwrap();
    assert_eq!((keys, orgs), (0, 0));

    // Scoped to the org, it sees that org's rows.
    let mut tx = oa_store::begin_org(&db.app, &org).await.unwrap();
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.integration_keys")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(keys, 1);
    tx.rollback().await.unwrap();

    // The app role owns no table.
    let owned: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tableowner = 'one_agents_app'")
        .fetch_one(&db.admin)
        .await
        .unwrap();
    assert_eq!(owned, 0);
}

#[tokio::test]
async fn row_level_security_refuses_a_cross_org_insert_and_hides_other_orgs() {
    let db = TestDb::create().await.unwrap();
    let org_a = db.create_org("pro").await.unwrap();
    let org_b = db.create_org("pro").await.unwrap();
    db.create_key(&org_b, &[Scope::AgentsRead]).await.unwrap();

    let mut tx = oa_store::begin_org(&db.app, &org_a).await.unwrap();
    let error = sqlx::query(
        "INSERT INTO tenancy.integration_keys (id, org_id, name, prefix, secret_hash, scopes, created_by)
         VALUES ('key_x', $1, 'sneaky', 'abcdefgh1234', $2, ARRAY['agents:read'], 'test')",
    )
    .bind(&org_b)
    .bind(vec![0u8; 32])
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(oa_store::is_rls_violation(&error), "{error}");
    tx.rollback().await.unwrap();

    let mut tx = oa_store::begin_org(&db.app, &org_a).await.unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.integration_keys WHERE org_id = $1")
        .bind(&org_b)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(visible, 0, "org A cannot see org B's keys even when it asks for them");
    let updated = sqlx::query("UPDATE tenancy.integration_keys SET revoked_at = now() WHERE org_id = $1")
        .bind(&org_b)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(updated, 0, "nor revoke them");
    tx.commit().await.unwrap();

    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tenancy.integration_keys WHERE revoked_at IS NULL")
            .fetch_one(&db.admin)
            .await
            .unwrap();
    assert_eq!(total, 1, "nothing was written");
}

#[tokio::test]
async fn the_org_scope_ends_with_its_transaction() {
    let db = TestDb::create().await.unwrap();
    let org = db.create_org("pro").await.unwrap();
    db.create_key(&org, &[Scope::AgentsRead]).await.unwrap();
    let mut connection = db.app.acquire().await.unwrap();
    {
        let mut tx = sqlx::Acquire::begin(&mut *connection).await.unwrap();
        sqlx::query("SELECT set_config('app.org_id', $1, true)").bind(&org).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    // The same pooled connection, after the transaction: the org no longer applies.
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM tenancy.integration_keys")
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    assert_eq!(keys, 0);
}

#[tokio::test]
async fn org_creation_rejects_bad_ids_tiers_and_duplicates() {
    let db = TestDb::create().await.unwrap();
    let orgs = oa_tenancy::OrgStore::new(db.admin.clone());
    assert!(matches!(
        orgs.create(Some("acme"), "Acme", "pro").await,
        Err(oa_tenancy::TenancyError::Invalid(_))
    ));
    assert!(matches!(orgs.create(None, "Acme", "platinum").await, Err(oa_tenancy::TenancyError::Invalid(_))));
    assert!(matches!(orgs.create(None, "  ", "pro").await, Err(oa_tenancy::TenancyError::Invalid(_))));
    let org = orgs.create(Some("org_acme"), "Acme", "pro").await.unwrap();
    assert!(matches!(
        orgs.create(Some(&org.id), "Acme", "pro").await,
        Err(oa_tenancy::TenancyError::OrgExists(_))
    ));
    assert!(matches!(
        orgs.set_credit_override(&org.id, Some(-5)).await,
        Err(oa_tenancy::TenancyError::Invalid(_))
    ));
    let updated = orgs.set_credit_override(&org.id, Some(500)).await.unwrap();
    assert_eq!(updated.monthly_credits_override, Some(500));
    let row = sqlx::query("SELECT count(*) AS n FROM tenancy.orgs").fetch_one(&db.admin).await.unwrap();
    assert_eq!(row.get::<i64, _>("n"), 1);
}

#[tokio::test]
async fn an_org_transaction_sees_its_org_whatever_the_id_looks_like() {
    let db = oa_testkit::TestDb::create().await.unwrap();
    for org in ["org_plain-Id_1", "org_it's \"odd\"; SELECT 1; --"] {
        let mut tx = oa_store::begin_org(&db.app, org).await.unwrap();
        let seen: String =
            sqlx::query_scalar("SELECT current_setting('app.org_id')").fetch_one(&mut *tx).await.unwrap();
        assert_eq!(seen, org);
        tx.commit().await.unwrap();
        // The setting was the transaction's own.
        let after: Option<String> =
            sqlx::query_scalar("SELECT nullif(current_setting('app.org_id', true), '')")
                .fetch_one(&db.app)
                .await
                .unwrap();
        assert_eq!(after, None);
    }
}
