//! The `postgres` connector: tables in a Postgres database as sources (binary
//! `COPY ... TO STDOUT`, projection and filter pushdown, parallel range
//! reads sharing one snapshot) and sinks (binary `COPY ... FROM STDIN` into
//! staging tables, published in one transaction with a commit ledger).
//!
//! ```sql
//! CREATE TABLE orders (...) WITH (
//!   'connector' = 'postgres',
//!   'url' = 'postgres://app@db.internal:5432/shop',
//!   'password' = secret('PG_PASSWORD'),
//!   'table' = 'public.orders');
//! ```
//!
//! Why not `datafusion-table-providers`: its Postgres and MySQL features
//! link OpenSSL through `native-tls` (Sluice uses rustls), read rows through
//! `query` rather than binary `COPY`, cannot share one snapshot between
//! parallel readers, and its writers do not follow Sluice's two-phase sink
//! protocol.

mod sink;
mod table;
mod types;

use std::fmt;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{ConnectorError, ErrorClass, Result};
use crate::options::TableOptions;
use crate::secrets::SecretResolver;

pub use sink::PostgresSink;
pub use table::{PostgresScanDescriptor, PostgresScanExec, PostgresTable};

/// Options of the `postgres` connector.
pub const POSTGRES_OPTIONS: &[&str] = &[
    "connector",
    "url",
    "username",
    "password",
    "table",
    "query",
    "connect.timeout",
    "scan.partition.column",
    "scan.partition.num",
    "scan.partition.lower-bound",
    "scan.partition.upper-bound",
    "types.unmapped",
    "sink.upsert.duplicates",
    "sink.transaction",
    "lookup.cache.max-rows",
    "lookup.cache.ttl",
];

/// Where and how to connect, with secrets resolved. Never printed whole:
/// [`fmt::Display`] shows `host:port/database` only.
#[derive(Clone)]
pub struct PgConnection {
    config: Config,
    endpoint: String,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.endpoint)
    }
}

impl PgConnection {
    /// Builds the connection settings from table options, resolving
    /// `secret('NAME')` values with `secrets`. Does not connect.
    pub fn from_options(options: &TableOptions, secrets: &SecretResolver) -> Result<Self> {
        let url = options
            .literal("url")?
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: "postgres".into(),
                key: "url".into(),
                hint: "set 'url' = 'postgres://USER@HOST:5432/DATABASE'".into(),
            })?;
        let url = url.strip_prefix("jdbc:").unwrap_or(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConnectorError::InvalidOption {
                key: "url".into(),
                reason: "expected 'postgres://USER@HOST:PORT/DATABASE'".into(),
            });
        }
        let mut config: Config = url.parse().map_err(|e| ConnectorError::InvalidOption {
            key: "url".into(),
            // The parser's message never echoes the URL (which may hold a password).
            reason: format!("{e}; expected 'postgres://USER@HOST:PORT/DATABASE'"),
        })?;
        let resolve = |key: &str| -> Result<Option<String>> {
            match options.get(key) {
                None => Ok(None),
                Some(crate::options::OptionValue::Literal(v)) => Ok(Some(v.clone())),
                Some(crate::options::OptionValue::Secret(name)) => secrets.resolve(name).map(Some),
            }
        };
        if let Some(user) = resolve("username")? {
            config.user(&user);
        }
        if let Some(password) = resolve("password")? {
            config.password(password);
        }
        if config.get_user().is_none() {
            config.user("postgres");
        }
        if config.get_dbname().is_none() {
            return Err(ConnectorError::InvalidOption {
                key: "url".into(),
                reason: "the URL names no database; expected 'postgres://USER@HOST:PORT/DATABASE'"
                    .into(),
            });
        }
        let timeout = crate::database::connect_timeout(options)?;
        config.connect_timeout(timeout);
        config.application_name("sluice");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let endpoint = format!("{host}:{port}/{}", config.get_dbname().unwrap_or_default());
        Ok(Self { config, endpoint })
    }

    /// `host:port/database`, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Opens a session. The connection task runs on the current runtime and
    /// ends when the client is dropped.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.error(None, "connect", e))?;
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, "postgres connection closed: {e}");
            }
        });
        Ok(client)
    }

    /// Turns a driver error into one naming the host, the table and what to
    /// do about it. Never includes the password.
    pub(crate) fn error(
        &self,
        table: Option<&str>,
        action: &str,
        e: tokio_postgres::Error,
    ) -> ConnectorError {
        let user = self.config.get_user().unwrap_or("postgres");
        let on = match table {
            Some(t) => format!("table {t} at {}", self.endpoint),
            None => self.endpoint.clone(),
        };
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            let (class, hint) = if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                (
                    ErrorClass::User,
                    format!(
                        "authentication failed for user '{user}': check 'username' and 'password' \
                         (use 'password' = secret('NAME') with SLUICE_SECRET_NAME set)"
                    ),
                )
            } else if *code == SqlState::UNDEFINED_TABLE {
                (
                    ErrorClass::User,
                    "the table does not exist: check 'table' (schema.table) or create it first"
                        .into(),
                )
            } else if *code == SqlState::UNDEFINED_DATABASE {
                (
                    ErrorClass::User,
                    "the database does not exist: check the database name in 'url'".into(),
                )
            } else if code.code().starts_with("23") {
                let mut what = String::from("a constraint of the target table rejected a row");
                if let Some(c) = db.constraint() {
                    what.push_str(&format!(" (constraint {c})"));
                }
                if let Some(c) = db.column() {
                    what.push_str(&format!(" (column {c})"));
                }
                (
                    ErrorClass::User,
                    format!("{what}; nothing was written: fix the rows or the constraint"),
                )
            } else if code.code().starts_with("22") || code.code().starts_with("42") {
                (
                    ErrorClass::User,
                    "the statement or a value was rejected; check the declared columns and types"
                        .into(),
                )
            } else {
                (ErrorClass::External, String::new())
            };
            let mut message = db.message().to_string();
            if let Some(d) = db.detail() {
                message.push_str(&format!(" ({d})"));
            }
            return ConnectorError::Database {
                connector: "postgres",
                on,
                action: action.to_string(),
                message: format!("{message} [SQLSTATE {}]", code.code()),
                hint,
                class,
            };
        }
        let source = std::error::Error::source(&e).map(ToString::to_string);
        let hint = match source.as_deref() {
            Some(s) if s.contains("refused") => format!(
                "connection refused: check that Postgres runs at {} and 'url' names its host and port",
                self.endpoint
            ),
            _ if e.to_string().contains("timed out") => {
                "the connection timed out: check the host, the network and 'connect.timeout'".into()
            }
            _ => String::new(),
        };
        ConnectorError::Database {
            connector: "postgres",
            on,
            action: action.to_string(),
            message: match source {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            },
            hint,
            class: ErrorClass::External,
        }
    }
}

/// Quotes a Postgres identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a Postgres string literal.
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Quotes a possibly schema-qualified table name written as `schema.table`
/// (parts already quoted with `"` are kept).
pub(crate) fn quote_table(name: &str) -> String {
    split_qualified(name)
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join(".")
}

/// Splits `schema.table` (with optional `"` quoting) into its parts.
pub(crate) fn split_qualified(name: &str) -> Vec<String> {
    let mut parts = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c if quoted => cur.push(c),
            c => cur.extend(c.to_lowercase()),
        }
    }
    parts.push(cur);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_are_split_and_quoted() {
        assert_eq!(split_qualified("public.Orders"), vec!["public", "orders"]);
        assert_eq!(split_qualified("\"My.Schema\".t"), vec!["My.Schema", "t"]);
        assert_eq!(quote_table("s.t"), "\"s\".\"t\"");
    }

    #[test]
    fn the_password_never_shows_in_the_endpoint() {
        let mut options = TableOptions::default();
        options.insert_literal("url", "postgres://u:hunter2@db:5433/shop");
        let c = PgConnection::from_options(&options, &SecretResolver::default()).unwrap();
        assert_eq!(c.to_string(), "db:5433/shop");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
