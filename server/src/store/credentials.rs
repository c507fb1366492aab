//! API credentials and the roles they carry.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;

/// What a credential lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Submits jobs, reads, cancels their own.
    User,
    /// A user who may act on every job and use any priority.
    Admin,
    /// A worker daemon: the worker protocol only.
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => Role::User,
            "admin" => Role::Admin,
            "worker" => Role::Worker,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewCredential {
    pub role: Role,
    pub name: String,
    pub token_sha256: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API token's record (the token itself is never stored, only its sha256).
#[derive(Debug, Clone)]
pub struct Credential {
    pub id: i64,
    pub role: Role,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait CredentialStore {
    async fn create_credential(&self, credential: NewCredential) -> StoreResult<Credential>;
    async fn credential_for_token(&self, token_sha256: &str) -> StoreResult<Option<Credential>>;
    async fn list_credentials(&self) -> StoreResult<Vec<Credential>>;
    /// Revokes a credential from now on (again: no change).
    async fn revoke_credential(&self, id: i64) -> StoreResult<Credential>;
}
