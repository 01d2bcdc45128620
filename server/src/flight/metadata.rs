//! Flight SQL metadata answers: SqlInfo, XDBC type info, key schemas.

use std::sync::{Arc, LazyLock};

use arrow::array::{Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity,
    SqlSupportedTransaction, XdbcDataType,
};

/// Server SqlInfo, built once.
pub(crate) static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Sluice");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, true);
    b.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlKeywords, KEYWORDS.as_slice());
    b.append(SqlInfo::SqlNumericFunctions, NUMERIC_FUNCTIONS.as_slice());
    b.append(SqlInfo::SqlStringFunctions, STRING_FUNCTIONS.as_slice());
    b.append(SqlInfo::SqlDatetimeFunctions, DATETIME_FUNCTIONS.as_slice());
    b.append(SqlInfo::SqlSystemFunctions, ["database", "user"].as_slice());
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlMaxColumnNameLength, 0i64);
    b.append(SqlInfo::SqlMaxColumnsInTable, 0i64);
    b.append(SqlInfo::SqlMaxStatementLength, 0i64);
    b.append(SqlInfo::SqlMaxStatements, 0i64);
    b.append(SqlInfo::SqlMaxTableNameLength, 0i64);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    b.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("static SqlInfo is valid")
});

const KEYWORDS: [&str; 24] = [
    "COPY",
    "CONNECTOR",
    "DESCRIBE",
    "ENFORCED",
    "EXPLAIN",
    "EXTERNAL",
    "FORMAT",
    "LOCATION",
    "OPTIONS",
    "OVERWRITE",
    "PARTITION",
    "PARTITIONED",
    "PIPELINE",
    "QUALIFY",
    "REPLACE",
    "SECRET",
    "SET",
    "SHOW",
    "STORED",
    "TABLES",
    "TEMPORARY",
    "UNBOUNDED",
    "VIEW",
    "WITH",
];

const NUMERIC_FUNCTIONS: [&str; 16] = [
    "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "exp", "floor", "ln", "log", "log10",
    "power", "round", "sqrt", "trunc",
];

const STRING_FUNCTIONS: [&str; 14] = [
    "ascii",
    "btrim",
    "concat",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "replace",
    "right",
    "rtrim",
    "split_part",
    "substr",
    "upper",
];

const DATETIME_FUNCTIONS: [&str; 8] = [
    "current_date",
    "current_time",
    "date_bin",
    "date_part",
    "date_trunc",
    "from_unixtime",
    "now",
    "to_timestamp",
];

/// Types Sluice's SQL accepts, for GetXdbcTypeInfo.
pub(crate) static XDBC_INFO: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let mut add = |name: &str, t: XdbcDataType, size: Option<i32>, prefix: Option<&str>| {
        let quoted = prefix.is_some();
        b.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type: t,
            column_size: size,
            literal_prefix: prefix.map(str::to_string),
            literal_suffix: prefix.map(|_| "'".to_string()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: quoted,
            searchable: Searchable::Full,
            unsigned_attribute: if quoted { None } else { Some(false) },
            fixed_prec_scale: false,
            auto_increment: Some(false),
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: t,
            datetime_subcode: None,
            num_prec_radix: if quoted { None } else { Some(10) },
            interval_precision: None,
        });
    };
    add("BOOLEAN", XdbcDataType::XdbcBit, Some(1), None);
    add("TINYINT", XdbcDataType::XdbcTinyint, Some(3), None);
    add("SMALLINT", XdbcDataType::XdbcSmallint, Some(5), None);
    add("INTEGER", XdbcDataType::XdbcInteger, Some(10), None);
    add("BIGINT", XdbcDataType::XdbcBigint, Some(19), None);
    add("REAL", XdbcDataType::XdbcReal, Some(24), None);
    add("DOUBLE", XdbcDataType::XdbcDouble, Some(53), None);
    add("DECIMAL", XdbcDataType::XdbcDecimal, Some(38), None);
    add("VARCHAR", XdbcDataType::XdbcVarchar, None, Some("'"));
    add("BYTEA", XdbcDataType::XdbcVarbinary, None, Some("'"));
    add("DATE", XdbcDataType::XdbcDate, Some(10), Some("DATE '"));
    add("TIME", XdbcDataType::XdbcTime, Some(15), Some("TIME '"));
    add(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        Some(26),
        Some("TIMESTAMP '"),
    );
    b.build().expect("static XDBC info is valid")
});

/// Result schema of GetPrimaryKeys (Flight SQL specification).
pub(crate) fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// The primary key columns of one table.
pub(crate) fn primary_keys_batch(
    catalog: &str,
    schema: &str,
    table: &str,
    columns: &[String],
) -> RecordBatch {
    let n = columns.len();
    RecordBatch::try_new(
        primary_keys_schema(),
        vec![
            Arc::new(StringArray::from(vec![Some(catalog); n])),
            Arc::new(StringArray::from(vec![Some(schema); n])),
            Arc::new(StringArray::from(vec![table; n])),
            Arc::new(StringArray::from_iter_values(columns.iter())),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(Int32Array::from_iter_values(1..=n as i32)),
        ],
    )
    .expect("primary key batch matches its schema")
}

/// Result schema of GetExportedKeys, GetImportedKeys and
/// GetCrossReference (Flight SQL specification).
pub(crate) fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// Result of a DDL, DML or SET statement: the affected row count.
pub(crate) fn update_count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::Int64,
        false,
    )]))
}

/// A one-row batch of [`update_count_schema`].
pub(crate) fn update_count_batch(rows: i64) -> RecordBatch {
    RecordBatch::try_new(
        update_count_schema(),
        vec![Arc::new(arrow::array::Int64Array::from(vec![rows]))],
    )
    .expect("count batch matches its schema")
}
