//! Who a dashboard request comes from. A person enters their API token once
//! (`POST /api/session`); it is kept in a cookie the page's script cannot read
//! (HttpOnly), that other sites' pages do not send (SameSite=Strict), over
//! HTTPS only when the dashboard is (Secure). Every request is then identified
//! by the same `Authenticator` as a gRPC call with that token. Without
//! --require-auth callers name themselves, as `x-camp-user` does on gRPC: the
//! name is kept the same way, and a request with none is "anonymous".
//!
//! Writes (log in, log out, cancel) also need the header `x-camp-csrf`, which
//! a form or an image on another site cannot send.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::{WebError, WebResult};
use super::Dashboard;
use crate::auth::{User, USER_HEADER};

/// The cookie that holds the API token.
const TOKEN_COOKIE: &str = "camp_token";
/// The cookie that holds a self-declared name (a coordinator without --require-auth).
const USER_COOKIE: &str = "camp_user";
/// The header every write needs.
pub const CSRF_HEADER: &str = "x-camp-csrf";
/// Longest token or name a login may carry.
const MAX_CREDENTIAL_BYTES: usize = 512;

pub fn routes() -> Router<Arc<Dashboard>> {
    Router::new().route("/api/session", get(whoami).post(log_in).delete(log_out))
}

/// The caller of a dashboard request, identified once per request.
pub struct Caller(pub User);

impl FromRequestParts<Arc<Dashboard>> for Caller {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, dashboard: &Arc<Dashboard>) -> WebResult<Caller> {
        let headers = credential_headers(&parts.headers);
        Ok(Caller(dashboard.auth.user(&headers).await?))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The request's cookies as the headers a gRPC call would carry.
fn credential_headers(request: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = cookie(request, TOKEN_COOKIE).and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        headers.insert(AUTHORIZATION, value);
    } else if let Some(value) = cookie(request, USER_COOKIE).and_then(|u| HeaderValue::from_str(u).ok()) {
        headers.insert(USER_HEADER, value);
    }
    headers
}

fn session_json(user: &User, auth_required: bool) -> Json<serde_json::Value> {
    Json(json!({ "user": user.name, "admin": user.admin, "auth_required": auth_required }))
}

async fn whoami(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller) -> impl IntoResponse {
    session_json(&user, dashboard.auth.requires_auth())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogIn {
    token: Option<String>,
    user: Option<String>,
}

fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u32>) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        text.push_str("; Secure");
    }
    if let Some(age) = max_age {
        text.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&text).expect("checked cookie text")
}

/// A token or name fit to be a cookie value (and an HTTP header).
fn cookie_safe(field: &'static str, value: &str) -> WebResult<String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(WebError::invalid(field, "empty"));
    }
    if value.len() > MAX_CREDENTIAL_BYTES || !value.bytes().all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b)) {
        return Err(WebError::invalid(field, "not a camp credential (printable ASCII, no ; , \" \\, at most 512 bytes)"));
    }
    Ok(value.to_string())
}

async fn log_in(State(dashboard): State<Arc<Dashboard>>, body: Json<LogIn>) -> WebResult<Response> {
    let Json(LogIn { token, user }) = body;
    let auth_required = dashboard.auth.requires_auth();
    let (cookie_name, value, headers) = match (token, user) {
        (Some(token), None) => {
            let token = cookie_safe("token", &token)?;
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).expect("checked token"));
            (TOKEN_COOKIE, token, headers)
        }
        (None, Some(_)) if auth_required => {
            return Err(WebError::invalid("user", "this coordinator requires an API token: give token, not user"))
        }
        (None, Some(name)) => {
            let name = cookie_safe("user", &name)?;
            let mut headers = HeaderMap::new();
            headers.insert(USER_HEADER, HeaderValue::from_str(&name).expect("checked name"));
            (USER_COOKIE, name, headers)
        }
        _ => return Err(WebError::invalid("token", "give a token (or, without --require-auth, a user name)")),
    };
    let user = dashboard.auth.user(&headers).await?;
    let other = if cookie_name == TOKEN_COOKIE { USER_COOKIE } else { TOKEN_COOKIE };
    let mut response = session_json(&user, auth_required).into_response();
    response.headers_mut().append(SET_COOKIE, set_cookie(cookie_name, &value, dashboard.secure, None));
    response.headers_mut().append(SET_COOKIE, set_cookie(other, "", dashboard.secure, Some(0)));
    tracing::info!(user = %user.name, "dashboard log-in");
    Ok(response)
}

async fn log_out(State(dashboard): State<Arc<Dashboard>>) -> Response {
    let mut response = Json(json!({ "logged_out": true })).into_response();
    for name in [TOKEN_COOKIE, USER_COOKIE] {
        response.headers_mut().append(SET_COOKIE, set_cookie(name, "", dashboard.secure, Some(0)));
    }
    response
}

/// Refuses a write (anything but GET and HEAD) without `x-camp-csrf`.
pub async fn require_csrf_header(request: Request, next: Next) -> Response {
    let reads = [Method::GET, Method::HEAD];
    if !reads.contains(request.method()) && !request.headers().contains_key(CSRF_HEADER) {
        return WebError::Forbidden("a write needs the header x-camp-csrf (the dashboard's pages send it)").into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_name_and_become_credentials() {
        let mut request = HeaderMap::new();
        request.insert(COOKIE, HeaderValue::from_static("a=1; camp_token=camp_abc; b=2"));
        assert_eq!(cookie(&request, TOKEN_COOKIE), Some("camp_abc"));
        assert_eq!(credential_headers(&request).get(AUTHORIZATION).unwrap(), "Bearer camp_abc");
        let mut named = HeaderMap::new();
        named.insert(COOKIE, HeaderValue::from_static("camp_user=ada"));
        assert_eq!(credential_headers(&named).get(USER_HEADER).unwrap(), "ada");
        assert!(credential_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn a_credential_that_cannot_be_a_cookie_is_refused() {
        assert_eq!(cookie_safe("token", " camp_x ").unwrap(), "camp_x");
        for bad in ["", "a;b", "a b", "é", &"x".repeat(513)] {
            assert!(cookie_safe("token", bad).is_err(), "{bad}");
        }
    }
}
