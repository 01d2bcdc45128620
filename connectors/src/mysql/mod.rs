//! The `mysql` connector (MySQL and MariaDB): tables as sources (binary
//! protocol result streams, projection and filter pushdown, parallel range
//! reads opened under one consistent snapshot) and sinks (multi-row
//! `INSERT`s into staging tables, published with one transaction, or a
//! `RENAME TABLE` for overwrites, recorded in a commit ledger).
//!
//! ```sql
//! CREATE TABLE orders WITH (
//!   'connector' = 'mysql',
//!   'url' = 'mysql://app@db.internal:3306/shop',
//!   'password' = secret('MYSQL_PASSWORD'),
//!   'table' = 'orders');
//! ```
//!
//! Every session runs with `time_zone = '+00:00'` (so `TIMESTAMP` values
//! are UTC instants), `utf8mb4`, and a strict `sql_mode` (a value that does
//! not fit its column is an error, never silently truncated).

mod sink;
mod table;
mod types;

use std::fmt;
use std::time::Duration;

use mysql_async::{Conn, Opts, OptsBuilder};

use crate::error::{ConnectorError, ErrorClass, Result};
use crate::options::{OptionValue, TableOptions};
use crate::secrets::SecretResolver;

pub use sink::MySqlSink;
pub use table::{MySqlScanDescriptor, MySqlScanExec, MySqlTable};

/// Options of the `mysql` connector.
pub const MYSQL_OPTIONS: &[&str] = &[
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
    "scan.snapshot",
    "types.unmapped",
    "sink.batch-rows",
    "sink.upsert.duplicates",
    "lookup.cache.max-rows",
    "lookup.cache.ttl",
];

/// Statements every session runs first.
const SESSION_INIT: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET time_zone = '+00:00'",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'",
];

/// Where and how to connect, with secrets resolved. Never printed whole:
/// [`fmt::Display`] shows `host:port/database` only.
#[derive(Clone)]
pub struct MyConnection {
    opts: Opts,
    endpoint: String,
    user: String,
    timeout: Duration,
}

impl fmt::Debug for MyConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MyConnection")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MyConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.endpoint)
    }
}

impl MyConnection {
    /// Builds the connection settings from table options, resolving
    /// `secret('NAME')` values with `secrets`. Does not connect.
    pub fn from_options(options: &TableOptions, secrets: &SecretResolver) -> Result<Self> {
        let expected = "expected 'mysql://USER@HOST:3306/DATABASE'";
        let url = options
            .literal("url")?
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: "mysql".into(),
                key: "url".into(),
                hint: "set 'url' = 'mysql://USER@HOST:3306/DATABASE'".into(),
            })?;
        let url = url.strip_prefix("jdbc:").unwrap_or(url);
        let url = match url.split_once("://") {
            Some(("mysql" | "mariadb", rest)) => format!("mysql://{rest}"),
            _ => {
                return Err(ConnectorError::InvalidOption {
                    key: "url".into(),
                    reason: expected.into(),
                });
            }
        };
        // Connection parameters in the URL (`?...`) are not Sluice options.
        let (base, query) = url.split_once('?').unwrap_or((&url, ""));
        if !query.is_empty() {
            return Err(ConnectorError::InvalidOption {
                key: "url".into(),
                reason: format!(
                    "URL parameters ('?{}') are not supported; use the table options \
                     ({}) instead",
                    query.split('=').next().unwrap_or_default(),
                    MYSQL_OPTIONS.join(", ")
                ),
            });
        }
        let parsed = Opts::from_url(base).map_err(|e| ConnectorError::InvalidOption {
            key: "url".into(),
            // The parser's message never echoes the URL (which may hold a password).
            reason: format!("{e}; {expected}"),
        })?;
        let resolve = |key: &str| -> Result<Option<String>> {
            match options.get(key) {
                None => Ok(None),
                Some(OptionValue::Literal(v)) => Ok(Some(v.clone())),
                Some(OptionValue::Secret(name)) => secrets.resolve(name).map(Some),
            }
        };
        let user = resolve("username")?
            .or_else(|| parsed.user().map(str::to_string))
            .unwrap_or_else(|| "root".into());
        // An empty password (an empty secret) means none.
        let password = resolve("password")?
            .or_else(|| parsed.pass().map(str::to_string))
            .filter(|p| !p.is_empty());
        let Some(db) = parsed.db_name().map(str::to_string) else {
            return Err(ConnectorError::InvalidOption {
                key: "url".into(),
                reason: format!("the URL names no database; {expected}"),
            });
        };
        let timeout = crate::database::connect_timeout(options)?;
        let endpoint = format!("{}:{}/{db}", parsed.ip_or_hostname(), parsed.tcp_port());
        let opts = OptsBuilder::from_opts(parsed)
            .user(Some(user.clone()))
            .pass(password)
            .db_name(Some(db))
            .prefer_socket(false)
            .init(SESSION_INIT.to_vec())
            .into();
        Ok(Self {
            opts,
            endpoint,
            user,
            timeout,
        })
    }

    /// `host:port/database`, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The database the URL names.
    pub(crate) fn database(&self) -> &str {
        self.opts.db_name().unwrap_or_default()
    }

    /// Opens a session (time zone, character set and `sql_mode` set).
    pub async fn connect(&self) -> Result<Conn> {
        match tokio::time::timeout(self.timeout, Conn::new(self.opts.clone())).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.error(None, "connect", e)),
            Err(_) => Err(ConnectorError::Database {
                connector: "mysql",
                on: self.endpoint.clone(),
                action: "connect".into(),
                message: format!("no answer within {:?}", self.timeout),
                hint: "check the host, the network and 'connect.timeout'".into(),
                class: ErrorClass::External,
            }),
        }
    }

    /// Turns a driver error into one naming the host, the table and what to
    /// do about it. Never includes the password.
    pub(crate) fn error(
        &self,
        table: Option<&str>,
        action: &str,
        e: mysql_async::Error,
    ) -> ConnectorError {
        let on = match table {
            Some(t) => format!("table {t} at {}", self.endpoint),
            None => self.endpoint.clone(),
        };
        let (message, hint, class) = match &e {
            mysql_async::Error::Server(s) => {
                let (class, hint) = match s.code {
                    1045 | 1698 => (
                        ErrorClass::User,
                        format!(
                            "authentication failed for user '{}': check 'username' and \
                             'password' (use 'password' = secret('NAME') with \
                             SLUICE_SECRET_NAME set)",
                            self.user
                        ),
                    ),
                    1146 => (
                        ErrorClass::User,
                        "the table does not exist: check 'table' (database.table) or create it \
                         first"
                            .into(),
                    ),
                    1049 => (
                        ErrorClass::User,
                        "the database does not exist: check the database name in 'url'".into(),
                    ),
                    1044 | 1142 | 1227 => (
                        ErrorClass::User,
                        format!(
                            "user '{}' lacks a privilege this needs: grant it",
                            self.user
                        ),
                    ),
                    // Duplicate key, foreign keys, NOT NULL, CHECK.
                    1062 | 1451 | 1452 | 1048 | 3819 | 4025 => (
                        ErrorClass::User,
                        "a constraint of the target table rejected a row; nothing was written: \
                         fix the rows or the constraint"
                            .into(),
                    ),
                    // Out of range, too long, incorrect value, truncated.
                    1264 | 1406 | 1366 | 1292 | 1265 | 1367 => (
                        ErrorClass::User,
                        "a value does not fit its column; nothing was written: cast or fix it \
                         in the query, or widen the column"
                            .into(),
                    ),
                    1054 | 1064 => (
                        ErrorClass::User,
                        "the statement was rejected; check the declared columns and the \
                         'query' option"
                            .into(),
                    ),
                    _ => (ErrorClass::External, String::new()),
                };
                (
                    format!("{} [error {}, SQLSTATE {}]", s.message, s.code, s.state),
                    hint,
                    class,
                )
            }
            mysql_async::Error::Io(io) => {
                let text = io.to_string();
                let hint = if text.contains("refused") {
                    format!(
                        "connection refused: check that MySQL/MariaDB runs at {} and 'url' names \
                         its host and port",
                        self.endpoint
                    )
                } else {
                    "the connection failed: check the host and the network".into()
                };
                (text, hint, ErrorClass::External)
            }
            other => (other.to_string(), String::new(), ErrorClass::External),
        };
        ConnectorError::Database {
            connector: "mysql",
            on,
            action: action.to_string(),
            message,
            hint,
            class,
        }
    }
}

/// Quotes a MySQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a possibly database-qualified table name written as `db.table`
/// (parts already quoted with backticks are kept).
pub(crate) fn quote_table(name: &str) -> String {
    split_qualified(name)
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join(".")
}

/// Splits `db.table` (with optional backtick quoting) into its parts.
/// MySQL table names are case-sensitive on most systems: kept as written.
pub(crate) fn split_qualified(name: &str) -> Vec<String> {
    let mut parts = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' if quoted && chars.peek() == Some(&'`') => {
                cur.push('`');
                chars.next();
            }
            '`' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

/// A MySQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    let mut out = String::new();
    types::quote_string(s, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_are_split_and_quoted() {
        assert_eq!(split_qualified("shop.Orders"), vec!["shop", "Orders"]);
        assert_eq!(split_qualified("`my.db`.t"), vec!["my.db", "t"]);
        assert_eq!(quote_table("s.`t``x`"), "`s`.`t``x`");
    }

    #[test]
    fn the_password_never_shows_in_the_endpoint() {
        let mut options = TableOptions::default();
        options.insert_literal("url", "mariadb://u:hunter2@db:3307/shop");
        let c = MyConnection::from_options(&options, &SecretResolver::default()).unwrap();
        assert_eq!(c.to_string(), "db:3307/shop");
        assert!(!format!("{c:?}").contains("hunter2"));
        options.insert_literal("url", "mysql://db/shop?ssl-mode=REQUIRED");
        let e = MyConnection::from_options(&options, &SecretResolver::default()).unwrap_err();
        assert!(e.to_string().contains("ssl-mode"), "{e}");
    }
}
