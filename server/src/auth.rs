//! Who is calling. With `--require-auth`, every call needs `authorization: Bearer
//! TOKEN` for a token made by `camp-server token create`; tokens are stored
//! hashed. Without it (a trusted lab network), callers name themselves in
//! `x-camp-user`.

use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::store::Store;

pub const USER_HEADER: &str = "x-camp-user";

#[derive(Clone)]
pub struct Auth {
    store: Arc<dyn Store>,
    required: bool,
}

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random API token (256 bits, hex).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("camp_{}", hex::encode(bytes))
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, required: bool) -> Self {
        Auth { store, required }
    }

    /// The calling user's name.
    pub async fn caller(&self, md: &MetadataMap) -> Result<String, Status> {
        let bearer = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if let Some(token) = bearer {
            return match self.store.user_for_token(&token_sha256(token)).await {
                Ok(Some(user)) => Ok(user),
                Ok(None) => Err(Status::unauthenticated("unknown API token")),
                Err(e) => {
                    tracing::error!("token lookup: {e}");
                    Err(Status::internal("internal error"))
                }
            };
        }
        if self.required {
            return Err(Status::unauthenticated("this coordinator requires an API token (CAMP_TOKEN)"));
        }
        let user = md.get(USER_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or("");
        Ok(if user.is_empty() { "anonymous".to_string() } else { user.to_string() })
    }
}
