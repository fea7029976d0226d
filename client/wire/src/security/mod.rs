//! Cluster security: who may talk to the cluster (a shared secret, the token) and how traffic is
//! protected on the wire (optional TLS). Every process builds one [`Security`] from its flags
//! and hands it to whatever opens or accepts connections: the manager HTTP client
//! ([`crate::managers`]), the data-plane pool ([`crate::conn`]), the servers.
//!
//! - [`token`]: the token file, bearer checks, the data-plane handshake's proofs.
//! - [`tls`]: certificates and keys from PEM files, TLS connect and accept.
//! - [`http`]: the 401 answer and a TLS listener for axum.
//!
//! `docs/operations.md` ("Security") says what is and is not protected.

pub mod http;
pub mod tls;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::header::{HeaderMap, AUTHORIZATION};

use crate::metrics::Families;

pub use tls::Tls;
pub use token::{BearerError, Token};

/// Why the security settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "token file {} may be read or written by group or others (mode {mode:03o}); \
         chmod 600 {}",
        path.display(),
        path.display()
    )]
    TokenPermissions { path: PathBuf, mode: u32 },
    #[error("token file {} is unusable: {reason}", path.display())]
    TokenContent { path: PathBuf, reason: &'static str },
    #[error("{what} {}: {source}", path.display())]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {}: {reason}", path.display())]
    TlsPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS: {0}")]
    TlsConfig(String),
    #[error("{0}")]
    Flags(&'static str),
}

/// The security settings of one process: the cluster token, if any, and TLS, if on. The
/// default is an open cluster in plaintext.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub token: Option<Arc<Token>>,
    pub tls: Option<Arc<Tls>>,
}

impl Security {
    /// Settings from flag values: `token_file` (the cluster secret), `ca` (turns TLS on for
    /// every connection this process opens), and `cert` + `key` (what a server presents; with
    /// them it serves TLS only).
    pub fn load(
        token_file: Option<&Path>,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Security, SecurityError> {
        let token = token_file.map(Token::load).transpose()?.map(Arc::new);
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(SecurityError::Flags("--tls-cert and --tls-key go together")),
        };
        let tls = match (ca, identity) {
            (Some(ca), identity) => Some(Arc::new(Tls::load(ca, identity)?)),
            (None, Some(_)) => {
                return Err(SecurityError::Flags(
                    "--tls-cert needs --tls-ca: the CA this process checks its peers against",
                ))
            }
            (None, None) => None,
        };
        Ok(Security { token, tls })
    }

    /// A server's settings: TLS, when on, needs its certificate and key.
    pub fn load_server(
        token_file: Option<&Path>,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Security, SecurityError> {
        if ca.is_some() && cert.is_none() {
            return Err(SecurityError::Flags(
                "--tls-ca on a server needs --tls-cert and --tls-key: it serves TLS to its peers",
            ));
        }
        Security::load(token_file, ca, cert, key)
    }

    /// `https` when TLS is on, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The URL of `path` on the manager (or metrics endpoint) at `addr` (`HOST:PORT`).
    pub fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme())
    }

    /// Sets an HTTP client up to send the token on every request and, with TLS on, to speak
    /// HTTPS only, verifying servers against the cluster's CA.
    pub fn http_client(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if let Some(token) = &self.token {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, token.bearer_header());
            builder = builder.default_headers(headers);
        }
        if let Some(tls) = &self.tls {
            builder = builder
                .tls_backend_preconfigured(tls.client_config().clone())
                .https_only(true);
        }
        builder
    }

    /// Warnings a server logs at start when part of the cluster is left unprotected.
    pub fn server_warnings(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self.token.is_none() {
            warnings.push(
                "no --token-file: authentication is off and the cluster is open to anyone who \
                 can reach this process",
            );
        }
        if self.tls.is_none() {
            warnings.push("no --tls-ca: traffic to and from this process is not encrypted");
        }
        warnings
    }
}

/// The security flags of `vbs-manager` and `vbs-storage`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerArgs {
    /// File holding the cluster token, the secret every process of the cluster shares (one
    /// line, mode 600). Without it authentication is off and the cluster is open.
    #[arg(long, env = "VBS_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signs every certificate of the cluster. Turns TLS on: this
    /// process then serves TLS only, and checks every peer it connects to against this CA.
    #[arg(long, env = "VBS_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate (chain) this process presents; it must name the host others dial.
    #[arg(long, env = "VBS_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "VBS_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
}

impl ServerArgs {
    /// Reads the files the flags name.
    pub fn load(&self) -> Result<Security, SecurityError> {
        Security::load_server(
            self.token_file.as_deref(),
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )
    }
}

/// Where a request or connection was refused for its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// The manager HTTP API.
    Api,
    /// Raft RPCs between managers.
    Raft,
    /// The data-plane handshake.
    Data,
    /// A storage node's `/metrics`.
    Metrics,
    /// A TLS handshake that failed (a plaintext client, another CA).
    Tls,
}

impl Surface {
    pub const ALL: [Surface; 5] = [
        Surface::Api,
        Surface::Raft,
        Surface::Data,
        Surface::Metrics,
        Surface::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Api => "api",
            Surface::Raft => "raft",
            Surface::Data => "data",
            Surface::Metrics => "metrics",
            Surface::Tls => "tls",
        }
    }
}

/// Counts of refused requests and connections, per surface (`vbs_auth_rejected_total`).
#[derive(Debug, Default)]
pub struct Rejections {
    counts: [AtomicU64; Surface::ALL.len()],
}

impl Rejections {
    pub fn count(&self, surface: Surface) {
        self.counts[surface as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, surface: Surface) -> u64 {
        self.counts[surface as usize].load(Ordering::Relaxed)
    }

    /// Adds the `vbs_auth_rejected_total` family for `surfaces`.
    pub fn write_metrics(&self, out: &mut Families<'_>, surfaces: &[Surface]) -> std::fmt::Result {
        out.counters(
            "vbs_auth_rejected_total",
            "Requests and connections refused: no or a wrong token, or a failed TLS handshake.",
            surfaces
                .iter()
                .map(|s| ([("surface", s.as_str())], self.get(*s))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_tls_flags_are_refused() {
        let p = Path::new("/nonexistent");
        let error = Security::load(None, Some(p), Some(p), None).unwrap_err();
        assert!(error.to_string().contains("go together"), "{error}");
        let error = Security::load(None, None, Some(p), Some(p)).unwrap_err();
        assert!(error.to_string().contains("needs --tls-ca"), "{error}");
        let error = Security::load_server(None, Some(p), None, None).unwrap_err();
        assert!(error.to_string().contains("--tls-cert"), "{error}");
        let open = Security::load(None, None, None, None).unwrap();
        assert_eq!(open.scheme(), "http");
        assert_eq!(open.server_warnings().len(), 2);
    }

    #[test]
    fn rejections_render_per_surface() {
        let rejections = Rejections::default();
        rejections.count(Surface::Raft);
        rejections.count(Surface::Raft);
        let rejections = Arc::new(rejections);
        let out = crate::metrics::render(move |out| {
            rejections.write_metrics(out, &[Surface::Api, Surface::Raft])
        });
        assert!(
            out.contains("# TYPE vbs_auth_rejected_total counter"),
            "{out}"
        );
        assert!(
            out.contains("vbs_auth_rejected_total{surface=\"api\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("vbs_auth_rejected_total{surface=\"raft\"} 2"),
            "{out}"
        );
        assert!(!out.contains("\"tls\""), "{out}");
    }
}
