//! The cluster's shared secret: loaded from a token file, compared in constant time, and used to
//! key the data-plane handshake's proofs. Its bytes never leave this module except as an HTTP
//! header value marked sensitive (so it is never printed) or inside an HMAC.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use reqwest::header::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::SecurityError;
use crate::proto::{PeerKind, AUTH_NONCE_BYTES, AUTH_PROOF_BYTES};

type HmacSha256 = Hmac<Sha256>;

/// What a proof on the data plane is computed over starts with one of these, so a client's
/// proof can never be replayed as a server's, nor a proof of another protocol as either.
const CLIENT_PROOF_LABEL: &[u8] = b"vbs-data-v1 client";
const SERVER_PROOF_LABEL: &[u8] = b"vbs-data-v1 server";

/// Random bytes in a token that `vbs up` generates (written as hex, twice as many characters).
const GENERATED_TOKEN_BYTES: usize = 32;

const _: () = assert!(AUTH_PROOF_BYTES == 32, "a proof is one HMAC-SHA256 output");

/// The cluster's shared secret.
pub struct Token {
    secret: Vec<u8>,
    /// SHA-256 of the secret: bearer tokens are compared by digest, so the comparison takes the
    /// same time whatever the candidate's length.
    digest: [u8; 32],
    /// Where it was read from, for messages (never the secret itself).
    source: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(from {})", self.source)
    }
}

/// Why a bearer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("this cluster requires authentication: send the cluster token as `Authorization: Bearer TOKEN` (vbs: --token-file)")]
    Missing,
    #[error("the bearer token does not match this cluster's token")]
    Wrong,
}

impl Token {
    /// Reads a token file: one line of printable ASCII (a trailing newline is dropped), not
    /// readable or writable by group or others.
    pub fn load(path: &Path) -> Result<Token, SecurityError> {
        let io = |source| SecurityError::TokenFile {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(io)?.mode();
        if mode & 0o077 != 0 {
            return Err(SecurityError::TokenPermissions {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Token::from_bytes(bytes, path.display().to_string()).map_err(|reason| {
            SecurityError::TokenContent {
                path: path.to_path_buf(),
                reason,
            }
        })
    }

    fn from_bytes(mut secret: Vec<u8>, source: String) -> Result<Token, &'static str> {
        if secret.last() == Some(&b'\n') {
            secret.pop();
            if secret.last() == Some(&b'\r') {
                secret.pop();
            }
        }
        if secret.is_empty() {
            return Err("it is empty");
        }
        // Printable ASCII without spaces: what an HTTP bearer token may hold.
        if !secret.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err("it holds characters other than printable ASCII (no spaces, one line)");
        }
        let digest = Sha256::digest(&secret).into();
        Ok(Token {
            secret,
            digest,
            source,
        })
    }

    /// Writes a new random token to `path` (which must not exist), readable by its owner only,
    /// durably, and returns it.
    pub fn create_file(path: &Path) -> Result<Token, SecurityError> {
        let io = |source| SecurityError::TokenFile {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
        rand::fill(&mut bytes);
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Token::load(path)
    }

    /// The `Authorization` header value that carries this token, marked sensitive so that it
    /// is never printed.
    pub fn bearer_header(&self) -> HeaderValue {
        let mut value = HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &self.secret].concat())
            .expect("a token is printable ASCII, checked when it was loaded");
        value.set_sensitive(true);
        value
    }

    /// Checks an `Authorization` header against this token, in constant time.
    pub fn check_bearer(&self, header: Option<&HeaderValue>) -> Result<(), BearerError> {
        let header = header.ok_or(BearerError::Missing)?.as_bytes();
        let candidate = match header.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
            _ => return Err(BearerError::Missing),
        };
        let candidate: [u8; 32] = Sha256::digest(candidate).into();
        if bool::from(candidate.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(BearerError::Wrong)
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }

    /// What the connecting side of a data-plane connection proves: that it knows the secret,
    /// for this server nonce (fresh per connection, so a recorded proof is worthless), its own
    /// nonce, and the kind and name it gave in its hello.
    pub fn client_proof(
        &self,
        server_nonce: &[u8; AUTH_NONCE_BYTES],
        client_nonce: &[u8; AUTH_NONCE_BYTES],
        peer: PeerKind,
        name: &str,
    ) -> [u8; AUTH_PROOF_BYTES] {
        self.client_transcript(server_nonce, client_nonce, peer, name)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a client's proof in constant time.
    pub fn verify_client_proof(
        &self,
        server_nonce: &[u8; AUTH_NONCE_BYTES],
        client_nonce: &[u8; AUTH_NONCE_BYTES],
        peer: PeerKind,
        name: &str,
        proof: &[u8; AUTH_PROOF_BYTES],
    ) -> bool {
        self.client_transcript(server_nonce, client_nonce, peer, name)
            .verify_slice(proof)
            .is_ok()
    }

    fn client_transcript(
        &self,
        server_nonce: &[u8; AUTH_NONCE_BYTES],
        client_nonce: &[u8; AUTH_NONCE_BYTES],
        peer: PeerKind,
        name: &str,
    ) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(CLIENT_PROOF_LABEL);
        mac.update(server_nonce);
        mac.update(client_nonce);
        mac.update(&[peer as u8]);
        update_name(&mut mac, name);
        mac
    }

    /// What the storage node proves back: the nonces in the other order, and its node id.
    pub fn server_proof(
        &self,
        client_nonce: &[u8; AUTH_NONCE_BYTES],
        server_nonce: &[u8; AUTH_NONCE_BYTES],
        node: &str,
    ) -> [u8; AUTH_PROOF_BYTES] {
        self.server_transcript(client_nonce, server_nonce, node)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a storage node's proof in constant time.
    pub fn verify_server_proof(
        &self,
        client_nonce: &[u8; AUTH_NONCE_BYTES],
        server_nonce: &[u8; AUTH_NONCE_BYTES],
        node: &str,
        proof: &[u8; AUTH_PROOF_BYTES],
    ) -> bool {
        self.server_transcript(client_nonce, server_nonce, node)
            .verify_slice(proof)
            .is_ok()
    }

    fn server_transcript(
        &self,
        client_nonce: &[u8; AUTH_NONCE_BYTES],
        server_nonce: &[u8; AUTH_NONCE_BYTES],
        node: &str,
    ) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(SERVER_PROOF_LABEL);
        mac.update(client_nonce);
        mac.update(server_nonce);
        update_name(&mut mac, node);
        mac
    }
}

/// A name, length first, so that no two (name, next field) pairs give the same bytes.
fn update_name(mac: &mut HmacSha256, name: &str) {
    mac.update(&(name.len() as u64).to_le_bytes());
    mac.update(name.as_bytes());
}

/// A fresh random nonce.
pub fn nonce() -> [u8; AUTH_NONCE_BYTES] {
    let mut nonce = [0u8; AUTH_NONCE_BYTES];
    rand::fill(&mut nonce);
    nonce
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    impl Token {
        fn from_secret(secret: &str) -> Result<Token, &'static str> {
            Token::from_bytes(secret.as_bytes().to_vec(), "memory".into())
        }
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_token_file_is_private_non_empty_and_loses_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let good = Token::load(&write(dir.path(), "good", "s3cret-token\n", 0o600)).unwrap();
        assert!(good
            .check_bearer(Some(&HeaderValue::from_static("Bearer s3cret-token")))
            .is_ok());
        assert!(good
            .check_bearer(Some(&HeaderValue::from_static("bearer s3cret-token")))
            .is_ok());

        let open = Token::load(&write(dir.path(), "open", "s3cret\n", 0o644)).unwrap_err();
        assert!(
            matches!(open, SecurityError::TokenPermissions { mode: 0o644, .. }),
            "{open}"
        );
        assert!(open.to_string().contains("chmod 600"), "{open}");
        let group = Token::load(&write(dir.path(), "group", "s3cret\n", 0o640)).unwrap_err();
        assert!(
            matches!(group, SecurityError::TokenPermissions { .. }),
            "{group}"
        );

        let empty = Token::load(&write(dir.path(), "empty", "\n", 0o600)).unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        let spaced = Token::load(&write(dir.path(), "spaced", "two words\n", 0o600)).unwrap_err();
        assert!(spaced.to_string().contains("printable"), "{spaced}");
        let missing = Token::load(&dir.path().join("missing")).unwrap_err();
        assert!(
            matches!(missing, SecurityError::TokenFile { .. }),
            "{missing}"
        );
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let token = Token::from_secret("abc123").unwrap();
        let check =
            |value: &'static str| token.check_bearer(Some(&HeaderValue::from_static(value)));
        assert_eq!(token.check_bearer(None), Err(BearerError::Missing));
        assert_eq!(check("Basic abc123"), Err(BearerError::Missing));
        assert_eq!(check("Bearer abc12"), Err(BearerError::Wrong));
        assert_eq!(check("Bearer abc1234"), Err(BearerError::Wrong));
        assert_eq!(check("Bearer ABC123"), Err(BearerError::Wrong));
        assert_eq!(check("Bearer abc123"), Ok(()));
        assert_eq!(token.check_bearer(Some(&token.bearer_header())), Ok(()));
        assert!(token.bearer_header().is_sensitive());
        assert!(!format!("{token:?}").contains("abc123"));
    }

    #[test]
    fn created_token_files_are_private_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = Token::create_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Token::load(&path).unwrap();
        assert_eq!(token.digest, again.digest);
        assert_eq!(token.secret.len(), 2 * GENERATED_TOKEN_BYTES);
        assert!(matches!(
            Token::create_file(&path),
            Err(SecurityError::TokenFile { .. })
        ));
    }

    #[test]
    fn proofs_bind_the_secret_both_nonces_and_the_names() {
        let token = Token::from_secret("secret").unwrap();
        let other = Token::from_secret("secreT").unwrap();
        let (server, client) = (nonce(), nonce());
        assert_ne!(server, client);
        let proof = token.client_proof(&server, &client, PeerKind::Client, "c1");
        assert!(token.verify_client_proof(&server, &client, PeerKind::Client, "c1", &proof));
        assert!(!other.verify_client_proof(&server, &client, PeerKind::Client, "c1", &proof));
        assert!(!token.verify_client_proof(&client, &server, PeerKind::Client, "c1", &proof));
        assert!(!token.verify_client_proof(&nonce(), &client, PeerKind::Client, "c1", &proof));
        assert!(!token.verify_client_proof(&server, &client, PeerKind::Node, "c1", &proof));
        assert!(!token.verify_client_proof(&server, &client, PeerKind::Client, "c2", &proof));

        let answer = token.server_proof(&client, &server, "n1");
        assert!(token.verify_server_proof(&client, &server, "n1", &answer));
        assert!(!token.verify_server_proof(&client, &server, "n2", &answer));
        assert!(!other.verify_server_proof(&client, &server, "n1", &answer));
        // A client's proof is not a server's, even over the same bytes.
        let reflected = token.server_proof(&server, &client, "c1");
        assert!(!token.verify_client_proof(&server, &client, PeerKind::Client, "c1", &reflected));
    }
}
