//! Connecting to the coordinator, with the caller's identity on every call:
//! the address's scheme decides plaintext or TLS (camp_proto::endpoint), never
//! a fallback; submissions are retried under their request id.

use std::future::Future;
use std::time::Duration;

use camp_proto::endpoint::{self, ClientTls};
use camp_proto::limits::MAX_MESSAGE_BYTES;
use camp_proto::metadata::{self, CallHeaders};
use camp_proto::v1::job_service_client::JobServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::exit::{UnreachableError, UsageError};
use crate::global_opts::GlobalOpts;

pub type JobClient = JobServiceClient<InterceptedService<Channel, CallHeaders>>;

/// How often a submission is tried when the coordinator is unavailable; its
/// request id makes a repeat return the first result instead of a second job.
pub const SUBMIT_TRIES: u32 = 3;
/// The wait before the second try; doubled before each further one.
const SUBMIT_BACKOFF: Duration = Duration::from_millis(250);

/// `x-camp-user` and `authorization: Bearer <token>`, on each request.
pub fn call_headers(user: Option<&str>, token: Option<&str>) -> Result<CallHeaders, UsageError> {
    let mut headers = CallHeaders::default();
    if let Some(user) = user {
        headers = headers.with(metadata::USER, user).map_err(|_| UsageError(format!("invalid --user '{user}': not a header value")))?;
    }
    if let Some(token) = token.filter(|token| !token.is_empty()) {
        headers = headers.bearer(token).map_err(|_| UsageError("invalid --token: not a header value".into()))?;
    }
    Ok(headers)
}

/// `--ca`, `--tls-cert`, `--tls-key`.
pub fn tls_options(opts: &GlobalOpts) -> ClientTls {
    ClientTls { ca: opts.ca.clone(), cert: opts.tls_cert.clone(), key: opts.tls_key.clone() }
}

/// Whether the address speaks TLS (`https://`).
fn is_https(addr: &str) -> bool {
    endpoint::with_scheme(addr).get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// A failed connection as one line: the address, TLS where it was asked for,
/// the causes, and what to try when an https:// address meets a plaintext
/// coordinator (or the other way round).
pub fn unreachable(addr: &str, err: &tonic::transport::Error) -> UnreachableError {
    let detail = endpoint::describe(err);
    if !is_https(addr) {
        return UnreachableError(format!("cannot reach the coordinator at {addr}: {detail}"));
    }
    let lower = detail.to_ascii_lowercase();
    let refused = ["connection refused", "timed out", "no route", "dns error"].iter().any(|text| lower.contains(text));
    let hint = if refused {
        ""
    } else {
        " (the TLS handshake failed: does the coordinator serve https? One without \
          --tls-cert takes an http:// address)"
    };
    UnreachableError(format!("cannot reach the coordinator at {addr} over TLS (https): {detail}{hint}"))
}

/// What to add to the error message of a call to `addr`: a plaintext call
/// that met a TLS listener sees only HTTP/2 protocol errors or a hang-up, so
/// suggest https:// (camp_proto::endpoint::hint, plus the hang-up).
pub fn hint(addr: &str, message: &str) -> &'static str {
    let hint = endpoint::hint(addr, message);
    if hint.is_empty() && !is_https(addr) && message.contains("broken pipe") {
        return " (if the coordinator serves TLS, use an https:// address)";
    }
    hint
}

/// Connects now, so that an unreachable coordinator fails here (exit 6); a bad
/// address or TLS option is a usage error (exit 2).
pub async fn connect(opts: &GlobalOpts) -> anyhow::Result<JobClient> {
    let metadata = call_headers(opts.user_name().as_deref(), opts.token.as_deref())?;
    let endpoint = endpoint::endpoint(&opts.addr, &tls_options(opts)).map_err(|err| UsageError(endpoint::describe(&err)))?;
    let channel = endpoint.connect().await.map_err(|err| unreachable(&opts.addr, &err))?;
    Ok(JobServiceClient::with_interceptor(channel, metadata)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Whether a failed call may be repeated in the hope that it goes through:
/// the coordinator was unavailable or could not be reached.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<UnreachableError>()
            || cause.is::<tonic::transport::Error>()
            || cause.downcast_ref::<Status>().is_some_and(|status| status.code() == Code::Unavailable)
    })
}

/// Runs `call` (connect and submit) up to `SUBMIT_TRIES` times while it fails
/// transiently, waiting a little longer each time. Only for calls whose request
/// id makes a repeat harmless.
pub async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut wait = SUBMIT_BACKOFF;
    let mut tries = 1;
    loop {
        match call().await {
            Err(err) if tries < SUBMIT_TRIES && is_transient(&err) => {
                eprintln!("camp: {what}: {}; trying again ({}/{SUBMIT_TRIES})", crate::exit::one_line_message(&err), tries + 1);
                tokio::time::sleep(wait).await;
                wait *= 2;
                tries += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn metadata_carries_user_and_bearer_token() {
        use tonic::service::Interceptor;
        let mut metadata = call_headers(Some("ada"), Some("s3cret")).unwrap();
        let request = metadata.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get(metadata::USER).unwrap(), "ada");
        assert_eq!(request.metadata().get(metadata::AUTHORIZATION).unwrap(), "Bearer s3cret");

        let mut anonymous = call_headers(None, Some("")).unwrap();
        let request = anonymous.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get(metadata::USER).is_none());
        assert!(request.metadata().get(metadata::AUTHORIZATION).is_none());
    }

    #[test]
    fn unusable_header_values_are_usage_errors() {
        assert!(call_headers(Some("a\nb"), None).is_err());
        assert!(call_headers(None, Some("tok\nen")).is_err());
    }

    #[test]
    fn a_plaintext_call_garbled_or_hung_up_on_suggests_https() {
        let hung_up = "transport error: connection error: stream closed because of a broken pipe";
        let garbled = "h2 protocol error: http2 error: connection error detected: frame with invalid size";
        for message in [hung_up, garbled] {
            assert!(hint("http://coord:50051", message).contains("https://"), "{message}");
            assert!(hint("coord:50051", message).contains("https://"), "{message}");
            assert_eq!(hint("https://coord:50051", message), "", "{message}");
        }
        assert_eq!(hint("http://coord:50051", "job 4 not found"), "");
    }

    #[test]
    fn only_https_addresses_speak_tls() {
        assert!(is_https("https://coord:443"));
        assert!(is_https("HTTPS://coord:443"));
        assert!(!is_https("http://coord:50051"));
        assert!(!is_https("127.0.0.1:50051"), "no scheme is http://");
    }

    fn opts(line: &[&str]) -> GlobalOpts {
        use clap::Parser;
        let cli = crate::args::Cli::try_parse_from(["camp"].iter().chain(line).chain(&["workers"])).unwrap();
        cli.global
    }

    #[tokio::test]
    async fn bad_addresses_and_tls_options_are_usage_errors() {
        let cases: [&[&str]; 4] = [
            &["--addr", "http://127.0.0.1:1", "--ca", "/nonexistent/ca.pem"],
            &["--addr", "https://127.0.0.1:1", "--ca", "/nonexistent/ca.pem"],
            &["--addr", "https://127.0.0.1:1", "--tls-cert", "/x.pem"],
            &["--addr", "ftp://127.0.0.1:1"],
        ];
        for line in cases {
            let Err(err) = connect(&opts(line)).await else { panic!("{line:?} connected") };
            assert_eq!(crate::exit::code_for_error(&err), crate::exit::USAGE, "{line:?}: {err:#}");
        }
        let err = connect(&opts(&["--addr", "http://127.0.0.1:1", "--ca", "/ca.pem"])).await.err().unwrap();
        assert!(crate::exit::one_line_message(&err).contains("need an https:// address"), "{err:#}");
        let err = connect(&opts(&["--addr", "https://127.0.0.1:1", "--ca", "/nonexistent/ca.pem"])).await.err().unwrap();
        let message = crate::exit::one_line_message(&err);
        assert!(message.contains("--ca /nonexistent/ca.pem"), "{message}");
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_is_exit_6_and_names_the_address() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let addr = format!("http://127.0.0.1:{port}");
        let err = connect(&opts(&["--addr", &addr])).await.err().unwrap();
        assert_eq!(crate::exit::code_for_error(&err), crate::exit::UNREACHABLE);
        let message = crate::exit::one_line_message(&err);
        assert!(message.starts_with(&format!("cannot reach the coordinator at {addr}: ")), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(is_transient(&err));
    }

    #[tokio::test]
    async fn submissions_are_retried_while_the_coordinator_is_unavailable() {
        let calls = Cell::new(0);
        let result = with_retries("submitting", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < SUBMIT_TRIES {
                    Err(anyhow::Error::new(Status::unavailable("restarting")))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), SUBMIT_TRIES);

        calls.set(0);
        let result: anyhow::Result<()> = with_retries("submitting", || {
            calls.set(calls.get() + 1);
            async { Err(anyhow::Error::new(Status::unavailable("down"))) }
        })
        .await;
        assert_eq!(crate::exit::code_for_error(&result.unwrap_err()), crate::exit::UNREACHABLE);
        assert_eq!(calls.get(), SUBMIT_TRIES, "gives up after {SUBMIT_TRIES} tries");
    }

    #[tokio::test]
    async fn refusals_are_not_retried() {
        let calls = Cell::new(0);
        let result: anyhow::Result<()> = with_retries("submitting", || {
            calls.set(calls.get() + 1);
            async { Err(anyhow::Error::new(Status::invalid_argument("spec.lr: too big"))) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1);
        assert!(!is_transient(&UsageError("bad".into()).into()));
        assert!(!is_transient(&anyhow::Error::new(Status::failed_precondition("same key, other request"))));
    }
}
