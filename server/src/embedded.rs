//! The embedded engine: one process runs coordinator, executor and sinks.

use std::sync::Arc;

use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::{ExecutionPlan, displayable, execute_stream};
use datafusion::prelude::SessionConfig;
use sluice_connectors::CommitOutcome;
use sluice_planner::error::PlannerError;
use sluice_planner::{Planned, RunContext, SluiceSession, SluiceStatement, StatementKind};

use crate::cluster::ClusterScheduler;
use crate::coordinator::{self, StageRuntime};
use crate::staged::StagedRuntime;
use crate::streaming::StreamingRuntime;

/// What executing one statement produced.
pub enum Executed {
    /// DDL or SET took effect.
    Done {
        /// Statement kind.
        kind: StatementKind,
        /// Object affected.
        target: Option<String>,
        /// Description.
        message: String,
    },
    /// A result set, streamed.
    Rows {
        /// The plan (for metrics after the stream ends).
        plan: Arc<dyn ExecutionPlan>,
        /// The rows.
        stream: SendableRecordBatchStream,
    },
    /// A committed write.
    Written {
        /// INSERT, INSERT OVERWRITE or COPY.
        kind: StatementKind,
        /// Target.
        target: String,
        /// What the commit made visible.
        outcome: CommitOutcome,
        /// Rows read by the plan's sources.
        rows_read: Option<u64>,
    },
    /// A committed statement set.
    WrittenSet {
        /// One entry per INSERT, in the set's order.
        writes: Vec<SetWrite>,
        /// Rows read by the set's sources (a shared scan counted once).
        rows_read: Option<u64>,
    },
    /// `--dry-run`: the plan that would run.
    Plan {
        /// Statement kind.
        kind: StatementKind,
        /// Target, for writes.
        target: Option<String>,
        /// Indented physical plan.
        text: String,
    },
}

/// What one INSERT of a statement set published.
#[derive(Debug, Clone)]
pub struct SetWrite {
    /// INSERT or INSERT OVERWRITE.
    pub kind: StatementKind,
    /// Target.
    pub target: String,
    /// What its commit made visible.
    pub outcome: CommitOutcome,
}

/// A session running statements in this process.
#[derive(Debug)]
pub struct EmbeddedSession {
    session: SluiceSession,
    dry_run: bool,
    /// A coordinator's scheduler: batch jobs run on its executors.
    cluster: Option<Arc<ClusterScheduler>>,
}

impl EmbeddedSession {
    /// A session with its own temporary catalog.
    pub fn new(config: SessionConfig, run: RunContext, dry_run: bool) -> Self {
        Self {
            session: SluiceSession::new(config, run),
            dry_run,
            cluster: None,
        }
    }

    /// Wraps an existing planner session (a server's client session).
    pub fn from_session(session: SluiceSession, dry_run: bool) -> Self {
        Self {
            session,
            dry_run,
            cluster: None,
        }
    }

    /// Runs batch jobs on the executors of `cluster` (a coordinator's
    /// session) instead of in this process.
    pub fn with_cluster(mut self, cluster: Option<Arc<ClusterScheduler>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The planner session.
    pub fn session(&self) -> &SluiceSession {
        &self.session
    }

    /// Binds and runs one statement; `progress` is called with the live
    /// counters of a write before it starts.
    pub async fn execute(
        &self,
        stmt: SluiceStatement,
        index: usize,
        on_write: &mut (dyn FnMut(&sluice_planner::WriteJob) + Send),
    ) -> Result<Executed, PlannerError> {
        let planned = self.session.plan(stmt, index, self.dry_run).await?;
        self.run_planned(planned, on_write).await
    }

    /// The stage runtime of the session's mode: staged in batch mode,
    /// live in streaming mode, none when the mode is unset.
    async fn staged_runtime(&self) -> Result<Option<StageRuntime>, PlannerError> {
        let options = self.session.options();
        match options.runtime_mode.as_str() {
            "batch" => {}
            "streaming" => {
                return Ok(Some(StageRuntime::Streaming(match &self.cluster {
                    Some(cluster) => StreamingRuntime::for_cluster(
                        &options,
                        Arc::clone(cluster),
                        Arc::clone(self.session.connectors().stores()),
                    ),
                    None => StreamingRuntime::from_options(&options),
                })));
            }
            _ => return Ok(None),
        }
        if let Some(cluster) = &self.cluster {
            return Ok(Some(StageRuntime::Staged(
                StagedRuntime::for_cluster(
                    &options,
                    Arc::clone(cluster),
                    Arc::clone(self.session.connectors().stores()),
                )
                .map_err(PlannerError::from)?,
            )));
        }
        let runtime = StagedRuntime::from_options(&options)
            .await
            .map_err(PlannerError::from)?;
        Ok(Some(StageRuntime::Staged(
            if options.serialize_stage_plans {
                runtime.with_serialized_plans(Arc::clone(self.session.connectors()))
            } else {
                runtime
            },
        )))
    }

    /// Runs a query plan: as a stage graph in batch and streaming mode,
    /// whole in this process otherwise.
    pub async fn query_stream(
        &self,
        plan: Arc<dyn ExecutionPlan>,
    ) -> Result<SendableRecordBatchStream, PlannerError> {
        let ctx = self.session.context().task_ctx();
        Ok(match self.staged_runtime().await? {
            Some(runtime) => runtime.run_query(plan, ctx).await?,
            None => execute_stream(plan, ctx)?,
        })
    }

    /// Runs what [`SluiceSession::plan`] returned.
    pub async fn run_planned(
        &self,
        planned: Planned,
        on_write: &mut (dyn FnMut(&sluice_planner::WriteJob) + Send),
    ) -> Result<Executed, PlannerError> {
        let ctx = self.session.context().task_ctx();
        let staged = self.staged_runtime().await?;
        match planned {
            Planned::Done {
                kind,
                target,
                message,
            } => Ok(Executed::Done {
                kind,
                target,
                message,
            }),
            Planned::Query { plan } if self.dry_run => Ok(Executed::Plan {
                kind: StatementKind::Query,
                target: None,
                text: plan_text(&plan, staged.as_ref(), true)?,
            }),
            Planned::Query { plan } => {
                let stream = match &staged {
                    Some(runtime) => runtime.run_query(Arc::clone(&plan), ctx).await?,
                    None => execute_stream(Arc::clone(&plan), ctx)?,
                };
                Ok(Executed::Rows { plan, stream })
            }
            Planned::Write(job) if self.dry_run => Ok(Executed::Plan {
                kind: job.kind,
                target: Some(job.target.clone()),
                text: plan_text(&job.plan, staged.as_ref(), false)?,
            }),
            Planned::Write(job) => {
                on_write(&job);
                let (outcome, rows_read) =
                    coordinator::run_write(&job, ctx, staged.as_ref()).await?;
                Ok(Executed::Written {
                    kind: job.kind,
                    target: job.target.clone(),
                    outcome,
                    rows_read,
                })
            }
            Planned::WriteSet(set) if self.dry_run => Ok(Executed::Plan {
                kind: StatementKind::StatementSet,
                target: Some(
                    set.jobs
                        .iter()
                        .map(|j| j.target.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                text: set.display(|plan| plan_text(plan, staged.as_ref(), false))?,
            }),
            Planned::WriteSet(set) => {
                for job in &set.jobs {
                    on_write(job);
                }
                let (outcomes, rows_read) =
                    coordinator::run_write_set(&set, ctx, staged.as_ref()).await?;
                Ok(Executed::WrittenSet {
                    writes: set
                        .jobs
                        .iter()
                        .zip(outcomes)
                        .map(|(job, outcome)| SetWrite {
                            kind: job.kind,
                            target: job.target.clone(),
                            outcome,
                        })
                        .collect(),
                    rows_read,
                })
            }
        }
    }
}

/// The plan as `--dry-run` prints it: the stage graph in batch and
/// streaming mode, the physical plan otherwise.
fn plan_text(
    plan: &Arc<dyn ExecutionPlan>,
    staged: Option<&StageRuntime>,
    query: bool,
) -> Result<String, PlannerError> {
    Ok(match staged {
        Some(runtime) => runtime.stage_graph(Arc::clone(plan), query)?.display(),
        None => displayable(plan.as_ref()).indent(true).to_string(),
    })
}
