//! The embedded coordinator: runs a write job's tasks and drives the sink's
//! two-phase commit.
//!
//! Every task (input partition of the [`SinkExec`]) stages its output and
//! returns a commit message. One message per task wins; when all tasks
//! succeed the sink commits once, otherwise it aborts and nothing is
//! published.
//!
//! A statement set ([`run_write_set`]) stages all its jobs first; any
//! failure aborts every sink. Then each sink prepares its publish, in the
//! set's order (a failure rolls back the prepared ones and aborts all);
//! then the sinks that could not prepare publish, then the prepared ones
//! commit. A failure while publishing swaps back the targets already
//! published that can be undone (file tables, MySQL and ClickHouse
//! overwrites), so only the others stay published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned};
use sluice_connectors::sink::decode_commit_messages;
use sluice_connectors::{CommitMessage, CommitOutcome, JobCommit, PreparedCommit, Revocable};
use sluice_planner::error::PlannerError;
use sluice_planner::shared_scan::SharedScanConsumerExec;
use sluice_planner::{WriteJob, WriteSet};

use crate::staged::StagedRuntime;
use crate::streaming::StreamingRuntime;

/// How a job's stage graph runs, when it is cut into stages at all.
#[derive(Debug, Clone)]
pub enum StageRuntime {
    /// Staged batch: stage by stage through the shuffle store.
    Staged(StagedRuntime),
    /// Streaming: every task at once, live exchanges.
    Streaming(StreamingRuntime),
}

impl StageRuntime {
    /// Runs a query; the stream yields the result stage's rows.
    pub async fn run_query(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> datafusion::error::Result<datafusion::execution::SendableRecordBatchStream> {
        match self {
            Self::Staged(r) => r.run_query(plan, ctx).await,
            Self::Streaming(r) => r.run_query(plan, ctx).await,
        }
    }

    /// Runs a write job; returns the sink tasks' commit messages and the
    /// rows the sources read.
    pub async fn run_write(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        ctx: Arc<TaskContext>,
    ) -> datafusion::error::Result<(Vec<CommitMessage>, u64)> {
        match self {
            Self::Staged(r) => r.run_write(plan, ctx).await,
            Self::Streaming(r) => r.run_write(plan, ctx).await,
        }
    }

    /// The stage graph `plan` runs as.
    pub fn stage_graph(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        result_as_one_task: bool,
    ) -> datafusion::error::Result<sluice_planner::stages::StageGraph> {
        match self {
            Self::Staged(r) => r.stage_graph(plan, result_as_one_task),
            Self::Streaming(r) => r.stage_graph(plan, result_as_one_task),
        }
    }
}

/// How often a running job renews its sink lease.
const HEARTBEAT: Duration = Duration::from_secs(60);

/// Runs `job` to completion and commits it, or aborts it on any failure.
/// With `staged`, the plan runs as a stage graph (staged batch or streaming).
/// Returns the commit's outcome and the rows the sources read.
pub async fn run_write(
    job: &WriteJob,
    ctx: Arc<TaskContext>,
    staged: Option<&StageRuntime>,
) -> Result<(CommitOutcome, Option<u64>), PlannerError> {
    job.sink.begin(&job.job_id).await?;
    let heartbeat = heartbeat(job);
    let result = match staged {
        Some(runtime) => runtime
            .run_write(Arc::clone(&job.plan), ctx)
            .await
            .map(|(messages, rows)| (keep_winners(messages), Some(rows))),
        None => run_tasks(Arc::clone(&job.plan), ctx)
            .await
            .map(|m| (m, rows_read(&job.plan))),
    };
    drop(heartbeat);
    let (messages, rows_read) = match result {
        Ok(m) => m,
        Err(e) => {
            abort(job).await;
            return Err(e.into());
        }
    };
    let commit = JobCommit {
        job_id: job.job_id.clone(),
        run_id: job.run_id.clone(),
        force: job.force,
        messages,
    };
    match job.sink.commit(commit).await {
        Ok(outcome) => Ok((outcome, rows_read)),
        Err(e) => {
            abort(job).await;
            Err(e.into())
        }
    }
}

/// Renews `job`'s sink lease until dropped.
fn heartbeat(job: &WriteJob) -> SpawnedTask<()> {
    let sink = Arc::clone(&job.sink);
    let job_id = job.job_id.clone();
    SpawnedTask::spawn(async move {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if let Err(e) = sink.heartbeat(&job_id).await {
                tracing::warn!(%job_id, error = %e, "could not renew the job's sink lease");
            }
        }
    })
}

/// Runs a statement set: stages every job, then publishes them all, or
/// none if anything fails before the final commits (see the module doc).
/// Returns each job's outcome, in order, and the rows the set's sources
/// read (a shared scan counted once).
pub async fn run_write_set(
    set: &WriteSet,
    ctx: Arc<TaskContext>,
    staged: Option<&StageRuntime>,
) -> Result<(Vec<CommitOutcome>, Option<u64>), PlannerError> {
    let all: Vec<usize> = (0..set.jobs.len()).collect();
    for (k, job) in set.jobs.iter().enumerate() {
        if let Err(e) = job.sink.begin(&job.job_id).await {
            abort_jobs(set, &all).await;
            return Err(set.error(k, e.into()));
        }
    }
    let heartbeats: Vec<SpawnedTask<()>> = set.jobs.iter().map(heartbeat).collect();
    let result = stage_set(set, ctx, staged).await;
    drop(heartbeats);
    let (messages, rows_read) = match result {
        Ok(r) => r,
        Err((k, e)) => {
            abort_jobs(set, &all).await;
            return Err(set.error(k, e));
        }
    };

    // Prepare every publish, in order; nothing is visible yet.
    let mut prepared: Vec<(usize, Box<dyn PreparedCommit + '_>)> = vec![];
    for (k, (job, messages)) in set.jobs.iter().zip(messages).enumerate() {
        let commit = JobCommit {
            job_id: job.job_id.clone(),
            run_id: job.run_id.clone(),
            force: job.force,
            messages,
        };
        match job.sink.prepare_commit(commit).await {
            Ok(p) => prepared.push((k, p)),
            Err(e) => {
                roll_back(set, prepared).await;
                abort_jobs(set, &all).await;
                return Err(set.error(k, e.into()));
            }
        }
    }

    // Publish: sinks that could not prepare first (their commit does the
    // whole publish and may fail like any commit), then the prepared ones
    // (their commit is a plain COMMIT), each group in the set's order. A
    // publish that can be undone keeps the target's previous contents
    // aside until every target has published.
    prepared.sort_by_key(|(k, p)| (!p.is_deferred(), *k));
    let mut outcomes: Vec<Option<CommitOutcome>> = vec![None; set.jobs.len()];
    let mut published: Vec<(usize, Option<Box<dyn Revocable>>)> = vec![];
    let mut pending = prepared.into_iter();
    while let Some((k, p)) = pending.next() {
        match p.commit_revocable().await {
            Ok((outcome, undo)) => {
                outcomes[k] = Some(outcome);
                published.push((k, undo));
            }
            Err(e) => {
                roll_back(set, pending.collect()).await;
                let was_published: Vec<usize> = published.iter().map(|(i, _)| *i).collect();
                let kept = swap_back(set, published).await;
                let unpublished: Vec<usize> =
                    (0..set.jobs.len()).filter(|i| !kept.contains(i)).collect();
                abort_jobs(set, &unpublished).await;
                let target = |i: &usize| set.jobs[*i].target.clone();
                let swapped = was_published.iter().filter(|i| !kept.contains(i));
                return Err(set.publish_error(
                    k,
                    kept.iter().map(target).collect(),
                    swapped.map(target).collect(),
                    e.into(),
                ));
            }
        }
    }
    for (k, undo) in published {
        if let Some(undo) = undo
            && let Err(e) = undo.finish().await
        {
            tracing::warn!(target = %set.jobs[k].target, error = %e,
                "could not remove a target's previous contents; the sweep will");
        }
    }
    Ok((
        outcomes
            .into_iter()
            .map(|o| o.expect("every job published"))
            .collect(),
        rows_read,
    ))
}

/// Runs every job's tasks: all at once when pipelined (a shared scan feeds
/// them together), one job after the other in staged batch mode (which
/// shares nothing). Fails with the index of the first job that failed.
async fn stage_set(
    set: &WriteSet,
    ctx: Arc<TaskContext>,
    staged: Option<&StageRuntime>,
) -> Result<(Vec<Vec<CommitMessage>>, Option<u64>), (usize, PlannerError)> {
    if let Some(runtime) = staged {
        let mut messages = Vec::with_capacity(set.jobs.len());
        let mut rows = 0;
        for (k, job) in set.jobs.iter().enumerate() {
            let (m, r) = runtime
                .run_write(Arc::clone(&job.plan), Arc::clone(&ctx))
                .await
                .map_err(|e| (k, e.into()))?;
            messages.push(keep_winners(m));
            rows += r;
        }
        return Ok((messages, Some(rows)));
    }
    let runs = set.jobs.iter().enumerate().map(|(k, job)| {
        let ctx = Arc::clone(&ctx);
        async move {
            run_tasks(Arc::clone(&job.plan), ctx)
                .await
                .map_err(|e| (k, PlannerError::from(e)))
        }
    });
    let messages = futures::future::try_join_all(runs).await?;
    let rows = set
        .jobs
        .iter()
        .map(|j| rows_read(&j.plan))
        .chain(set.shared.iter().map(|s| rows_read(s.input())))
        .sum();
    Ok((messages, rows))
}

/// Rolls back prepared publishes; a failure is logged (the transaction
/// ends with its connection anyway).
async fn roll_back(set: &WriteSet, prepared: Vec<(usize, Box<dyn PreparedCommit + '_>)>) {
    for (k, p) in prepared {
        if let Err(e) = p.rollback().await {
            tracing::warn!(target = %set.jobs[k].target, error = %e, "could not roll back a prepared publish");
        }
    }
}

/// Undoes the publishes of a failed set, the latest first. Returns the
/// jobs whose publish stays (it could not be undone).
async fn swap_back(
    set: &WriteSet,
    published: Vec<(usize, Option<Box<dyn Revocable>>)>,
) -> Vec<usize> {
    let mut kept = vec![];
    for (k, undo) in published.into_iter().rev() {
        let target = &set.jobs[k].target;
        match undo {
            Some(undo) => match undo.swap_back().await {
                Ok(()) => tracing::info!(%target, "swapped the previous contents back"),
                Err(e) => {
                    tracing::error!(%target, error = %e, "could not swap the previous contents back");
                    kept.push(k);
                }
            },
            None => kept.push(k),
        }
    }
    kept.sort_unstable();
    kept
}

async fn abort_jobs(set: &WriteSet, jobs: &[usize]) {
    for &k in jobs {
        abort(&set.jobs[k]).await;
    }
}

async fn abort(job: &WriteJob) {
    if let Err(e) = job.sink.abort(&job.job_id).await {
        tracing::warn!(job_id = %job.job_id, error = %e, "could not remove staged data; `sluice gc` will");
    }
}

/// Runs every task of the plan concurrently and keeps one commit message per task.
async fn run_tasks(
    plan: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
) -> Result<Vec<CommitMessage>, DataFusionError> {
    let partitions = collect_partitioned(plan, ctx).await?;
    let mut messages = Vec::new();
    for batch in partitions.iter().flatten() {
        messages.extend(decode_commit_messages(batch)?);
    }
    Ok(keep_winners(messages))
}

/// One commit message per task: the first one reported.
fn keep_winners(messages: Vec<CommitMessage>) -> Vec<CommitMessage> {
    let mut winners: BTreeMap<u64, CommitMessage> = BTreeMap::new();
    for m in messages {
        winners.entry(m.task).or_insert(m);
    }
    winners.into_values().collect()
}

/// Rows read by the leaves of an executed plan. A shared scan's leaf
/// counts nothing: the set counts its input once.
pub fn rows_read(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let children = plan.children();
    if plan.downcast_ref::<SharedScanConsumerExec>().is_some() {
        return Some(0);
    }
    if children.is_empty() {
        return plan
            .metrics()
            .and_then(|m| m.output_rows())
            .map(|n| n as u64);
    }
    children.into_iter().map(rows_read).sum()
}
