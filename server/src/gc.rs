//! `sluice gc`: clean file tables of what dead jobs left behind.

use std::process::ExitCode;
use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use sluice_connectors::file::gc_table;
use sluice_connectors::{SecretResolver, StoreRegistry, TableOptions};

use crate::cli::GcArgs;
use crate::progress::human_bytes;

pub(crate) async fn run(args: GcArgs) -> ExitCode {
    let stores = StoreRegistry::new(Arc::new(RuntimeEnv::default()), SecretResolver::from_env());
    let mut failed = false;
    for location in &args.locations {
        let loc = match stores.resolve(location, &TableOptions::new()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {location}: {e}");
                failed = true;
                continue;
            }
        };
        match gc_table(&loc).await {
            Ok(r) => println!(
                "{}: removed {} dead job(s), {} object(s), {}; {} running job(s) left alone",
                loc.url,
                r.jobs_removed,
                r.objects_removed,
                human_bytes(r.bytes_removed),
                r.jobs_live
            ),
            Err(e) => {
                eprintln!("error: {}: {e}", loc.url);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
