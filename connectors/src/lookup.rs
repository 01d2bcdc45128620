//! Options of a table used as the dimension of a lookup join
//! (`JOIN dim FOR SYSTEM_TIME AS OF probe.proc_time AS d ON ...`).
//!
//! The join operator lives in the planner; a connector only says whether
//! its tables can answer key lookups and how their cache is sized.

use std::time::Duration;

use crate::database::parse_duration;
use crate::error::{ConnectorError, Result};
use crate::options::TableOptions;

/// Option keys of lookup joins, accepted by connectors that answer lookups.
pub const LOOKUP_OPTIONS: &[&str] = &["lookup.cache.max-rows", "lookup.cache.ttl"];

/// Default number of keys a lookup join caches.
pub const DEFAULT_CACHE_MAX_ROWS: usize = 10_000;

/// How a lookup join caches the dimension's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupOptions {
    /// Keys (with their rows, or their absence) kept in the LRU cache;
    /// 0 turns the cache off.
    pub cache_max_rows: usize,
    /// How long a cached key stays valid; `None`: for the whole job.
    pub cache_ttl: Option<Duration>,
}

impl Default for LookupOptions {
    fn default() -> Self {
        Self {
            cache_max_rows: DEFAULT_CACHE_MAX_ROWS,
            cache_ttl: None,
        }
    }
}

impl LookupOptions {
    /// Reads `lookup.cache.max-rows` and `lookup.cache.ttl`.
    pub fn from_options(options: &TableOptions) -> Result<Self> {
        let mut out = Self::default();
        if let Some(v) = options.literal("lookup.cache.max-rows")? {
            out.cache_max_rows = v
                .trim()
                .parse()
                .map_err(|_| ConnectorError::InvalidOption {
                    key: "lookup.cache.max-rows".into(),
                    reason: format!(
                        "'{v}' is not a row count; use e.g. '10000', or '0' to turn the cache off"
                    ),
                })?;
        }
        if let Some(v) = options.literal("lookup.cache.ttl")? {
            out.cache_ttl =
                Some(
                    parse_duration(v).ok_or_else(|| ConnectorError::InvalidOption {
                        key: "lookup.cache.ttl".into(),
                        reason: format!(
                            "'{v}' is not a duration; use e.g. '10min', '30s' or '500ms'"
                        ),
                    })?,
                );
        }
        Ok(out)
    }
}

impl std::fmt::Display for LookupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.cache_max_rows == 0 {
            return write!(f, "cache=off");
        }
        write!(f, "cache_max_rows={}", self.cache_max_rows)?;
        match self.cache_ttl {
            Some(ttl) => write!(f, ", cache_ttl={ttl:?}"),
            None => write!(f, ", cache_ttl=job"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let mut o = TableOptions::default();
        assert_eq!(
            LookupOptions::from_options(&o).unwrap(),
            LookupOptions::default()
        );
        o.insert_literal("lookup.cache.max-rows", "5");
        o.insert_literal("lookup.cache.ttl", "2min");
        let l = LookupOptions::from_options(&o).unwrap();
        assert_eq!(l.cache_max_rows, 5);
        assert_eq!(l.cache_ttl, Some(Duration::from_secs(120)));
        o.insert_literal("lookup.cache.ttl", "soon");
        let e = LookupOptions::from_options(&o).unwrap_err().to_string();
        assert!(e.contains("lookup.cache.ttl") && e.contains("soon"), "{e}");
        o.insert_literal("lookup.cache.ttl", "1s");
        o.insert_literal("lookup.cache.max-rows", "-1");
        let e = LookupOptions::from_options(&o).unwrap_err().to_string();
        assert!(e.contains("lookup.cache.max-rows"), "{e}");
    }
}
