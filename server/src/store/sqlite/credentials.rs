//! API credentials: tokens stored as their sha256, with roles, expiry and revocation.

use super::rows::*;
use super::*;

#[async_trait]
impl CredentialStore for SqliteStore {
    async fn create_credential(&self, c: NewCredential) -> StoreResult<Credential> {
        let mut tx = self.begin().await?;
        let rec: CredentialRecord = sqlx::query_as(&format!(
            "INSERT INTO credentials (token_sha256, role, name, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             RETURNING {CREDENTIAL_COLUMNS}"
        ))
        .bind(&c.token_sha256)
        .bind(c.role.as_str())
        .bind(&c.name)
        .bind(c.expires_at.map(|t| t.timestamp_micros()))
        .bind(now_us())
        .fetch_one(tx.conn())
        .await?;
        tx.commit().await?;
        rec.try_into()
    }

    async fn credential_for_token(&self, token_sha256: &str) -> StoreResult<Option<Credential>> {
        let rec: Option<CredentialRecord> =
            sqlx::query_as(&format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE token_sha256 = ?1"))
                .bind(token_sha256)
                .fetch_optional(&self.reader)
                .await?;
        rec.map(Credential::try_from).transpose()
    }

    async fn list_credentials(&self) -> StoreResult<Vec<Credential>> {
        let recs: Vec<CredentialRecord> =
            sqlx::query_as(&format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY id")).fetch_all(&self.reader).await?;
        recs.into_iter().map(Credential::try_from).collect()
    }

    async fn revoke_credential(&self, id: i64) -> StoreResult<Credential> {
        let mut tx = self.begin().await?;
        let rec: Option<CredentialRecord> = sqlx::query_as(&format!(
            "UPDATE credentials SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1 RETURNING {CREDENTIAL_COLUMNS}"
        ))
        .bind(id)
        .bind(now_us())
        .fetch_optional(tx.conn())
        .await?;
        tx.commit().await?;
        rec.ok_or_else(|| StoreError::NotFound(format!("credential {id}")))?.try_into()
    }
}
