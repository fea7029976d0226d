//! TLS settings from PEM files: the cluster's CA (which every connecting side verifies the other
//! end against) and, for servers, their own certificate chain and key.
//!
//! Clients check the server's certificate against the CA and the host of the address they dial
//! (an IP address or a DNS name, which the certificate must name). Servers do not ask for client
//! certificates: who may use the cluster is the token's business (`docs/operations.md`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use super::SecurityError;

/// A process's TLS configuration.
pub struct Tls {
    client: Arc<rustls::ClientConfig>,
    /// Present when the process serves TLS (it was given a certificate and key).
    server: Option<Arc<rustls::ServerConfig>>,
    ca: PathBuf,
    cert: Option<PathBuf>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .finish()
    }
}

/// One crypto provider for every TLS config, named rather than taken from the process default
/// (which a dependency could set, or leave ambiguous).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Tls {
    /// Loads the CA bundle `ca` and, for a server, its certificate chain `cert` and private
    /// key `key` (all PEM).
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Tls, SecurityError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca, "--tls-ca")? {
            roots.add(cert).map_err(|e| SecurityError::TlsPem {
                what: "--tls-ca",
                path: ca.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityError::TlsConfig(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = match identity {
            None => None,
            Some((cert, key)) => {
                let chain = certificates(cert, "--tls-cert")?;
                let key = private_key(key)?;
                let config = rustls::ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| SecurityError::TlsConfig(e.to_string()))?
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .map_err(|e| {
                        SecurityError::TlsConfig(format!(
                            "--tls-cert {} with --tls-key: {e}",
                            cert.display()
                        ))
                    })?;
                Some(Arc::new(config))
            }
        };
        Ok(Tls {
            client: Arc::new(client),
            server,
            ca: ca.to_path_buf(),
            cert: identity.map(|(cert, _)| cert.to_path_buf()),
        })
    }

    /// The client configuration (for HTTP clients that take one by value).
    pub fn client_config(&self) -> &rustls::ClientConfig {
        &self.client
    }

    /// Opens TLS over `tcp` to `addr` (`HOST:PORT`), verifying the server's certificate.
    pub async fn connect(
        &self,
        addr: &str,
        tcp: TcpStream,
    ) -> io::Result<client::TlsStream<TcpStream>> {
        let name = server_name(addr)?;
        TlsConnector::from(self.client.clone())
            .connect(name, tcp)
            .await
    }

    /// Whether this process serves TLS.
    pub fn serves(&self) -> bool {
        self.server.is_some()
    }

    /// Accepts TLS on an incoming connection. Fails at once if this process has no certificate.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<server::TlsStream<TcpStream>> {
        let config = self.server.clone().ok_or_else(|| {
            io::Error::other("this process has no TLS certificate (--tls-cert, --tls-key)")
        })?;
        TlsAcceptor::from(config).accept(tcp).await
    }
}

/// The name a server's certificate must carry: the host of `HOST:PORT` (an IP address or a DNS
/// name; IPv6 in brackets).
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name TLS can verify: {e}"),
        )
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::TlsFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let pem = read(path, what)?;
    let bad = |reason: String| SecurityError::TlsPem {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let pem = read(path, "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| SecurityError::TlsPem {
        what: "--tls-key",
        path: path.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() {
        assert!(matches!(
            server_name("127.0.0.1:7001").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7001").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("node1.example:7100").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Tls::load(&dir.path().join("ca.pem"), None).unwrap_err();
        assert!(missing.to_string().contains("ca.pem"), "{missing}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = Tls::load(&empty, None).unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
