//! The `sluice-bench` harness end to end at a tiny scale factor, with the
//! DataFusion peer only: generation, the marker, measuring, output checks
//! and the report. (The benchmark itself is not a test.)

use std::process::{Command, Output};

fn sluice_bench(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(args)
        .arg("--data")
        .arg(data)
        .args(["--scale-factor", "0.001"])
        .output()
        .unwrap()
}

#[test]
fn j1_with_the_datafusion_peer() {
    let data = tempfile::tempdir().unwrap();
    let datafusion = env!("CARGO_BIN_EXE_j1_datafusion");
    let args = [
        "j1",
        "--runs",
        "2",
        "--peers",
        "datafusion",
        "--datafusion",
        datafusion,
    ];

    let first = sluice_bench(data.path(), &args);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        stderr.contains("generating TPC-H lineitem SF0.001"),
        "{stderr}"
    );
    let report = String::from_utf8_lossy(&first.stdout);
    assert!(report.contains("datafusion (rust)"), "{report}");
    assert!(report.contains("no Sluice measurement"), "{report}");

    // The marker matches: the data is not generated again.
    let second = sluice_bench(data.path(), &args);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(!stderr.contains("generating"), "{stderr}");
}

#[test]
fn a_failing_peer_fails_the_run() {
    let data = tempfile::tempdir().unwrap();
    // `false` exits 1 whatever its arguments.
    let out = sluice_bench(
        data.path(),
        &[
            "j1",
            "--runs",
            "1",
            "--peers",
            "datafusion",
            "--datafusion",
            "/bin/false",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("FAILED"), "{report}");
}
