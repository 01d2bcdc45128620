//! Stage graph benchmarks, in-process:
//!
//! - `tpch-staged`: the 22 TPC-H queries, Sluice embedded (N task slots;
//!   `--mode batch` through the shuffle store, `--mode streaming` with
//!   live exchanges) against DataFusion alone with the same partitions,
//!   alternating, from the same build.
//! - `shuffle`: about 2 GB hash-partitioned through the shuffle writer and
//!   read back, against the same batches partitioned with DataFusion's
//!   partitioner and written and read as one IPC file per partition, with
//!   the same sync cadence as the shuffle tier's local writer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_expr::expressions::col;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_plan::common::collect;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::{ExecutionPlan, collect as collect_plan};
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_planner::{RunContext, parse_statement};
use sluice_server::embedded::{EmbeddedSession, Executed};
use sluice_shuffle::{
    AttemptId, ReadSpec, ShuffleCompression, ShuffleOutput, ShuffleReaderExec, ShuffleStore,
    ShuffleWriterExec, WriterOptions,
};
use sluice_sql_tests::tpch;

use crate::cli::{ShuffleArgs, TpchStagedArgs};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}

/// `sluice-bench tpch-staged`.
pub(crate) fn run_tpch(args: &TpchStagedArgs) -> Result<bool> {
    let data = tpch::generate_parquet(&args.data, args.scale_factor)
        .map_err(|e| anyhow::anyhow!("generating TPC-H data: {e}"))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = runtime(threads)?;
    rt.block_on(async {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().with_target_partitions(args.partitions),
        );
        for ddl in tpch::create_tables_sql(&data) {
            ctx.sql(&ddl).await?.collect().await?;
        }
        let shuffle = tempfile::tempdir()?;
        let session = EmbeddedSession::new(
            SessionConfig::new().with_target_partitions(args.partitions),
            RunContext::default(),
            false,
        );
        // The same tables through Sluice's own connectors, run in one
        // process without stages: separates what staging costs from what
        // Sluice's table providers cost.
        let direct = EmbeddedSession::new(
            SessionConfig::new().with_target_partitions(args.partitions),
            RunContext::default(),
            false,
        );
        for ddl in tpch::create_tables_sql(&data) {
            sluice(&direct, &ddl).await?;
        }
        let mut setup = vec![
            format!("SET 'execution.runtime-mode' = '{}'", args.mode),
            format!("SET 'sluice.task_slots' = '{}'", args.slots),
            format!("SET 'sluice.shuffle_dir' = '{}'", shuffle.path().display()),
        ];
        setup.extend(tpch::create_tables_sql(&data));
        for sql in &setup {
            sluice(&session, sql).await?;
        }
        let mut cluster = match args.cluster {
            true => {
                let mut c = crate::cluster::LoopbackCluster::start(
                    args.sluice.as_ref(),
                    args.slots,
                    args.partitions,
                )
                .await?;
                for ddl in tpch::create_tables_sql(&data) {
                    c.run(&ddl).await?;
                }
                c.run(&format!("SET 'execution.runtime-mode' = '{}'", args.mode))
                    .await?;
                Some(c)
            }
            false => None,
        };
        println!(
            "TPC-H SF{} from {}: {} runs, median per query; mode={}; target_partitions={}, task slots={}{}",
            args.scale_factor,
            data.display(),
            args.runs,
            args.mode,
            args.partitions,
            args.slots,
            if cluster.is_some() {
                "; cluster: coordinator, 2 executors, shuffle worker (loopback processes)"
            } else {
                ""
            }
        );
        println!(
            "{:<6} {:>14} {:>14} {:>14} {:>14} {:>8} {:>8} {:>8} {:>10}",
            "query",
            "datafusion s",
            "in-process s",
            if args.mode == "streaming" { "streaming s" } else { "staged s" },
            "cluster s",
            "in-proc",
            if args.mode == "streaming" { "stream" } else { "staged" },
            "cluster",
            "cl/staged"
        );
        let only: Option<Vec<&str>> = args.queries.as_deref().map(|q| q.split(',').collect());
        let (mut total_df, mut total_direct, mut total_staged, mut total_cluster) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut ok = true;
        for (name, sql) in tpch::QUERIES {
            if only.as_ref().is_some_and(|o| !o.contains(&name)) {
                continue;
            }
            let (mut df, mut dr, mut st, mut cl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.runs {
                let t = Instant::now();
                let expected = ctx.sql(sql).await?.collect().await?;
                df.push(t.elapsed());
                let t = Instant::now();
                let direct_rows = match sluice(&direct, sql).await? {
                    Executed::Rows { stream, .. } => collect(stream).await?,
                    _ => bail!("{name} did not return rows"),
                };
                dr.push(t.elapsed());
                if let Err(e) = tpch::compare_results(&expected, &direct_rows) {
                    eprintln!("{name}: in-process results differ: {e}");
                    ok = false;
                }
                let t = Instant::now();
                let actual = match sluice(&session, sql).await? {
                    Executed::Rows { stream, .. } => collect(stream).await?,
                    _ => bail!("{name} did not return rows"),
                };
                st.push(t.elapsed());
                if let Err(e) = tpch::compare_results(&expected, &actual) {
                    eprintln!("{name}: results differ: {e}");
                    ok = false;
                }
                if let Some(c) = cluster.as_mut() {
                    let t = Instant::now();
                    let rows = c.run(sql).await?;
                    cl.push(t.elapsed());
                    if let Err(e) = tpch::compare_results(&expected, &rows) {
                        eprintln!("{name}: cluster results differ: {e}");
                        ok = false;
                    }
                }
            }
            let (df, dr, st) = (median(df), median(dr), median(st));
            let cl = if cl.is_empty() { None } else { Some(median(cl)) };
            total_df += df;
            total_direct += dr;
            total_staged += st;
            total_cluster += cl.unwrap_or_default();
            print_row(name, df, dr, st, cl);
        }
        print_row(
            "total",
            total_df,
            total_direct,
            total_staged,
            cluster.as_ref().map(|_| total_cluster),
        );
        println!(
            "(ratios against DataFusion; targets: staged at most 1.5x, goal 1.3x; streaming at \
             most 1.2x; cl/staged: cluster against the embedded stage graph)"
        );
        Ok(ok)
    })
}

fn print_row(name: &str, df: Duration, dr: Duration, st: Duration, cl: Option<Duration>) {
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let (cl_s, cl_r, cl_st) = match cl {
        Some(c) => (
            format!("{:.3}", c.as_secs_f64()),
            format!("{:.2}x", ratio(c, df)),
            format!("{:.2}x", ratio(c, st)),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    println!(
        "{name:<6} {:>14.3} {:>14.3} {:>14.3} {cl_s:>14} {:>7.2}x {:>7.2}x {cl_r:>8} {cl_st:>10}",
        df.as_secs_f64(),
        dr.as_secs_f64(),
        st.as_secs_f64(),
        ratio(dr, df),
        ratio(st, df),
    );
}

async fn sluice(session: &EmbeddedSession, sql: &str) -> Result<Executed> {
    let stmt = parse_statement(sql).map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
    session
        .execute(stmt, 1, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {e}"))
}

/// `sluice-bench shuffle`.
pub(crate) fn run_shuffle(args: &ShuffleArgs) -> Result<bool> {
    let compression: ShuffleCompression = args
        .compression
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = runtime(2)?;
    rt.block_on(async {
        // TPC-H lineitem batches at SF 0.1, repeated up to the target size
        // (repeats share their buffers, so the input costs little memory).
        let base: Vec<RecordBatch> =
            tpchgen_arrow::LineItemArrow::new(tpchgen::generators::LineItemGenerator::new(0.1, 1, 1))
                .with_batch_size(8192)
                .collect::<Result<Vec<_>, _>>()?;
        let base_bytes: usize = base.iter().map(|b| b.get_array_memory_size()).sum();
        let target = (args.gb * 1e9) as usize;
        let repeats = target.div_ceil(base_bytes).max(1);
        let batches: Vec<RecordBatch> = (0..repeats).flat_map(|_| base.iter().cloned()).collect();
        let bytes = base_bytes * repeats;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        println!(
            "shuffle: {:.2} GB in memory ({rows} lineitem rows), hash on l_orderkey into {} partitions, {compression}; {} runs, medians",
            bytes as f64 / 1e9,
            args.partitions,
            args.runs
        );
        let dir = tempfile::tempdir_in(&args.dir)?;
        let (mut sw, mut sr, mut pw, mut pr) = (vec![], vec![], vec![], vec![]);
        let (mut sluice_dirty, mut files_dirty) = (0u64, 0u64);
        for run in 0..args.runs {
            let sampler = DirtySampler::start();
            let (w, r) = sluice_shuffle_round(&batches, dir.path(), args.partitions, compression, run).await?;
            sluice_dirty = sluice_dirty.max(sampler.stop());
            sw.push(w);
            sr.push(r);
            let sampler = DirtySampler::start();
            let (w, r) = ipc_files_round(&batches, dir.path(), args.partitions, compression, rows)?;
            files_dirty = files_dirty.max(sampler.stop());
            pw.push(w);
            pr.push(r);
        }
        let gbps = |d: Duration| bytes as f64 / 1e9 / d.as_secs_f64();
        let (sw, sr, pw, pr) = (median(sw), median(sr), median(pw), median(pr));
        println!("{:<28} {:>10} {:>10}", "", "write GB/s", "read GB/s");
        println!("{:<28} {:>10.2} {:>10.2}", "sluice shuffle (1 object)", gbps(sw), gbps(sr));
        println!("{:<28} {:>10.2} {:>10.2}", "IPC files (1 per partition)", gbps(pw), gbps(pr));
        println!(
            "peak Dirty+Writeback (/proc/meminfo): sluice {} MiB, IPC files {} MiB",
            sluice_dirty / 1024,
            files_dirty / 1024
        );
        println!(
            "ratio (sluice / files): write {:.2}, read {:.2}, round trip {:.2}   (target: at least 0.7)",
            pw.as_secs_f64() / sw.as_secs_f64(),
            pr.as_secs_f64() / sr.as_secs_f64(),
            (pw + pr).as_secs_f64() / (sw + sr).as_secs_f64()
        );
        Ok(true)
    })
}

async fn sluice_shuffle_round(
    batches: &[RecordBatch],
    dir: &Path,
    partitions: usize,
    compression: ShuffleCompression,
    run: u32,
) -> Result<(Duration, Duration)> {
    let schema = batches[0].schema();
    let store = ShuffleStore::local(dir.join("sluice"))?;
    let input = MemorySourceConfig::try_new_exec(&[batches.to_vec()], Arc::clone(&schema), None)?;
    let output = ShuffleOutput::Partitioned(Partitioning::Hash(
        vec![col("l_orderkey", &schema)?],
        partitions,
    ));
    let options = WriterOptions {
        compression,
        ..WriterOptions::default()
    };
    let template = ShuffleWriterExec::new(input, output, store.clone(), options);
    let id = AttemptId {
        job: format!("bench{run}"),
        stage: 0,
        task: 0,
        attempt: 0,
    };
    let writer = Arc::new(template.with_attempt(Arc::clone(template.input()), id.clone()));
    let ctx = SessionContext::new().task_ctx();
    let t = Instant::now();
    collect_plan(writer, Arc::clone(&ctx)).await?;
    let index = store.read_index(&id).await?;
    let write = t.elapsed();

    let reader = ShuffleReaderExec::new(
        0,
        ReadSpec::Partitions((0..partitions).collect()),
        store.clone(),
        None,
        EquivalenceProperties::new(Arc::clone(&schema)),
    );
    let reader: Arc<dyn ExecutionPlan> = Arc::new(reader.instance(
        ReadSpec::Partitions((0..partitions).collect()),
        Arc::new(vec![Arc::new(index.clone())]),
    ));
    let t = Instant::now();
    let mut read_rows = 0u64;
    for p in 0..partitions {
        let stream = reader.execute(p, Arc::clone(&ctx))?;
        for b in collect(stream).await? {
            read_rows += b.num_rows() as u64;
        }
    }
    let read = t.elapsed();
    if read_rows != index.rows {
        bail!("read {read_rows} rows back, wrote {}", index.rows);
    }
    store.delete_job(&id.job).await?;
    Ok((write, read))
}

fn ipc_files_round(
    batches: &[RecordBatch],
    dir: &Path,
    partitions: usize,
    compression: ShuffleCompression,
    rows: usize,
) -> Result<(Duration, Duration)> {
    let schema = batches[0].schema();
    let out = dir.join("files");
    std::fs::create_dir_all(&out)?;
    let ipc = match compression {
        ShuffleCompression::Lz4 => Some(CompressionType::LZ4_FRAME),
        ShuffleCompression::Zstd => Some(CompressionType::ZSTD),
        ShuffleCompression::None => None,
    };
    let options = IpcWriteOptions::default().try_with_compression(ipc)?;
    let t = Instant::now();
    let mut writers = (0..partitions)
        .map(|p| {
            let f = std::io::BufWriter::with_capacity(
                1 << 20,
                SyncedFile::new(std::fs::File::create(out.join(format!("{p}.arrows")))?),
            );
            Ok(StreamWriter::try_new_with_options(
                f,
                &schema,
                options.clone(),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut partitioner = BatchPartitioner::try_new(
        Partitioning::Hash(vec![col("l_orderkey", &schema)?], partitions),
        Time::new(),
        0,
        1,
    )?;
    for batch in batches {
        partitioner.partition(batch.clone(), |p, b| {
            writers[p]
                .write(&b)
                .map_err(|e| datafusion::error::DataFusionError::ArrowError(Box::new(e), None))
        })?;
    }
    // Same cadence as the shuffle writer: write-back every 8 MiB, then
    // fdatasync at the end.
    for mut w in writers {
        w.finish()?;
        let file = w
            .into_inner()?
            .into_inner()
            .map_err(|e| anyhow::anyhow!("flush: {}", e.error()))?;
        file.finish()?;
    }
    let write = t.elapsed();
    let t = Instant::now();
    let mut read_rows = 0;
    for p in 0..partitions {
        let f = std::io::BufReader::new(std::fs::File::open(out.join(format!("{p}.arrows")))?);
        for b in StreamReader::try_new(f, None)? {
            read_rows += b?.num_rows();
        }
    }
    let read = t.elapsed();
    if read_rows != rows {
        bail!("the IPC peer read {read_rows} rows back, wrote {rows}");
    }
    std::fs::remove_dir_all(&out)?;
    Ok((write, read))
}

/// A file written with the shuffle tier's local sync cadence: write-back of
/// each 8 MiB chunk is started as it completes, after waiting for the chunk
/// before it; `fdatasync` at the end. The peer of the shuffle writer must pay
/// for the same durability, or the ratio measures the page cache.
struct SyncedFile {
    file: std::fs::File,
    written: u64,
    flushed: u64,
}

impl SyncedFile {
    const CHUNK: u64 = 8 * 1024 * 1024;

    fn new(file: std::fs::File) -> Self {
        Self {
            file,
            written: 0,
            flushed: 0,
        }
    }

    fn write_back(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let (start, len) = (self.flushed as i64, (self.written - self.flushed) as i64);
        // SAFETY: `fd` belongs to `self.file`, open for the call.
        unsafe {
            if start > 0 {
                libc::sync_file_range(
                    fd,
                    0,
                    start,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            libc::sync_file_range(fd, start, len, libc::SYNC_FILE_RANGE_WRITE);
        }
        self.flushed = self.written;
    }

    fn finish(self) -> Result<()> {
        self.file.sync_data().context("fdatasync")
    }
}

impl std::io::Write for SyncedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushed >= Self::CHUNK {
            self.write_back();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Samples `Dirty + Writeback` of `/proc/meminfo` every 20 ms.
pub(crate) struct DirtySampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl DirtySampler {
    pub(crate) fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(dirty_kib());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Self { stop, handle }
    }

    /// Peak in KiB.
    pub(crate) fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

fn dirty_kib() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}
