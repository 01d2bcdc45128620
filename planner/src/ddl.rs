//! Column definitions to schemas, and table specs back to DDL text.

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::ColumnDef;
use sluice_connectors::TableSpec;

use crate::error::{PlannerError, Result};
use crate::session::external_for_schema;

/// The arrow schema of SQL column definitions, with DataFusion's type mapping.
pub(crate) async fn schema_of(ctx: &SessionContext, columns: &[ColumnDef]) -> Result<SchemaRef> {
    let plan = ctx
        .state()
        .statement_to_plan(external_for_schema(columns.to_vec()))
        .await?;
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) => {
            Ok(std::sync::Arc::new(cmd.schema.as_arrow().clone()))
        }
        other => Err(PlannerError::DataFusion(
            datafusion::error::DataFusionError::Internal(format!(
                "unexpected plan for column definitions: {}",
                other.display()
            )),
        )),
    }
}

/// SQL name of an arrow type, for `SHOW CREATE TABLE`.
pub(crate) fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "TINYINT UNSIGNED".into(),
        DataType::UInt16 => "SMALLINT UNSIGNED".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(unit, tz) => {
            let p = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                TimeUnit::Microsecond => 6,
                TimeUnit::Nanosecond => 9,
            };
            match tz {
                Some(_) => format!("TIMESTAMP({p}) WITH TIME ZONE"),
                None => format!("TIMESTAMP({p})"),
            }
        }
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::Dictionary(_, v) => sql_type(v),
        other => format!("\"{other}\""),
    }
}

fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Canonical Flink-style DDL for a table; secrets print as `secret('NAME')`.
/// A catalog key as SQL: `schema.table` with each part quoted as needed.
pub(crate) fn render_key(key: &str) -> String {
    match key.split_once('.') {
        Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        None => quote_ident(key),
    }
}

pub(crate) fn render_create_table(spec: &TableSpec, temporary: bool) -> String {
    let mut lines = vec![];
    if let Some(schema) = &spec.columns {
        for f in schema.fields() {
            let null = if f.is_nullable() { "" } else { " NOT NULL" };
            lines.push(format!(
                "  {} {}{}",
                quote_ident(f.name()),
                sql_type(f.data_type()),
                null
            ));
        }
    }
    if !spec.primary_key.is_empty() {
        let pk: Vec<String> = spec.primary_key.iter().map(|c| quote_ident(c)).collect();
        lines.push(format!("  PRIMARY KEY ({}) NOT ENFORCED", pk.join(", ")));
    }
    for set in &spec.unique {
        let cols: Vec<String> = set.iter().map(|c| quote_ident(c)).collect();
        lines.push(format!("  UNIQUE ({})", cols.join(", ")));
    }
    let mut out = format!(
        "CREATE {}TABLE {} (\n{}\n)",
        if temporary { "TEMPORARY " } else { "" },
        render_key(&spec.name),
        lines.join(",\n")
    );
    if !spec.partition_cols.is_empty() {
        let p: Vec<String> = spec.partition_cols.iter().map(|c| quote_ident(c)).collect();
        out.push_str(&format!(" PARTITIONED BY ({})", p.join(", ")));
    }
    let mut opts = vec![format!("  'connector' = '{}'", spec.connector)];
    for (k, v) in spec.options.iter() {
        opts.push(format!("  '{k}' = {v}"));
    }
    out.push_str(&format!(" WITH (\n{}\n)", opts.join(",\n")));
    out
}
