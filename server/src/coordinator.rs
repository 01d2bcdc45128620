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

/// How often a running job renews its sink lease.
const HEARTBEAT: Duration = Duration::from_secs(60);

/// Runs `job` to completion and commits it, or aborts it on any failure.
pub async fn run_write(
    job: &WriteJob,
    ctx: Arc<TaskContext>,
) -> Result<CommitOutcome, PlannerError> {
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
    let result = run_tasks(Arc::clone(&job.plan), ctx).await;
    drop(heartbeat);
    let messages = match result {
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
        Ok(outcome) => Ok(outcome),
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
    let mut winners: BTreeMap<u64, CommitMessage> = BTreeMap::new();
    for batch in partitions.iter().flatten() {
        for m in decode_commit_messages(batch)? {
            winners.entry(m.task).or_insert(m);
        }
    }
    Ok(winners.into_values().collect())
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
