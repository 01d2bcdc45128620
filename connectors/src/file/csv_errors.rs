//! Strict CSV reads whose errors name the file.
//!
//! A CSV table without `'error-handling.max-bad-records'` is read by
//! DataFusion's own CSV source, the fastest path. Its parse errors say the
//! value, the column and the line, but not the file. [`NamedCsvSource`]
//! wraps that source: every file it opens reports its errors as
//! `CSV file 'PATH' (bytes A..B): <DataFusion's message>`, with a hint on how
//! to skip bad rows instead. Everything else is the wrapped source's.
//!
//! Plans travel to executors as DataFusion's own CSV scan (the wrapper
//! serialises as the source it wraps); [`name_csv_errors`] puts the wrapper
//! back on a decoded plan.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::{
    CsvSource, FileOpenFuture, FileOpener, FileScanConfig, FileScanConfigBuilder, FileSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::{EquivalenceProperties, LexOrdering, PhysicalExpr};
use datafusion::physical_expr_common::sort_expr::PhysicalSortExpr;
use datafusion::physical_plan::filter_pushdown::FilterPushdownPropagation;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::projection::ProjectionExprs;
use datafusion::physical_plan::sort_pushdown::SortOrderPushdownResult;
use datafusion::physical_plan::{DisplayFormatType, ExecutionPlan};
use datafusion_datasource::PartitionedFile;
use datafusion_datasource::table_schema::TableSchema;
use futures::{FutureExt, StreamExt};
use object_store::ObjectStore;

/// A strict CSV source whose errors name the file they come from.
#[derive(Clone)]
pub struct NamedCsvSource {
    inner: Arc<dyn FileSource>,
}

impl fmt::Debug for NamedCsvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamedCsvSource").finish_non_exhaustive()
    }
}

impl NamedCsvSource {
    fn wrap(inner: Arc<dyn FileSource>) -> Arc<dyn FileSource> {
        if inner.as_ref().is::<NamedCsvSource>() {
            inner
        } else {
            Arc::new(Self { inner })
        }
    }
}

/// `plan` with every DataFusion CSV scan in it reporting the file of its
/// errors (see the module docs).
pub fn name_csv_errors(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        if !config.file_source.as_ref().is::<CsvSource>() {
            return Ok(Transformed::no(node));
        }
        let source = NamedCsvSource::wrap(Arc::clone(&config.file_source));
        let config = FileScanConfigBuilder::from(config.clone())
            .with_source(source)
            .build();
        Ok(Transformed::yes(
            DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|t| t.data)
}

impl FileSource for NamedCsvSource {
    fn create_file_opener(
        &self,
        object_store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        Ok(Arc::new(NamedOpener {
            base: display_base(base_config.object_store_url.as_str()),
            inner: self
                .inner
                .create_file_opener(object_store, base_config, partition)?,
        }))
    }

    fn table_schema(&self) -> &TableSchema {
        self.inner.table_schema()
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        Self::wrap(self.inner.with_batch_size(batch_size))
    }

    fn filter(&self) -> Option<Arc<dyn PhysicalExpr>> {
        self.inner.filter()
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        self.inner.projection()
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        self.inner.metrics()
    }

    fn file_type(&self) -> &str {
        self.inner.file_type()
    }

    fn fmt_extra(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.fmt_extra(t, f)
    }

    fn supports_repartitioning(&self) -> bool {
        self.inner.supports_repartitioning()
    }

    fn repartitioned(
        &self,
        target_partitions: usize,
        repartition_file_min_size: usize,
        output_ordering: Option<LexOrdering>,
        config: &FileScanConfig,
    ) -> Result<Option<FileScanConfig>> {
        self.inner.repartitioned(
            target_partitions,
            repartition_file_min_size,
            output_ordering,
            config,
        )
    }

    fn try_pushdown_filters(
        &self,
        filters: Vec<Arc<dyn PhysicalExpr>>,
        config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn FileSource>>> {
        let pushed = self.inner.try_pushdown_filters(filters, config)?;
        Ok(FilterPushdownPropagation {
            filters: pushed.filters,
            updated_node: pushed.updated_node.map(Self::wrap),
        })
    }

    fn try_pushdown_sort(
        &self,
        order: &[PhysicalSortExpr],
        eq_properties: &EquivalenceProperties,
    ) -> Result<SortOrderPushdownResult<Arc<dyn FileSource>>> {
        Ok(self
            .inner
            .try_pushdown_sort(order, eq_properties)?
            .map(Self::wrap))
    }

    fn reorder_files(&self, files: Vec<PartitionedFile>) -> Vec<PartitionedFile> {
        self.inner.reorder_files(files)
    }

    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> Result<Option<Arc<dyn FileSource>>> {
        Ok(self
            .inner
            .try_pushdown_projection(projection)?
            .map(Self::wrap))
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    /// Serialises as the wrapped source: executors read DataFusion's own
    /// CSV scan and wrap it again ([`name_csv_errors`]).
    fn try_to_proto(
        &self,
        base: &FileScanConfig,
        ctx: &datafusion::physical_plan::proto::ExecutionPlanEncodeCtx<'_>,
    ) -> Result<Option<datafusion_proto::protobuf::PhysicalPlanNode>> {
        self.inner.try_to_proto(base, ctx)
    }
}

/// The store URL files are named under: the scheme without the suffix
/// that tells credential sets apart (`s3+1f2e…://b/` is `s3://b/`).
fn display_base(store_url: &str) -> String {
    match store_url.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.split_once('+').map_or(scheme, |(s, _)| s);
            let rest = if rest.ends_with('/') {
                rest.to_string()
            } else {
                format!("{rest}/")
            };
            format!("{scheme}://{rest}")
        }
        None => store_url.to_string(),
    }
}

/// Opens files with the wrapped opener; their errors name the file.
struct NamedOpener {
    base: String,
    inner: Arc<dyn FileOpener>,
}

impl FileOpener for NamedOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let place = match &file.range {
            Some(r) => format!(
                "CSV file {}{} (its part from byte {} to {})",
                self.base, file.object_meta.location, r.start, r.end
            ),
            None => format!("CSV file {}{}", self.base, file.object_meta.location),
        };
        let opening = self.inner.open(file)?;
        Ok(async move {
            let place2 = place.clone();
            let stream = opening.await.map_err(|e| named(&place, e))?;
            Ok(stream
                .map(move |r| r.map_err(|e| named(&place2, e)))
                .boxed())
        }
        .boxed())
    }
}

/// `e` with the file it comes from; a bad value also says how to skip it.
fn named(place: &str, e: DataFusionError) -> DataFusionError {
    use arrow::error::ArrowError;
    match e {
        DataFusionError::ArrowError(a, backtrace) => match *a {
            ArrowError::ParseError(m) | ArrowError::CsvError(m) => DataFusionError::ArrowError(
                Box::new(ArrowError::ParseError(format!(
                    "{place}: {m}; fix the row, or let the table skip bad rows with \
                     'error-handling.max-bad-records' = 'N' (each skipped row is logged \
                     with its file and line)"
                ))),
                backtrace,
            ),
            other => DataFusionError::Context(
                place.to_string(),
                Box::new(DataFusionError::ArrowError(Box::new(other), backtrace)),
            ),
        },
        other => DataFusionError::Context(place.to_string(), Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_under_the_store_url_without_its_credential_suffix() {
        assert_eq!(display_base("file:///"), "file:///");
        assert_eq!(display_base("s3+00ff://lake"), "s3://lake/");
        assert_eq!(display_base("memory://"), "memory:///");
    }

    #[test]
    fn a_bad_value_names_the_file_and_stays_a_parse_error() {
        use arrow::error::ArrowError;
        let e = DataFusionError::ArrowError(
            Box::new(ArrowError::ParseError("value 'x' at line 3".into())),
            None,
        );
        let named = named("CSV file file:///d/a.csv", e);
        let text = named.to_string();
        assert!(
            text.contains("CSV file file:///d/a.csv: value 'x' at line 3; fix the row")
                && text.contains("max-bad-records"),
            "{text}"
        );
        assert!(matches!(
            named,
            DataFusionError::ArrowError(ref a, _) if matches!(**a, ArrowError::ParseError(_))
        ));
    }
}
