//! Which joins staged batch mode may broadcast.
//!
//! DataFusion's `JoinSelection` turns a hash join whose build side is small
//! into a `CollectLeft` join. Staged batch mode runs such a join as a
//! broadcast: the build side is one stage's output, read by every task of
//! the probe stage. That is only correct for joins that never emit
//! unmatched build-side rows (inner and right-side joins): for Left,
//! LeftSemi, LeftAnti, LeftMark and Full joins, each task would emit the
//! build rows it did not match, so rows would be duplicated. This rule,
//! placed right after `JoinSelection`, turns those back into partitioned
//! joins before distribution is enforced. Null-aware anti joins stay
//! `CollectLeft` (they need the whole probe side) and run in one task.
//! Streaming mode cuts the same stage graphs, so the rule applies there
//! too; with an unset mode it changes nothing.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};

use crate::config::SluiceOptions;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct BroadcastSafeJoins;

/// Join types whose `CollectLeft` form emits only matched build rows, so
/// the build side can be copied to every probe task.
pub fn broadcast_safe(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
    )
}

impl PhysicalOptimizerRule for BroadcastSafeJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = config
            .extensions
            .get::<SluiceOptions>()
            .is_some_and(|o| o.cuts_stages());
        if !batch {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if *join.partition_mode() != PartitionMode::CollectLeft
                || join.null_aware
                || broadcast_safe(*join.join_type())
            {
                return Ok(Transformed::no(node));
            }
            let partitioned = join
                .builder()
                .with_partition_mode(PartitionMode::Partitioned)
                .build()?;
            Ok(Transformed::yes(
                Arc::new(partitioned) as Arc<dyn ExecutionPlan>
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "sluice_broadcast_safe_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// DataFusion's physical optimizer rules with [`BroadcastSafeJoins`] right
/// after `join_selection`.
pub fn physical_optimizer_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map_or(0, |i| i + 1);
    rules.insert(at, Arc::new(BroadcastSafeJoins));
    rules
}
