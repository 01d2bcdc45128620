//! `sluice-bench shuffle-worker`: about 2 GB of shuffle blocks pushed
//! through one `sluice shuffle-worker` process by concurrent writers, then
//! read back. Reports throughput, the worker's peak RSS against its
//! `--memory-limit`, and peak `Dirty + Writeback` of the machine.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use futures::StreamExt;
use sluice_shuffle::format::encode_block;
use sluice_shuffle::{AttemptId, ShuffleClient, ShuffleCompression};

use crate::cli::ShuffleWorkerArgs;
use crate::staged::DirtySampler;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// Peak resident set (`VmHWM`) of `pid`, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn start(sluice: &Path, dir: &Path, limit: &str) -> Result<(Worker, String)> {
    let listen = dir.join("listen");
    let _ = std::fs::remove_file(&listen);
    let child = Command::new(sluice)
        .args([
            "shuffle-worker",
            "--bind",
            "127.0.0.1:0",
            "--memory-limit",
            limit,
        ])
        .arg("--listen-file")
        .arg(&listen)
        .arg("--store")
        .arg(dir.join("store"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", sluice.display()))?;
    let worker = Worker(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !listen.exists() {
        if Instant::now() > deadline {
            bail!("the shuffle worker did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let addr = std::fs::read_to_string(&listen)?.trim().to_string();
    Ok((worker, format!("http://{addr}")))
}

/// Blocks of pseudo-random 64-bit values (they barely compress, so bytes
/// on the wire are about bytes in memory).
fn blocks(count: usize, rows: usize) -> Result<Vec<Bytes>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
    ]));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as i64
    };
    (0..count)
        .map(|_| {
            let a: Int64Array = (0..rows).map(|_| next()).collect();
            let b: Int64Array = (0..rows).map(|_| next()).collect();
            let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(a), Arc::new(b)])?;
            Ok(encode_block(&schema, &[batch], ShuffleCompression::Lz4)?)
        })
        .collect()
}

/// `sluice-bench shuffle-worker`.
pub(crate) fn run(args: &ShuffleWorkerArgs) -> Result<bool> {
    let limit = args
        .memory_limit
        .parse::<bytesize::ByteSize>()
        .map_err(|e| anyhow::anyhow!("--memory-limit {}: {e}", args.memory_limit))?
        .as_u64();
    let dir = tempfile::Builder::new()
        .prefix("sluice-worker-bench")
        .tempdir_in(&args.dir)?;
    let (worker, url) = start(&args.sluice, dir.path(), &args.memory_limit)?;
    let pid = worker.0.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // 4 MiB blocks (256K rows of two Int64 columns).
    let pool = Arc::new(blocks(16, 256 * 1024)?);
    let block_bytes: usize = pool.iter().map(|b| b.len()).sum::<usize>() / pool.len();
    let total_blocks = ((args.gb * 1e9) as usize / block_bytes).max(args.streams);
    let per_stream = total_blocks / args.streams;
    let sent_bytes = (per_stream * args.streams * block_bytes) as f64;
    let before = peak_rss(pid).unwrap_or(0);
    let sampler = DirtySampler::start();
    let (write, read) = rt.block_on(async {
        let client = ShuffleClient::connect(&url).await?;
        let t = Instant::now();
        let mut puts = Vec::new();
        for task in 0..args.streams {
            let client = client.clone();
            let pool = Arc::clone(&pool);
            let partitions = args.partitions;
            puts.push(tokio::spawn(async move {
                let id = AttemptId {
                    job: "bench".into(),
                    stage: 0,
                    task: task as u32,
                    attempt: 0,
                };
                let blocks = futures::stream::iter(0..per_stream).map(move |i| {
                    (
                        i % partitions,
                        256 * 1024,
                        pool[(i + task) % pool.len()].clone(),
                    )
                });
                client
                    .put_attempt(&id, partitions, ShuffleCompression::Lz4, blocks)
                    .await
            }));
        }
        let mut indexes = Vec::new();
        for p in puts {
            indexes.push(p.await??);
        }
        let write = t.elapsed();
        let t = Instant::now();
        let mut read_bytes = 0usize;
        for index in &indexes {
            let id = AttemptId {
                job: index.job.clone(),
                stage: index.stage,
                task: index.task,
                attempt: index.attempt,
            };
            for p in 0..args.partitions {
                let mut s = Box::pin(client.get(&id, p, None).await?);
                while let Some(block) = s.next().await {
                    read_bytes += block?.1.len();
                }
            }
        }
        let read = t.elapsed();
        if read_bytes as f64 != sent_bytes {
            bail!("read {read_bytes} bytes back, sent {sent_bytes}");
        }
        client.delete_job("bench").await?;
        Ok::<_, anyhow::Error>((write, read))
    })?;
    let dirty = sampler.stop();
    let peak = peak_rss(pid).unwrap_or(0);
    drop(worker);
    let gb = sent_bytes / 1e9;
    println!(
        "shuffle worker, --memory-limit {} ({} streams, {} partitions, {:.2} GB of 4 MiB blocks)",
        args.memory_limit, args.streams, args.partitions, gb
    );
    println!(
        "write {:.2} GB/s, read {:.2} GB/s",
        gb / write.as_secs_f64(),
        gb / read.as_secs_f64()
    );
    println!(
        "worker peak RSS: {} MiB (idle {} MiB) = {:.2} x the limit   (target: at most 1.5)",
        peak / (1 << 20),
        before / (1 << 20),
        peak as f64 / limit as f64
    );
    println!("peak Dirty+Writeback (/proc/meminfo): {} MiB", dirty / 1024);
    Ok(peak as f64 <= 1.5 * limit as f64)
}
