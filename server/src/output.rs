//! Query results on stdout: an aligned table, CSV or JSON lines.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

use crate::cli::OutputFormat;

/// Rows a table shows; the rest are counted, not printed.
const TABLE_ROW_LIMIT: usize = 10_000;

/// Streams `stream` to stdout; returns the number of rows.
pub(crate) async fn print_stream(
    mut stream: SendableRecordBatchStream,
    format: OutputFormat,
) -> Result<u64, DataFusionError> {
    let schema = stream.schema();
    let stdout = std::io::stdout();
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            let mut shown: Vec<RecordBatch> = vec![];
            let mut shown_rows = 0usize;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                if shown_rows < TABLE_ROW_LIMIT {
                    let take = (TABLE_ROW_LIMIT - shown_rows).min(batch.num_rows());
                    shown.push(batch.slice(0, take));
                    shown_rows += take;
                }
            }
            let mut out = stdout.lock();
            print_table(&mut out, &schema, &shown)?;
            if rows as usize > shown_rows {
                writeln!(
                    out,
                    "({} more rows not shown; use --format csv or json to stream all rows)",
                    rows as usize - shown_rows
                )?;
            }
        }
        OutputFormat::Csv => {
            let mut first = true;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                let mut buf = vec![];
                {
                    let mut w = arrow::csv::WriterBuilder::new()
                        .with_header(first)
                        .build(&mut buf);
                    w.write(&batch)?;
                }
                first = false;
                stdout.lock().write_all(&buf)?;
            }
            if first {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(stdout.lock(), "{}", names.join(","))?;
            }
        }
        OutputFormat::Json => {
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                let mut buf = vec![];
                {
                    let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
                    w.write(&batch)?;
                    w.finish()?;
                }
                stdout.lock().write_all(&buf)?;
            }
        }
    }
    stdout.lock().flush()?;
    Ok(rows)
}

fn print_table(
    out: &mut impl Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), DataFusionError> {
    if batches.is_empty() {
        let empty = RecordBatch::new_empty(std::sync::Arc::clone(schema));
        writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(&[empty])?
        )?;
    } else {
        writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(batches)?
        )?;
    }
    Ok(())
}
