//! TLS for the coordinator's listener (rustls, through tonic). With a client
//! CA, clients may present a certificate signed by it; the auth layer then
//! requires one on every `WorkerService` call (mutual TLS for workers), while
//! users at the CLI connect with the server's certificate alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain the coordinator presents.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA that signs the workers' client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: {source}", path.display())]
    Read { flag: &'static str, path: PathBuf, source: camp_proto::limits::ReadFileError },
    #[error("{flag} {}: {reason}", path.display())]
    Pem { flag: &'static str, path: PathBuf, reason: String },
    #[error("--tls-cert and --tls-key: {0}")]
    Config(rustls::Error),
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    camp_proto::limits::read_small_file(path).map_err(|source| TlsError::Read { flag, path: path.to_path_buf(), source })
}

impl TlsFiles {
    /// The listener's TLS settings (the PEM files are read now; tonic parses them when it serves).
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let identity = Identity::from_pem(read("--tls-cert", &self.cert)?, read("--tls-key", &self.key)?);
        let mut config = ServerTlsConfig::new().identity(identity).timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?)).client_auth_optional(true);
        }
        Ok(config)
    }

    /// The same certificate for the dashboard's HTTPS listener (browsers
    /// present no client certificate there: they log in with a token).
    pub fn dashboard_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pem = |flag: &'static str, path: &Path, reason: String| TlsError::Pem { flag, path: path.to_path_buf(), reason };
        let cert_pem = read("--tls-cert", &self.cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("--tls-cert", &self.cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem("--tls-cert", &self.cert, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read("--tls-key", &self.key)?).map_err(|e| pem("--tls-key", &self.key, e.to_string()))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}
