//! Authentication: Basic credentials from a users file, exchanged at
//! handshake for a Bearer token that every later call carries.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// How long a token lives after its last use.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// A stored password.
#[derive(Debug, Clone)]
enum Password {
    /// `sha256:<hex>` in the users file.
    Sha256([u8; 32]),
    /// `plain:<text>` in the users file (for tests and local use).
    Plain(String),
}

/// Users and issued tokens.
#[derive(Debug)]
pub(crate) struct Authenticator {
    users: HashMap<String, Password>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl Authenticator {
    /// Reads a users file: one `user:sha256:<hex>` or `user:plain:<password>`
    /// per line; `#` starts a comment.
    pub(crate) fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the users file {}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| {
                format!(
                    "{} line {}: {why}; expected 'user:sha256:<64 hex digits>' or 'user:plain:<password>'",
                    path.display(),
                    i + 1
                )
            };
            let (user, rest) = line.split_once(':').ok_or_else(|| bad("no ':'"))?;
            let (scheme, secret) = rest
                .split_once(':')
                .ok_or_else(|| bad("no password scheme"))?;
            let password = match scheme {
                "sha256" => {
                    let bytes = hex_decode(secret).ok_or_else(|| bad("bad sha256 digest"))?;
                    Password::Sha256(bytes)
                }
                "plain" => Password::Plain(secret.to_string()),
                other => return Err(bad(&format!("unknown password scheme '{other}'"))),
            };
            users.insert(user.to_string(), password);
        }
        if users.is_empty() {
            return Err(format!(
                "the users file {} lists no users; add 'user:sha256:<hex>' lines",
                path.display()
            ));
        }
        Ok(Self {
            users,
            tokens: Mutex::default(),
        })
    }

    fn check(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(Password::Plain(p)) => constant_time_eq(p.as_bytes(), password.as_bytes()),
            Some(Password::Sha256(d)) => {
                let got = Sha256::digest(password.as_bytes());
                constant_time_eq(got.as_slice(), d)
            }
            None => false,
        }
    }

    /// Verifies `Basic` credentials and issues a token.
    pub(crate) fn login(&self, header: &str) -> Result<(String, String), Status> {
        let encoded = header
            .strip_prefix("Basic ")
            .ok_or_else(|| Status::unauthenticated("expected 'authorization: Basic ...'"))?;
        // Go clients send unpadded base64; accept both.
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = engine
            .decode(encoded.trim())
            .map_err(|_| Status::unauthenticated("malformed Basic credentials"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| Status::unauthenticated("malformed Basic credentials"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("malformed Basic credentials"))?;
        self.login_with(user, password)
    }

    /// Verifies a user and password and issues a token.
    pub(crate) fn login_with(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(String, String), Status> {
        if !self.check(user, password) {
            return Err(Status::unauthenticated("invalid user name or password"));
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut tokens = self.tokens.lock().expect("tokens lock");
        tokens.retain(|_, (_, t)| t.elapsed() < TOKEN_TTL);
        tokens.insert(token.clone(), (user.to_string(), Instant::now()));
        Ok((user.to_string(), token))
    }

    /// The user a call is made by: a Bearer token from the handshake, or
    /// Basic credentials on the call itself.
    pub(crate) fn authorize(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "authentication required: handshake with Basic credentials first",
                )
            })?;
        if let Some(token) = header.strip_prefix("Bearer ") {
            let mut tokens = self.tokens.lock().expect("tokens lock");
            return match tokens.get_mut(token.trim()) {
                Some((user, t)) if t.elapsed() < TOKEN_TTL => {
                    *t = Instant::now();
                    Ok(user.clone())
                }
                _ => Err(Status::unauthenticated(
                    "the Bearer token is unknown or expired; handshake again",
                )),
            };
        }
        self.login(header).map(|(user, _)| user)
    }
}

fn hex_decode(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let digest: String = Sha256::digest(b"s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(
            &path,
            format!("# users\nalice:sha256:{digest}\nbob:plain:pw\n"),
        )
        .unwrap();
        let auth = Authenticator::from_file(&path).unwrap();
        assert!(auth.login_with("alice", "s3cret").is_ok());
        assert!(auth.login_with("alice", "wrong").is_err());
        assert!(auth.login_with("carol", "pw").is_err());
        let (_, token) = auth.login_with("bob", "pw").unwrap();
        let mut md = MetadataMap::new();
        md.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(auth.authorize(&md).unwrap(), "bob");
        md.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            auth.authorize(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        std::fs::write(&path, "alice:md5:abc\n").unwrap();
        assert!(
            Authenticator::from_file(&path)
                .unwrap_err()
                .contains("line 1")
        );
    }
}
