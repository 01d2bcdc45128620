//! Sluice's settings: a DataFusion config extension under `sluice.*`, plus
//! an explicit alias table for Flink- and Spark-style keys.

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::prelude::SessionConfig;

use crate::error::{PlannerError, Result};

/// Settings under `sluice.*`, changed with `SET` and listed by `SHOW ALL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SluiceOptions {
    /// Execution mode: `batch` or `streaming`; empty chooses by statement.
    pub runtime_mode: String,
    /// Name of the pipeline, used to build run ids (default: the script's file name).
    pub pipeline_name: String,
    /// `INSERT OVERWRITE` of a partitioned table without a PARTITION clause:
    /// `static` replaces the whole table, `dynamic` only the partitions written.
    pub partition_overwrite_mode: String,
    /// Append even when the run id was committed before.
    pub force_rerun: bool,
    /// Tasks that run at once in staged batch mode (0: one per core).
    pub task_slots: usize,
    /// Attempts of a failing staged task before the job fails.
    pub task_max_attempts: u32,
    /// Directory of the embedded shuffle store (empty: the system's temporary directory).
    pub shuffle_dir: String,
    /// Compression of shuffle blocks: lz4, zstd or none.
    pub shuffle_compression: String,
    /// Send every staged task's plan through the executor wire format and
    /// decode it in a fresh executor context, as a cluster does.
    pub serialize_stage_plans: bool,
    /// Batches each live exchange channel of streaming mode holds before
    /// its producer waits.
    pub streaming_buffer: usize,
    /// Seconds a streaming job waits for task slots before it fails.
    pub admission_timeout_secs: u64,
}

impl Default for SluiceOptions {
    fn default() -> Self {
        Self {
            runtime_mode: String::new(),
            pipeline_name: String::new(),
            partition_overwrite_mode: "static".to_string(),
            force_rerun: false,
            task_slots: 0,
            task_max_attempts: 3,
            shuffle_dir: String::new(),
            shuffle_compression: "lz4".to_string(),
            serialize_stage_plans: false,
            streaming_buffer: 4,
            admission_timeout_secs: 300,
        }
    }
}

impl SluiceOptions {
    /// Whether jobs are cut into stages: staged batch mode and streaming
    /// mode both run a stage graph; an unset mode runs plans whole, in
    /// this process.
    pub fn cuts_stages(&self) -> bool {
        is_staged_mode(&self.runtime_mode)
    }

    /// The process's task slots: `task_slots`, or one per core when 0.
    pub fn slots(&self) -> usize {
        match self.task_slots {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// Whether `mode` (a value of `sluice.runtime_mode`) runs stage graphs.
pub fn is_staged_mode(mode: &str) -> bool {
    matches!(mode, "batch" | "streaming")
}

impl ConfigExtension for SluiceOptions {
    const PREFIX: &'static str = "sluice";
}

/// `(key, description)` of every Sluice setting, without the `sluice.` prefix.
const SETTINGS: &[(&str, &str)] = &[
    (
        "runtime_mode",
        "Execution mode: 'batch' or 'streaming'; empty chooses by statement",
    ),
    (
        "pipeline_name",
        "Pipeline name for run ids; default: the script's file name",
    ),
    (
        "partition_overwrite_mode",
        "INSERT OVERWRITE of a partitioned table: 'static' replaces the table, 'dynamic' the partitions written",
    ),
    (
        "force_rerun",
        "Append even when the run id was committed before",
    ),
    (
        "task_slots",
        "Task slots of this process; 0 means one per core. Staged batch mode runs that many tasks at once; a streaming job takes as many slots as its widest stage has tasks",
    ),
    (
        "task_max_attempts",
        "Attempts of a failing staged task before the job fails",
    ),
    (
        "shuffle_dir",
        "Directory of the embedded shuffle store; empty means the temporary directory",
    ),
    (
        "shuffle_compression",
        "Compression of shuffle blocks: 'lz4', 'zstd' or 'none'",
    ),
    (
        "serialize_stage_plans",
        "Encode every staged task's plan (datafusion-proto) and decode it in a fresh executor context, as a cluster does",
    ),
    (
        "streaming_buffer",
        "Batches each live exchange channel holds in streaming mode before its producer waits",
    ),
    (
        "admission_timeout_secs",
        "Seconds a streaming job waits for free task slots before it fails",
    ),
];

impl ExtensionOptions for SluiceOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::common::Result<()> {
        match key {
            "runtime_mode" => self.runtime_mode = value.to_string(),
            "pipeline_name" => self.pipeline_name = value.to_string(),
            "partition_overwrite_mode" => self.partition_overwrite_mode = value.to_string(),
            "force_rerun" => {
                self.force_rerun = value.parse().map_err(|_| {
                    datafusion::error::DataFusionError::Configuration(format!(
                        "'{value}' is not a boolean; use true or false"
                    ))
                })?
            }
            "task_slots" => {
                self.task_slots = value.parse().map_err(|_| {
                    datafusion::error::DataFusionError::Configuration(format!(
                        "'{value}' is not a number of task slots"
                    ))
                })?
            }
            "task_max_attempts" => {
                self.task_max_attempts = match value.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        return Err(datafusion::error::DataFusionError::Configuration(format!(
                            "'{value}' is not a number of attempts (1 or more)"
                        )));
                    }
                }
            }
            "shuffle_dir" => self.shuffle_dir = value.to_string(),
            "streaming_buffer" => {
                self.streaming_buffer = match value.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        return Err(datafusion::error::DataFusionError::Configuration(format!(
                            "'{value}' is not a number of batches (1 or more)"
                        )));
                    }
                }
            }
            "admission_timeout_secs" => {
                self.admission_timeout_secs = value.parse().map_err(|_| {
                    datafusion::error::DataFusionError::Configuration(format!(
                        "'{value}' is not a number of seconds"
                    ))
                })?
            }
            "serialize_stage_plans" => {
                self.serialize_stage_plans = value.parse().map_err(|_| {
                    datafusion::error::DataFusionError::Configuration(format!(
                        "'{value}' is not a boolean; use true or false"
                    ))
                })?
            }
            "shuffle_compression" => {
                let v = value.to_ascii_lowercase();
                if !matches!(v.as_str(), "lz4" | "zstd" | "none") {
                    return Err(datafusion::error::DataFusionError::Configuration(format!(
                        "unknown shuffle compression '{value}'; use 'lz4', 'zstd' or 'none'"
                    )));
                }
                self.shuffle_compression = v
            }
            other => {
                return Err(datafusion::error::DataFusionError::Configuration(format!(
                    "unknown setting sluice.{other}"
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        let value = |k: &str| match k {
            "runtime_mode" => self.runtime_mode.clone(),
            "pipeline_name" => self.pipeline_name.clone(),
            "partition_overwrite_mode" => self.partition_overwrite_mode.clone(),
            "task_slots" => self.task_slots.to_string(),
            "task_max_attempts" => self.task_max_attempts.to_string(),
            "shuffle_dir" => self.shuffle_dir.clone(),
            "shuffle_compression" => self.shuffle_compression.clone(),
            "serialize_stage_plans" => self.serialize_stage_plans.to_string(),
            "streaming_buffer" => self.streaming_buffer.to_string(),
            "admission_timeout_secs" => self.admission_timeout_secs.to_string(),
            _ => self.force_rerun.to_string(),
        };
        SETTINGS
            .iter()
            .map(|(k, description)| ConfigEntry {
                key: format!("{}.{k}", Self::PREFIX),
                value: Some(value(k)),
                description,
            })
            .collect()
    }
}

/// Keys users may write, and the setting each one changes.
pub const ALIASES: &[(&str, &str)] = &[
    ("execution.runtime-mode", "sluice.runtime_mode"),
    ("pipeline.name", "sluice.pipeline_name"),
    (
        "parallelism.default",
        "datafusion.execution.target_partitions",
    ),
    (
        "table.exec.resource.default-parallelism",
        "datafusion.execution.target_partitions",
    ),
    ("table.local-time-zone", "datafusion.execution.time_zone"),
    // PostgreSQL's and DataFusion's `SET timezone TO ...`.
    ("timezone", "datafusion.execution.time_zone"),
    ("sql-client.execution.result-mode", ""),
    (
        "spark.sql.sources.partitionOverwriteMode",
        "sluice.partition_overwrite_mode",
    ),
    (
        "partition.overwrite-mode",
        "sluice.partition_overwrite_mode",
    ),
];

/// A setting to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Canonical key (`sluice.*` or `datafusion.*`); empty for accepted no-ops.
    pub key: String,
    /// Normalised value.
    pub value: String,
}

/// Resolves a key as written to its canonical setting, validating the value.
pub fn resolve_setting(key: &str, value: &str, config: &SessionConfig) -> Result<Setting> {
    let lower = key.to_ascii_lowercase();
    let canonical = ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(key))
        .map(|(_, c)| c.to_string())
        .or_else(|| {
            (lower.starts_with("sluice.") || lower.starts_with("datafusion."))
                .then(|| lower.replace('-', "_"))
        })
        .ok_or_else(|| PlannerError::UnknownSetting {
            key: key.to_string(),
            known: known_settings(config),
        })?;
    let mut value = value.to_string();
    match canonical.as_str() {
        "sluice.runtime_mode" => {
            value = value.to_ascii_lowercase();
            if !matches!(value.as_str(), "batch" | "streaming" | "") {
                return Err(PlannerError::InvalidSetting {
                    key: key.to_string(),
                    value,
                    reason: "use 'batch' or 'streaming'".to_string(),
                });
            }
        }
        "datafusion.sql_parser.dialect" if !value.eq_ignore_ascii_case("generic") => {
            return Err(PlannerError::InvalidSetting {
                key: key.to_string(),
                value,
                reason: "Sluice parses SQL with its own dialect (DataFusion's generic dialect \
                         with Flink's extensions), which cannot be changed"
                    .to_string(),
            });
        }
        "sluice.partition_overwrite_mode" => {
            value = value.to_ascii_lowercase();
            if !matches!(value.as_str(), "static" | "dynamic") {
                return Err(PlannerError::InvalidSetting {
                    key: key.to_string(),
                    value,
                    reason: "use 'static' or 'dynamic'".to_string(),
                });
            }
        }
        _ => {}
    }
    if canonical.starts_with("sluice.") {
        let field = canonical.trim_start_matches("sluice.");
        if !SETTINGS.iter().any(|(k, _)| *k == field) {
            return Err(PlannerError::UnknownSetting {
                key: key.to_string(),
                known: known_settings(config),
            });
        }
    }
    Ok(Setting {
        key: canonical,
        value,
    })
}

/// Human list of settable keys, for error messages.
pub fn known_settings(config: &SessionConfig) -> String {
    let mut keys: Vec<String> = ALIASES.iter().map(|(a, _)| a.to_string()).collect();
    let entries: Vec<ConfigEntry> = config.options().entries();
    keys.extend(
        entries
            .into_iter()
            .map(|e| e.key)
            .filter(|k| k.starts_with("sluice.")),
    );
    keys.push("datafusion.* (see SHOW ALL)".to_string());
    keys.join(", ")
}

/// The session's Sluice options.
pub fn sluice_options(config: &SessionConfig) -> SluiceOptions {
    config
        .options()
        .extensions
        .get::<SluiceOptions>()
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SessionConfig {
        SessionConfig::new().with_option_extension(SluiceOptions::default())
    }

    #[test]
    fn flink_keys_map_through_aliases() {
        let s = resolve_setting("execution.runtime-mode", "Streaming", &config()).unwrap();
        assert_eq!(
            s,
            Setting {
                key: "sluice.runtime_mode".into(),
                value: "streaming".into()
            }
        );
        let s = resolve_setting("parallelism.default", "4", &config()).unwrap();
        assert_eq!(s.key, "datafusion.execution.target_partitions");
    }

    #[test]
    fn unknown_keys_list_known_ones() {
        let err = resolve_setting("execution.runtime-mood", "batch", &config()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("execution.runtime-mode"), "{msg}");
        assert!(msg.contains("sluice.pipeline_name"), "{msg}");
        assert!(resolve_setting("sluice.nope", "1", &config()).is_err());
        assert!(resolve_setting("execution.runtime-mode", "fast", &config()).is_err());
    }
}
