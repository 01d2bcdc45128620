//! Planning `EXECUTE STATEMENT SET`: every INSERT is bound to its sink, a
//! table that several INSERTs read is scanned once ([`SharedScan`]), and
//! each INSERT becomes a write job; the jobs run and publish together.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::common::TableReference;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder, TableScan};
use datafusion::physical_plan::{ExecutionPlan, displayable};
use sluice_connectors::Sink;

use super::{Planned, SluiceSession, StatementKind, WriteJob};
use crate::error::{PlannerError, Result};
use crate::parser::SetInsert;
use crate::shared_scan::{SharedScan, SharedScanTable};

/// An INSERT bound to its target, before physical planning.
pub(super) struct BoundInsert {
    pub(super) kind: StatementKind,
    pub(super) plan: LogicalPlan,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) run_id: Option<String>,
}

/// The writes of a statement set: they stage concurrently and publish only
/// when all have staged.
#[derive(Debug)]
pub struct WriteSet {
    /// One job per INSERT, in the set's order.
    pub jobs: Vec<WriteJob>,
    /// Where each INSERT starts in the statement (1-based line, column).
    pub positions: Vec<(u64, u64)>,
    /// Scans read once for several jobs.
    pub shared: Vec<Arc<SharedScan>>,
}

impl WriteSet {
    /// The set's plans as text: the shared scans, then each job's plan as
    /// `plan_text` renders it.
    pub fn display<E>(
        &self,
        plan_text: impl Fn(&Arc<dyn ExecutionPlan>) -> Result<String, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for s in &self.shared {
            out.push_str(&format!(
                "-- {} is read once, for {} INSERTs (SharedScanExec):\n{}",
                s.table(),
                s.consumers(),
                displayable(s.input().as_ref()).indent(true)
            ));
        }
        for (k, job) in self.jobs.iter().enumerate() {
            out.push_str(&format!(
                "-- INSERT {} of {}: {} {}\n{}",
                k + 1,
                self.jobs.len(),
                job.kind.label(),
                job.target,
                plan_text(&job.plan)?
            ));
        }
        Ok(out)
    }

    /// `error` of INSERT `index` (0-based), naming it and its target.
    pub fn error(&self, index: usize, error: PlannerError) -> PlannerError {
        self.publish_error(index, vec![], vec![], error)
    }

    /// `error` of INSERT `index` (0-based) while the set published: the
    /// targets that stay `published` and those `swapped_back`.
    pub fn publish_error(
        &self,
        index: usize,
        published: Vec<String>,
        swapped_back: Vec<String>,
        error: PlannerError,
    ) -> PlannerError {
        let (line, column) = self.positions.get(index).copied().unwrap_or((1, 1));
        PlannerError::StatementSet {
            index: index + 1,
            target: self
                .jobs
                .get(index)
                .map(|j| j.target.clone())
                .unwrap_or_default(),
            line,
            column,
            published,
            swapped_back,
            source: Box::new(error),
        }
    }
}

/// A table scan of one INSERT's plan, identified by its provider.
struct ScanRef {
    /// Address of the table provider (the same table in every INSERT).
    provider: usize,
    name: TableReference,
    source: Arc<dyn datafusion::logical_expr::TableSource>,
}

/// The table scans of `plan` outside expression subqueries.
fn scans(plan: &LogicalPlan) -> Result<Vec<ScanRef>> {
    let mut out = vec![];
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
        {
            out.push(ScanRef {
                provider: Arc::as_ptr(&provider) as *const () as usize,
                name: scan.table_name.clone(),
                source: Arc::clone(&scan.source),
            });
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(out)
}

fn has_recursive_query(plan: &LogicalPlan) -> Result<bool> {
    Ok(plan.exists(|node| Ok(matches!(node, LogicalPlan::RecursiveQuery(_))))?)
}

/// Which tables to share, and the INSERTs (indexes) reading each: tables
/// read by two or more INSERTs, each reading it once. A table is left out
/// when sharing it would make two INSERTs read two shared scans each: two
/// such INSERTs could each wait on the scan the other does not read yet
/// (e.g. hash joins building on different sides), and the bounded fan-out
/// would deadlock.
fn choose_shared(per_insert: &[Vec<ScanRef>]) -> Vec<(usize, Vec<usize>)> {
    // provider -> (first appearance, readers)
    let mut readers: BTreeMap<usize, (usize, Vec<usize>)> = BTreeMap::new();
    let mut order = 0;
    for (i, scans) in per_insert.iter().enumerate() {
        for s in scans {
            let once = scans.iter().filter(|o| o.provider == s.provider).count() == 1;
            let entry = readers.entry(s.provider).or_insert_with(|| {
                order += 1;
                (order, vec![])
            });
            if once && !entry.1.contains(&i) {
                entry.1.push(i);
            }
        }
    }
    let mut candidates: Vec<(usize, usize, Vec<usize>)> = readers
        .into_iter()
        .filter(|(_, (_, r))| r.len() >= 2)
        .map(|(p, (o, r))| (p, o, r))
        .collect();
    candidates.sort_by_key(|(_, o, r)| (std::cmp::Reverse(r.len()), *o));
    let mut shared_per_insert = vec![0usize; per_insert.len()];
    let mut chosen = vec![];
    for (provider, _, insert_readers) in candidates {
        let mut after = shared_per_insert.clone();
        for &i in &insert_readers {
            after[i] += 1;
        }
        if after.iter().filter(|n| **n >= 2).count() > 1 {
            continue;
        }
        shared_per_insert = after;
        chosen.push((provider, insert_readers));
    }
    chosen
}

impl SluiceSession {
    /// Plans `EXECUTE STATEMENT SET`: statement `index` of the script.
    pub(super) async fn plan_statement_set(
        &self,
        set: Vec<SetInsert>,
        index: usize,
    ) -> Result<Planned> {
        let base_run_id = self.run_id(index);
        let positions: Vec<(u64, u64)> = set.iter().map(|m| (m.line, m.column)).collect();
        let wrap = |k: usize, target: String, e: PlannerError| PlannerError::StatementSet {
            index: k + 1,
            target,
            line: positions[k].0,
            column: positions[k].1,
            published: vec![],
            swapped_back: vec![],
            source: Box::new(e),
        };
        let mut bound: Vec<BoundInsert> = Vec::with_capacity(set.len());
        for (k, member) in set.into_iter().enumerate() {
            let named = member.insert.table.to_string();
            let run_id = base_run_id.as_ref().map(|r| format!("{r}.{}", k + 1));
            let b = self
                .bind_insert(*member.insert, run_id)
                .await
                .map_err(|e| wrap(k, named.clone(), e))?;
            if let Some(first) = bound
                .iter()
                .position(|o| o.sink.target() == b.sink.target())
            {
                return Err(wrap(
                    k,
                    named,
                    PlannerError::Unsupported {
                        what: format!(
                            "writing {} twice in one statement set (INSERT {} and {})",
                            b.sink.target(),
                            first + 1,
                            k + 1
                        ),
                        hint: "write each target once: combine the queries with UNION ALL".into(),
                    },
                ));
            }
            bound.push(b);
        }

        // Stage graphs (batch and streaming mode) run each job on its own;
        // a scan shared across jobs would tie their stages together,
        // so each INSERT reads its sources itself.
        let mut shared = vec![];
        if !self.options().cuts_stages() {
            let mut per_insert = Vec::with_capacity(bound.len());
            for b in &bound {
                per_insert.push(if has_recursive_query(&b.plan)? {
                    vec![]
                } else {
                    scans(&b.plan)?
                });
            }
            for (provider, readers) in choose_shared(&per_insert) {
                let scan = per_insert
                    .iter()
                    .flatten()
                    .find(|s| s.provider == provider)
                    .expect("a chosen table is scanned");
                let full =
                    LogicalPlanBuilder::scan(scan.name.clone(), Arc::clone(&scan.source), None)?
                        .build()?;
                let input = self.ctx.state().create_physical_plan(&full).await?;
                let table = Arc::new(SharedScan::new(scan.name.to_string(), input, readers.len()));
                for (consumer, &i) in readers.iter().enumerate() {
                    let source = provider_as_source(Arc::new(SharedScanTable::new(
                        Arc::clone(&table),
                        consumer,
                    )));
                    let plan = std::mem::replace(
                        &mut bound[i].plan,
                        LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                            produce_one_row: false,
                            schema: Arc::new(datafusion::common::DFSchema::empty()),
                        }),
                    );
                    bound[i].plan = plan
                        .transform_down(|node| {
                            Ok(match node {
                                LogicalPlan::TableScan(scan)
                                    if source_as_provider(&scan.source).is_ok_and(|p| {
                                        Arc::as_ptr(&p) as *const () as usize == provider
                                    }) =>
                                {
                                    Transformed::yes(LogicalPlan::TableScan(TableScan {
                                        source: Arc::clone(&source),
                                        ..scan
                                    }))
                                }
                                other => Transformed::no(other),
                            })
                        })?
                        .data;
                }
                shared.push(table);
            }
        }

        let mut jobs = Vec::with_capacity(bound.len());
        for (k, b) in bound.into_iter().enumerate() {
            let target = b.sink.target();
            match self
                .write_job(b.kind, b.plan, b.sink, b.run_id)
                .await
                .map_err(|e| wrap(k, target, e))?
            {
                Planned::Write(job) => jobs.push(job),
                _ => unreachable!("write_job plans a write"),
            }
        }
        Ok(Planned::WriteSet(WriteSet {
            jobs,
            positions,
            shared,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(providers: &[usize]) -> Vec<ScanRef> {
        providers
            .iter()
            .map(|p| ScanRef {
                provider: *p,
                name: TableReference::bare(format!("t{p}")),
                source: provider_as_source(Arc::new(
                    datafusion::datasource::empty::EmptyTable::new(Arc::new(
                        arrow::datatypes::Schema::empty(),
                    )),
                )),
            })
            .collect()
    }

    #[test]
    fn shares_tables_read_once_by_several_inserts() {
        // Table 1 is read by all three INSERTs; table 2 twice by INSERT 0
        // (a self-join: not shared there) and once by INSERT 1 and 2.
        let chosen = choose_shared(&[refs(&[1, 2, 2]), refs(&[1, 2]), refs(&[1, 2])]);
        assert_eq!(chosen, vec![(1, vec![0, 1, 2])]);
        // Two INSERTs reading the same two tables: only one is shared.
        let chosen = choose_shared(&[refs(&[1, 2]), refs(&[2, 1])]);
        assert_eq!(chosen.len(), 1);
        // One INSERT may read two shared scans when no other does.
        let chosen = choose_shared(&[refs(&[1, 2]), refs(&[1]), refs(&[2])]);
        assert_eq!(chosen.len(), 2);
        // Nothing in common.
        assert!(choose_shared(&[refs(&[1]), refs(&[2])]).is_empty());
    }
}
