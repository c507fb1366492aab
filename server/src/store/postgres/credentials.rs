//! API credentials: tokens stored as their sha256, with roles, expiry and revocation.

use super::rows::*;
use super::*;

#[async_trait]
impl CredentialStore for PgStore {
    async fn create_credential(&self, c: NewCredential) -> StoreResult<Credential> {
        let rec: CredentialRecord = sqlx::query_as(
            "INSERT INTO credentials (token_sha256, role, name, expires_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, role, name, created_at, expires_at, revoked_at",
        )
        .bind(&c.token_sha256)
        .bind(c.role.as_str())
        .bind(&c.name)
        .bind(c.expires_at)
        .fetch_one(&self.pool)
        .await?;
        rec.try_into()
    }

    async fn credential_for_token(&self, token_sha256: &str) -> StoreResult<Option<Credential>> {
        let rec: Option<CredentialRecord> =
            sqlx::query_as("SELECT id, role, name, created_at, expires_at, revoked_at FROM credentials WHERE token_sha256 = $1")
                .bind(token_sha256)
                .fetch_optional(&self.pool)
                .await?;
        rec.map(Credential::try_from).transpose()
    }

    async fn list_credentials(&self) -> StoreResult<Vec<Credential>> {
        let recs: Vec<CredentialRecord> =
            sqlx::query_as("SELECT id, role, name, created_at, expires_at, revoked_at FROM credentials ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        recs.into_iter().map(Credential::try_from).collect()
    }

    async fn revoke_credential(&self, id: i64) -> StoreResult<Credential> {
        let rec: Option<CredentialRecord> = sqlx::query_as(
            "UPDATE credentials SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
             RETURNING id, role, name, created_at, expires_at, revoked_at",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        rec.ok_or_else(|| StoreError::NotFound(format!("credential {id}")))?.try_into()
    }
}
