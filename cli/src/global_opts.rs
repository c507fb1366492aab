//! The options every command takes (coordinator address, user, token, `--json`,
//! TLS files): flattened into the command line by `args`, read by `client` and
//! the command handlers.

use std::path::PathBuf;

use clap::Args;

/// Options every command takes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Coordinator address.
    #[arg(long, global = true, env = "CAMP_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// User name sent with every call (metadata x-camp-user) [default: $USER].
    #[arg(long, global = true, env = "CAMP_USER")]
    pub user: Option<String>,
    /// API token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "CAMP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM CA to check an https:// coordinator's certificate against [default: the system's roots].
    #[arg(long, global = true, env = "CAMP_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-key; https:// only).
    #[arg(long, global = true, env = "CAMP_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "CAMP_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl GlobalOpts {
    /// `--user`, else `$USER`; `None` when neither is set.
    pub fn user_name(&self) -> Option<String> {
        self.user.clone().or_else(|| std::env::var("USER").ok()).filter(|user| !user.is_empty())
    }
}
