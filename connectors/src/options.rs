//! Table and connection options, with secrets kept as references.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, Result};
use crate::secrets::SecretResolver;

/// One option value as written in SQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptionValue {
    /// A literal value.
    Literal(String),
    /// `secret('NAME')`: resolved by the process that connects, never printed.
    Secret(String),
}

impl fmt::Display for OptionValue {
    /// SQL text for the value; a secret prints as `secret('NAME')`, never its value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(v) => write!(f, "'{}'", v.replace('\'', "''")),
            Self::Secret(name) => write!(f, "secret('{}')", name.replace('\'', "''")),
        }
    }
}

/// Ordered option map of a table or connection, as declared.
///
/// Keys are lower-cased. Values keep secrets as references; call
/// [`TableOptions::resolve`] at connect time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableOptions(BTreeMap<String, OptionValue>);

impl TableOptions {
    /// Empty options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts an option, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: OptionValue) -> Option<OptionValue> {
        self.0.insert(key.into().to_lowercase(), value)
    }

    /// Inserts a literal option.
    pub fn insert_literal(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.insert(key, OptionValue::Literal(value.into()));
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&OptionValue> {
        self.0.get(key)
    }

    /// A literal value; errors if the option holds a secret.
    pub fn literal(&self, key: &str) -> Result<Option<&str>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(OptionValue::Literal(v)) => Ok(Some(v)),
            Some(OptionValue::Secret(_)) => Err(ConnectorError::InvalidOption {
                key: key.to_string(),
                reason: "this option cannot be a secret; write its value".to_string(),
            }),
        }
    }

    /// Removes and returns an option.
    pub fn remove(&mut self, key: &str) -> Option<OptionValue> {
        self.0.remove(key)
    }

    /// Iterates over options in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &OptionValue)> {
        self.0.iter()
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Options whose key starts with `prefix`.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a OptionValue)> + 'a {
        self.0.iter().filter(move |(k, _)| k.starts_with(prefix))
    }

    /// Resolves secrets; only for code that connects. The result must never
    /// be logged, printed or serialised.
    pub fn resolve(&self, secrets: &SecretResolver) -> Result<BTreeMap<String, String>> {
        self.0
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    OptionValue::Literal(v) => v.clone(),
                    OptionValue::Secret(name) => secrets.resolve(name)?,
                };
                Ok((k.clone(), value))
            })
            .collect()
    }

    /// Checks that every key is either in `known` or starts with one of
    /// `known_prefixes`.
    pub fn check_known(
        &self,
        connector: &str,
        known: &[&str],
        known_prefixes: &[&str],
    ) -> Result<()> {
        for key in self.0.keys() {
            let ok =
                known.contains(&key.as_str()) || known_prefixes.iter().any(|p| key.starts_with(p));
            if !ok {
                let mut valid: Vec<String> = known.iter().map(|s| s.to_string()).collect();
                valid.extend(known_prefixes.iter().map(|p| format!("{p}*")));
                return Err(ConnectorError::UnknownOption {
                    connector: connector.to_string(),
                    key: key.clone(),
                    valid: valid.join(", "),
                });
            }
        }
        Ok(())
    }
}

impl fmt::Display for TableOptions {
    /// `'k' = 'v', ...` with secrets shown as `secret('NAME')`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "'{k}' = {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_never_shows_secret_values() {
        let mut o = TableOptions::new();
        o.insert(
            "aws.secret_access_key",
            OptionValue::Secret("S3_KEY".into()),
        );
        o.insert_literal("Format", "csv");
        assert_eq!(
            o.to_string(),
            "'aws.secret_access_key' = secret('S3_KEY'), 'format' = 'csv'"
        );
    }

    #[test]
    fn unknown_key_lists_valid_ones() {
        let mut o = TableOptions::new();
        o.insert_literal("pathh", "x");
        let err = o.check_known("filesystem", &["path", "format"], &["format."]);
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("'pathh'"), "{msg}");
        assert!(msg.contains("path, format, format.*"), "{msg}");
    }
}
