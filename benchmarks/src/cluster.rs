//! A loopback cluster of real `sluice` processes for `tpch-staged
//! --cluster`: a shuffle worker, a coordinator and two executors sharing a
//! shuffle directory, queried over Flight SQL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use sluice_server::engine::FlightEngineFactory;
use sluice_sql_tests::{Engine, EngineFactory, EngineOutput, FileContext};

/// The processes, killed when dropped, and a Flight SQL session.
pub(crate) struct LoopbackCluster {
    children: Vec<Child>,
    engine: Box<dyn Engine>,
    _dir: tempfile::TempDir,
}

impl Drop for LoopbackCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &Path, what: &str, child: &mut Child) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening");
        }
        if Instant::now() > deadline {
            bail!("{what} did not write {} within 60 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::to_string)
        .collect())
}

fn spawn(sluice: &Path, dir: &Path, name: &str, args: &[&str]) -> Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Command::new(sluice)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", sluice.display()))
}

impl LoopbackCluster {
    /// Starts the cluster with `slots` task slots in all and
    /// `partitions` as the coordinator's target partitions.
    pub(crate) async fn start(
        sluice: Option<&PathBuf>,
        slots: usize,
        partitions: usize,
    ) -> Result<Self> {
        let sluice = match sluice {
            Some(p) => std::path::absolute(p)?,
            None => std::env::current_exe()?.with_file_name("sluice"),
        };
        if !sluice.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release --locked -p sluice-server \
                 -p sluice-bench`, or pass --sluice",
                sluice.display()
            );
        }
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let shuffle = d.join("shuffle").display().to_string();
        let mut children = Vec::new();
        let mut worker = spawn(
            &sluice,
            d,
            "worker",
            &[
                "shuffle-worker",
                "--bind",
                "127.0.0.1:0",
                "--store",
                &shuffle,
                "--memory-limit",
                "512MiB",
                "--listen-file",
                "worker.listen",
            ],
        )?;
        let w = wait_for(&d.join("worker.listen"), "the shuffle worker", &mut worker);
        children.push(worker);
        let worker_url = format!("http://{}", w?[0]);
        let mut coordinator = spawn(
            &sluice,
            d,
            "coordinator",
            &[
                "server",
                "--role",
                "coordinator",
                "--bind",
                "127.0.0.1:0",
                "--cluster-bind",
                "127.0.0.1:0",
                "--state",
                "state",
                "--shuffle-store",
                &shuffle,
                "--shuffle-worker",
                &worker_url,
                "--target-partitions",
                &partitions.to_string(),
                "--listen-file",
                "coordinator.listen",
            ],
        )?;
        let c = wait_for(
            &d.join("coordinator.listen"),
            "the coordinator",
            &mut coordinator,
        );
        children.push(coordinator);
        let c = c?;
        let sql = format!("http://{}", c[0]);
        let cluster = c
            .iter()
            .find_map(|l| l.strip_prefix("cluster="))
            .context("the coordinator's listen file has no cluster= line")?;
        let per_executor = (slots / 2).max(1).to_string();
        for i in 0..2 {
            let listen = format!("executor{i}.listen");
            let mut e = spawn(
                &sluice,
                d,
                &format!("executor{i}"),
                &[
                    "executor",
                    "--coordinator",
                    &format!("http://{cluster}"),
                    "--slots",
                    &per_executor,
                    "--bind",
                    "127.0.0.1:0",
                    "--listen-file",
                    &listen,
                ],
            )?;
            let r = wait_for(&d.join(&listen), "an executor", &mut e);
            children.push(e);
            r?;
        }
        let ctx = FileContext {
            path: d.join("tpch.slt"),
            scratch_dir: d.to_path_buf(),
            vars: Default::default(),
        };
        let engine = FlightEngineFactory::new(sql)
            .create(&ctx)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the coordinator: {e}"))?;
        Ok(Self {
            children,
            engine,
            _dir: dir,
        })
    }

    /// Runs a statement; the rows of a query.
    pub(crate) async fn run(&mut self, sql: &str) -> Result<Vec<RecordBatch>> {
        match self.engine.run(sql).await {
            Ok(EngineOutput::Rows { batches, .. }) => Ok(batches),
            Ok(_) => Ok(vec![]),
            Err(e) => bail!("{e}"),
        }
    }
}
