//! How a client (the CLI, a worker) reaches the coordinator: the address's
//! scheme decides, never a fallback. `https://` speaks TLS (rustls) with the
//! CA given (`--ca`) or the system's roots, and presents a client certificate
//! when one is given (mutual TLS); `http://` speaks plaintext and refuses TLS
//! options rather than ignore them. An address without a scheme is `http://`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients ping the coordinator on idle connections so neither side takes them for dead.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// TLS options of a client; all optional.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM CA the coordinator's certificate is checked against (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTls {
    fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("'{addr}' is not a coordinator address: {reason}")]
    Address { addr: String, reason: String },
    #[error("{addr}: TLS options (--ca, --tls-cert, --tls-key) need an https:// address; refusing to send them over plaintext")]
    TlsOverPlaintext { addr: String },
    #[error("--tls-cert and --tls-key go together")]
    HalfIdentity,
    #[error("{flag} {}: {source}", path.display())]
    File { flag: &'static str, path: PathBuf, source: crate::limits::ReadFileError },
    #[error("TLS set-up: {0}")]
    Tls(#[from] tonic::transport::Error),
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, EndpointError> {
    crate::limits::read_small_file(path).map_err(|source| EndpointError::File { flag, path: path.to_path_buf(), source })
}

/// The address with `http://` added when it has no scheme.
pub fn with_scheme(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// An endpoint for `addr` with the TLS its scheme asks for.
pub fn endpoint(addr: &str, tls: &ClientTls) -> Result<Endpoint, EndpointError> {
    let uri = with_scheme(addr);
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| EndpointError::Address { addr: addr.to_string(), reason: e.to_string() })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true);
    let scheme = uri.split("://").next().unwrap_or_default();
    match scheme {
        "http" if tls.any() => Err(EndpointError::TlsOverPlaintext { addr: addr.to_string() }),
        "http" => Ok(endpoint),
        "https" => {
            let mut config = ClientTlsConfig::new();
            config = match &tls.ca {
                Some(ca) => config.ca_certificate(Certificate::from_pem(read("--ca", ca)?)),
                None => config.with_native_roots(),
            };
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => {
                    config = config.identity(Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?));
                }
                (None, None) => {}
                _ => return Err(EndpointError::HalfIdentity),
            }
            Ok(endpoint.tls_config(config)?)
        }
        other => Err(EndpointError::Address { addr: addr.to_string(), reason: format!("unknown scheme '{other}' (http or https)") }),
    }
}

/// What to add to an error met on `addr`: a plaintext client that reached a
/// TLS listener sees only HTTP/2 protocol errors, which name no cause.
pub fn hint(addr: &str, error: &str) -> &'static str {
    let plaintext = with_scheme(addr).starts_with("http://");
    // Which of these a client sees depends on timing: the TLS listener may close
    // before, during or after the client's HTTP/2 preface.
    let garbled = [
        "h2 protocol error",
        "http2 error",
        "frame with invalid size",
        "connection reset",
        "broken pipe",
        "connection closed",
        "transport error",
    ]
    .iter()
    .any(|e| error.contains(e));
    let has = |words: &[&str]| words.iter().any(|w| error.contains(w));
    if plaintext && garbled {
        " (if the coordinator serves TLS, use an https:// address)"
    } else if !plaintext && has(&["InvalidContentType", "corrupt message"]) {
        " (the coordinator did not answer in TLS: if it serves plaintext, use an http:// address)"
    } else if !plaintext && has(&["UnknownIssuer", "invalid peer certificate", "NotValidForName"]) {
        " (the coordinator's certificate is not trusted here: give its CA with --ca, and use the name or address it was made for)"
    } else if !plaintext && has(&["UnknownCA", "BadCertificate", "CertificateRequired", "DecryptError", "fatal alert"]) {
        " (the coordinator refused this client's certificate: is --tls-cert signed by the coordinator's --tls-client-ca?)"
    } else {
        ""
    }
}

/// A connection failure as one line, with its causes (a TLS handshake error is
/// several sources deep in tonic's error).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_decides_and_plaintext_refuses_tls_options() {
        assert!(endpoint("127.0.0.1:50051", &ClientTls::default()).is_ok());
        let with_ca = ClientTls { ca: Some("/nonexistent/ca.pem".into()), ..ClientTls::default() };
        assert!(matches!(endpoint("http://coord:50051", &with_ca), Err(EndpointError::TlsOverPlaintext { .. })));
        assert!(matches!(endpoint("https://coord:50051", &with_ca), Err(EndpointError::File { flag: "--ca", .. })));
        let endless = ClientTls { ca: Some("/dev/zero".into()), ..ClientTls::default() };
        assert!(matches!(endpoint("https://coord:50051", &endless), Err(EndpointError::File { flag: "--ca", .. })));
        let half = ClientTls { cert: Some("/x".into()), ..ClientTls::default() };
        assert!(matches!(endpoint("https://coord:50051", &half), Err(EndpointError::HalfIdentity)));
        assert!(matches!(endpoint("ftp://coord", &ClientTls::default()), Err(EndpointError::Address { .. })));
        assert!(endpoint("https://coord:50051", &ClientTls::default()).is_ok(), "system roots");
        assert!(hint("coord:50051", "h2 protocol error: http2 error").contains("https://"));
        assert!(hint("coord:50051", "transport error: connection error: stream closed because of a broken pipe").contains("https://"));
        assert!(
            hint("coord:50051", "operation was canceled: transport error: operation was canceled: connection closed").contains("https://")
        );
        assert_eq!(hint("coord:50051", "unknown API token"), "");
        assert_eq!(hint("https://coord:50051", "h2 protocol error: http2 error"), "");
        assert!(hint("https://coord:50051", "received fatal alert: UnknownCA").contains("--tls-client-ca"));
        assert!(hint("https://coord:50051", "received corrupt message of type InvalidContentType").contains("http://"));
        assert!(hint("https://coord:50051", "invalid peer certificate: UnknownIssuer").contains("--ca"));
    }
}
