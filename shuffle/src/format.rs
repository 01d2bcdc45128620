//! The stored shuffle format.
//!
//! A map-task attempt writes **one data object** holding all of its output
//! partitions as *blocks*, plus a small JSON **index** that maps each output
//! partition to the byte ranges of its blocks. A block is a complete Arrow
//! IPC stream (schema, one or more record batches, end marker), compressed
//! with LZ4 or ZSTD, so a reader fetches a byte range and decodes it without
//! reading anything else, and a worker can store blocks as received.

use std::io::Cursor;
use std::str::FromStr;

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, GenericByteViewArray, RecordBatch};
use arrow::datatypes::ByteViewType;
use arrow::datatypes::SchemaRef;
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::SHUFFLE_FORMAT_VERSION;
use crate::error::{Result, ShuffleError};

/// Compression of the IPC blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ShuffleCompression {
    /// LZ4 frame: fast, the default.
    #[default]
    Lz4,
    /// ZSTD: smaller, slower.
    Zstd,
    /// No compression.
    None,
}

impl ShuffleCompression {
    fn ipc(self) -> Option<CompressionType> {
        match self {
            Self::Lz4 => Some(CompressionType::LZ4_FRAME),
            Self::Zstd => Some(CompressionType::ZSTD),
            Self::None => None,
        }
    }
}

impl FromStr for ShuffleCompression {
    type Err = ShuffleError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "lz4" | "" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd),
            "none" | "uncompressed" => Ok(Self::None),
            other => Err(ShuffleError::Config(format!(
                "unknown shuffle compression '{other}'; use 'lz4', 'zstd' or 'none'"
            ))),
        }
    }
}

impl std::fmt::Display for ShuffleCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
            Self::None => "none",
        })
    }
}

/// Where one block lives in an attempt's data object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRange {
    /// Byte offset in the data object.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Rows in the block.
    pub rows: u64,
}

/// The index of one map-task attempt's output: the small, versioned record
/// readers fetch before range-reading blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptIndex {
    /// [`SHUFFLE_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Job id.
    pub job: String,
    /// Stage id.
    pub stage: u32,
    /// Task index in the stage.
    pub task: u32,
    /// Attempt number of the task.
    pub attempt: u32,
    /// Block compression.
    pub compression: ShuffleCompression,
    /// Path of the data object, relative to the store.
    pub data: String,
    /// For each output partition, its blocks in write order.
    pub partitions: Vec<Vec<BlockRange>>,
    /// Rows written.
    pub rows: u64,
    /// Bytes in the data object.
    pub bytes: u64,
}

impl AttemptIndex {
    /// Decodes an index, refusing other format versions.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|e| ShuffleError::Corrupt(format!("shuffle index is not valid JSON: {e}")))?;
        if version.format_version != SHUFFLE_FORMAT_VERSION {
            return Err(ShuffleError::Version {
                what: "shuffle index",
                found: version.format_version,
                supported: SHUFFLE_FORMAT_VERSION,
            });
        }
        serde_json::from_slice(bytes)
            .map_err(|e| ShuffleError::Corrupt(format!("bad shuffle index: {e}")))
    }

    /// Encodes the index as JSON.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("an index always serialises"))
    }

    /// Rows of one output partition.
    pub fn partition_rows(&self, partition: usize) -> u64 {
        self.partitions
            .get(partition)
            .map(|b| b.iter().map(|r| r.rows).sum())
            .unwrap_or(0)
    }
}

/// Encodes `batches` (one partition's buffered rows) as one block.
pub fn encode_block(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    compression: ShuffleCompression,
) -> Result<Bytes> {
    let options = IpcWriteOptions::default().try_with_compression(compression.ipc())?;
    let mut out = Vec::with_capacity(
        batches
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum::<usize>()
            .min(64 << 20),
    );
    {
        let mut writer = StreamWriter::try_new_with_options(&mut out, schema, options)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(Bytes::from(out))
}

/// Rewrites string and binary view columns whose data buffers are mostly
/// unreferenced, so that they hold only the bytes their rows use.
///
/// `take` and `filter` (hash partitioning, join output) keep a view array's
/// data buffers whole: a piece of 10 rows can pin the megabytes of strings
/// its source batch held. Arrow IPC writes every referenced buffer in full,
/// so without this every block would carry those megabytes again, and the
/// writer's memory accounting would see them in every piece. Columns that
/// already use most of their buffers are left alone.
pub fn compact_views(batch: RecordBatch) -> RecordBatch {
    fn wasteful<T: ByteViewType + ?Sized>(a: &GenericByteViewArray<T>) -> bool {
        let held: usize = a.data_buffers().iter().map(|b| b.len()).sum();
        held > 2 * a.total_buffer_bytes_used() + 8 * 1024
    }
    let mut changed = false;
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| {
            if let Some(a) = c.as_string_view_opt()
                && wasteful(a)
            {
                changed = true;
                return Arc::new(a.gc()) as ArrayRef;
            }
            if let Some(a) = c.as_binary_view_opt()
                && wasteful(a)
            {
                changed = true;
                return Arc::new(a.gc()) as ArrayRef;
            }
            Arc::clone(c)
        })
        .collect();
    if !changed {
        return batch;
    }
    RecordBatch::try_new(batch.schema(), columns).expect("same schema, same row count")
}

/// Decodes one block.
pub fn decode_block(bytes: Bytes) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("row {i}")),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn view_columns_taken_from_big_batches_are_compacted_before_encoding() {
        use arrow::array::{StringViewArray, UInt32Array};
        let long = |i: usize| format!("customer name that is not inlined #{i:08}");
        let big = StringViewArray::from_iter_values((0..100_000).map(long));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "name",
            DataType::Utf8View,
            false,
        )]));
        let source = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(big)]).unwrap();
        // What a partitioner or a join hands the writer: 10 rows that still
        // reference the 100 000 rows' buffers.
        let piece = arrow::compute::take_record_batch(
            &source,
            &UInt32Array::from_iter_values((0..10).map(|i| i * 7_919)),
        )
        .unwrap();
        let none = ShuffleCompression::None;
        let pinned = encode_block(&schema, std::slice::from_ref(&piece), none).unwrap();
        let compact = compact_views(piece.clone());
        let block = encode_block(&schema, std::slice::from_ref(&compact), none).unwrap();
        assert!(pinned.len() > 1_000_000, "{}", pinned.len());
        assert!(block.len() < 4_096, "{}", block.len());
        assert_eq!(decode_block(block).unwrap(), vec![piece]);
        // Dense columns are returned as they are.
        let dense = compact_views(source.clone());
        assert!(Arc::ptr_eq(dense.column(0), source.column(0)));
    }

    #[test]
    fn blocks_round_trip_with_every_compression() {
        for compression in [
            ShuffleCompression::Lz4,
            ShuffleCompression::Zstd,
            ShuffleCompression::None,
        ] {
            let b = batch(1000);
            let bytes =
                encode_block(&b.schema(), &[b.clone(), b.slice(10, 5)], compression).unwrap();
            let back = decode_block(bytes).unwrap();
            assert_eq!(back.len(), 2);
            assert_eq!(back[0], b);
            assert_eq!(back[1], b.slice(10, 5));
        }
    }

    #[test]
    fn index_refuses_another_version() {
        let index = AttemptIndex {
            format_version: SHUFFLE_FORMAT_VERSION + 1,
            job: "j".into(),
            stage: 1,
            task: 0,
            attempt: 0,
            compression: ShuffleCompression::Lz4,
            data: "x".into(),
            partitions: vec![],
            rows: 0,
            bytes: 0,
        };
        let err = AttemptIndex::decode(&index.encode()).unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
    }
}
