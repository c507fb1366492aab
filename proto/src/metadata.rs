//! The metadata a call carries besides its message: who is calling. One list
//! of names for every client and the coordinator, and one interceptor that
//! adds them to each call.
//!
//! - `authorization: Bearer TOKEN`: an API token (user, admin or worker credential);
//! - `x-camp-user: NAME`: the caller's self-declared name, on a coordinator without --require-auth;
//! - `x-camp-session: SECRET`: a registered worker's session, as `Register` returned it.

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

pub const AUTHORIZATION: &str = "authorization";
pub const USER: &str = "x-camp-user";
pub const SESSION: &str = "x-camp-session";

/// A value that cannot travel as metadata (a newline, a non-ASCII character).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: not usable as a header value (ASCII without control characters)")]
pub struct BadValue {
    pub key: &'static str,
}

/// Metadata added to every call of a client.
#[derive(Debug, Clone, Default)]
pub struct CallHeaders(Vec<(&'static str, AsciiMetadataValue)>);

impl CallHeaders {
    pub fn with(mut self, key: &'static str, value: &str) -> Result<Self, BadValue> {
        self.0.push((key, value.parse().map_err(|_| BadValue { key })?));
        Ok(self)
    }

    /// `authorization: Bearer TOKEN`.
    pub fn bearer(self, token: &str) -> Result<Self, BadValue> {
        self.with(AUTHORIZATION, &format!("Bearer {token}"))
    }
}

impl Interceptor for CallHeaders {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        for (key, value) in &self.0 {
            req.metadata_mut().insert(*key, value.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_carries_the_headers() {
        let mut headers = CallHeaders::default().bearer("s3cret").unwrap().with(USER, "ada").unwrap();
        let req = headers.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get(AUTHORIZATION).unwrap(), "Bearer s3cret");
        assert_eq!(req.metadata().get(USER).unwrap(), "ada");
        assert_eq!(CallHeaders::default().with(SESSION, "a\nb").unwrap_err(), BadValue { key: SESSION });
    }
}
