//! Round trip through Azure Blob Storage's emulator (Azurite, installed by
//! `.ci/run` from the npm registry into `.node/`; the test container is
//! made with the `azure-storage-blob` package of the test virtualenv).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use sluice_sql_tests::{Failed, Trial};

use crate::support::{Scratch, check, files_below, run_command, wait_until};

pub(crate) fn trials() -> Vec<Trial> {
    vec![Trial::test(
        "azure::read_insert_overwrite_round_trip",
        round_trip,
    )]
}

/// Azurite's well-known development account key (public, in Azure's docs).
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azurite blob server on a free loopback port, killed on drop.
struct Azurite {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn azurite_bin() -> Result<PathBuf, Failed> {
    let bin = std::env::var_os("SLUICE_TEST_AZURITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.node/node_modules/.bin/azurite-blob")
        });
    if !bin.exists() {
        return Err(format!(
            "no Azure test server: {} does not exist; run .ci/run (it installs Azurite from npm \
             into .node/)",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

fn python() -> PathBuf {
    std::env::var_os("SLUICE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"))
        .join("bin/python")
}

/// Starts Azurite and makes container `lake`.
fn start() -> Result<Azurite, Failed> {
    let bin = azurite_bin()?;
    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(bin)
        .args([
            "--silent",
            "--skipApiVersionCheck",
            "--blobHost",
            "127.0.0.1",
        ])
        .args(["--blobPort", &port.to_string()])
        .arg("--location")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Azurite {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    if !wait_until(60, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        return Err("Azurite did not start listening".into());
    }
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};\
         BlobEndpoint={}/devstoreaccount1;",
        server.url
    );
    let status = Command::new(python())
        .args([
            "-c",
            "import sys; from azure.storage.blob import BlobServiceClient; \
             BlobServiceClient.from_connection_string(sys.argv[1]).create_container('lake')",
            &connection,
        ])
        .status()?;
    if !status.success() {
        return Err(
            "could not create the test container (is azure-storage-blob in the test \
                    virtualenv? run .ci/run)"
                .into(),
        );
    }
    Ok(server)
}

/// Append, partition overwrite and whole-table overwrite of a partitioned
/// Parquet table on `az://`, read back each time; the emulator is chosen
/// with a table option, so nothing else (no local file) holds the table.
fn round_trip() -> Result<(), Failed> {
    let server = start()?;
    let s = Scratch::new();
    s.write(
        "in/orders.csv",
        "id,amount,dt\n1,10,2024-01-01\n2,20,2024-01-01\n3,30,2024-01-02\n",
    );
    let declare = "CREATE EXTERNAL TABLE src STORED AS CSV LOCATION 'in/orders.csv';\n\
        CREATE TABLE lake (id BIGINT, amount BIGINT, dt VARCHAR) PARTITIONED BY (dt)\n\
        WITH ('connector' = 'filesystem', 'path' = 'az://lake/orders/', 'format' = 'parquet',\n\
        'azure.use_emulator' = 'true');\n";
    let sluice = |sql: &str| {
        let mut c = s.sluice();
        c.args(["run", "-q", "--format", "csv", "-e"])
            .arg(format!("{declare}{sql}"))
            .env("AZURITE_BLOB_STORAGE_URL", &server.url);
        run_command(c, None)
    };
    crate::s3::file_table_round_trip("az://", &sluice)?;
    if !files_below(s.path()).iter().all(|f| !f.contains("orders/")) {
        return Err("the table was written to the local disk, not to Azurite".into());
    }

    // A wrong account key is refused by the server, and the error says so.
    let o = {
        let mut c = s.sluice();
        c.args(["run", "-q", "-e"])
            .arg(format!(
                "{}SELECT count(*) FROM lake",
                declare.replace(
                    "'azure.use_emulator' = 'true'",
                    "'azure.use_emulator' = 'true', 'azure.access_key' = 'AAAA'"
                )
            ))
            .env("AZURITE_BLOB_STORAGE_URL", &server.url);
        run_command(c, None)
    };
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    check(
        o.status.code() != Some(0) && err.contains("az://lake/orders/"),
        "a wrong key fails naming the location",
        &o,
    )?;
    Ok(())
}
