//! Resolution of `secret('NAME')` references.
//!
//! A secret is looked up by the process that connects, first in the
//! environment (`SLUICE_SECRET_<NAME>`), then in the secrets file named by
//! `SLUICE_SECRETS_FILE` (lines of `NAME=value`; `#` starts a comment).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{ConnectorError, Result};

/// Looks secrets up by name.
#[derive(Debug, Clone, Default)]
pub struct SecretResolver {
    file: Option<PathBuf>,
}

impl SecretResolver {
    /// A resolver reading the environment and, if set, `SLUICE_SECRETS_FILE`.
    pub fn from_env() -> Self {
        Self {
            file: std::env::var_os("SLUICE_SECRETS_FILE").map(PathBuf::from),
        }
    }

    /// A resolver reading the environment and the given secrets file.
    pub fn with_file(file: Option<PathBuf>) -> Self {
        Self { file }
    }

    /// The value of secret `name`.
    pub fn resolve(&self, name: &str) -> Result<String> {
        let env_name = format!("SLUICE_SECRET_{}", name.to_uppercase());
        if let Ok(v) = std::env::var(&env_name) {
            return Ok(v);
        }
        if let Some(path) = &self.file {
            let entries = read_secrets_file(path)?;
            if let Some(v) = entries.get(name) {
                return Ok(v.clone());
            }
        }
        Err(ConnectorError::SecretNotFound {
            name: name.to_string(),
        })
    }
}

fn read_secrets_file(path: &PathBuf) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| ConnectorError::SecretsFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConnectorError::SecretsFile {
                path: path.display().to_string(),
                reason: format!("line {} is not NAME=value", n + 1),
            });
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_file_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        std::fs::write(&path, "# comment\nDB_PASS = hunter2\n").unwrap();
        let r = SecretResolver::with_file(Some(path));
        assert_eq!(r.resolve("DB_PASS").unwrap(), "hunter2");
        let err = r.resolve("NOPE_XYZ").unwrap_err().to_string();
        assert!(err.contains("SLUICE_SECRET_NOPE_XYZ"), "{err}");
    }
}
