//! Credentials of a test cluster: a token file and, with TLS, a certificate authority made by the
//! test (rcgen) that signs one certificate per process for its loopback address.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use vbs_wire::security::Security;

/// What every process of a cluster is given, and what a client needs to talk to it.
pub struct Credentials {
    token: Option<PathBuf>,
    ca: Option<TestCa>,
}

impl Credentials {
    /// In `dir`: a random token file when `token`, a CA when `tls`; neither for an open cluster
    /// in plaintext.
    pub fn create(dir: &Path, token: bool, tls: bool) -> anyhow::Result<Credentials> {
        let token = if token {
            let path = dir.join("token");
            let secret: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            write_token_file(&path, &secret)?;
            Some(path)
        } else {
            None
        };
        let ca = if tls {
            Some(TestCa::new(&dir.join("tls"), "vbs test CA")?)
        } else {
            None
        };
        Ok(Credentials { token, ca })
    }

    pub fn token_path(&self) -> Option<&Path> {
        self.token.as_deref()
    }

    /// `https` with TLS on, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.ca.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The flags of a server process `name` that others reach at `ip` (a certificate is made for
    /// it on first use).
    pub fn server_args(&self, name: &str, ip: IpAddr) -> anyhow::Result<Vec<String>> {
        let mut args = Vec::new();
        if let Some(token) = &self.token {
            args.extend(["--token-file".to_string(), token.display().to_string()]);
        }
        if let Some(ca) = &self.ca {
            let (cert, key) = ca.issue(name, ip)?;
            args.extend([
                "--tls-ca".to_string(),
                ca.ca_path().display().to_string(),
                "--tls-cert".to_string(),
                cert.display().to_string(),
                "--tls-key".to_string(),
                key.display().to_string(),
            ]);
        }
        Ok(args)
    }

    /// The global flags of the `vbs` command.
    pub fn client_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(token) = &self.token {
            args.extend(["--token-file".to_string(), token.display().to_string()]);
        }
        if let Some(ca) = &self.ca {
            args.extend(["--tls-ca".to_string(), ca.ca_path().display().to_string()]);
        }
        args
    }

    /// A client's settings (the token, the CA) for the client library.
    pub fn security(&self) -> anyhow::Result<Security> {
        let ca = self.ca.as_ref().map(TestCa::ca_path);
        Security::load(self.token.as_deref(), ca.as_deref(), None, None)
            .context("loading the test cluster's credentials")
    }
}

/// Writes a token file readable by its owner only.
pub fn write_token_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))
}

/// A certificate authority made for one test, with the PEM files it writes in its directory.
pub struct TestCa {
    dir: PathBuf,
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA; its certificate is written to `DIR/ca.pem`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("signing the CA")?;
        let ca = TestCa {
            dir: dir.to_path_buf(),
            cert,
            key,
        };
        std::fs::write(ca.ca_path(), ca.cert.pem()).context("writing the CA certificate")?;
        Ok(ca)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name` at `ip` (and `localhost`), signed by this CA: the paths of the
    /// certificate and of its key, written once and reused after.
    pub fn issue(&self, name: &str, ip: IpAddr) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert_path = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}.key"));
        if cert_path.exists() && key_path.exists() {
            return Ok((cert_path, key_path));
        }
        let key = KeyPair::generate().context("generating a key")?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params.subject_alt_names.push(SanType::IpAddress(ip));
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("signing the certificate of {name}"))?;
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .and_then(|mut file| file.write_all(key.serialize_pem().as_bytes()))
            .with_context(|| format!("writing {}", key_path.display()))?;
        Ok((cert_path, key_path))
    }
}
