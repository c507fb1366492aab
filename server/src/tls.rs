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
#[error("{flag} {}: {source}", path.display())]
pub struct TlsError {
    flag: &'static str,
    path: PathBuf,
    source: camp_proto::limits::ReadFileError,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    camp_proto::limits::read_small_file(path).map_err(|source| TlsError { flag, path: path.to_path_buf(), source })
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
}
