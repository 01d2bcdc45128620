//! The embedded coordinator: runs a write job's tasks and drives the sink's
//! two-phase commit.
//!
//! Every task (input partition of the [`SinkExec`]) stages its output and
//! returns a commit message. One message per task wins; when all tasks
//! succeed the sink commits once, otherwise it aborts and nothing is
//! published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned};
use sluice_connectors::sink::decode_commit_messages;
use sluice_connectors::{CommitMessage, CommitOutcome, JobCommit};
use sluice_planner::WriteJob;
use sluice_planner::error::PlannerError;

use crate::staged::StagedRuntime;

/// How often a running job renews its sink lease.
const HEARTBEAT: Duration = Duration::from_secs(60);

/// Runs `job` to completion and commits it, or aborts it on any failure.
/// With `staged`, the plan runs stage by stage through the shuffle store.
/// Returns the commit's outcome and the rows the sources read.
pub async fn run_write(
    job: &WriteJob,
    ctx: Arc<TaskContext>,
    staged: Option<&StagedRuntime>,
) -> Result<(CommitOutcome, Option<u64>), PlannerError> {
    job.sink.begin(&job.job_id).await?;
    let heartbeat = {
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
    };
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

/// Rows read by the leaves of an executed plan.
pub fn rows_read(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let children = plan.children();
    if children.is_empty() {
        return plan
            .metrics()
            .and_then(|m| m.output_rows())
            .map(|n| n as u64);
    }
    children.into_iter().map(rows_read).sum()
}
