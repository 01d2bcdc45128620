//! One object-store registry for every connector.
//!
//! DataFusion finds a store by URL scheme and host only. A location whose
//! table options carry their own credentials (`aws.*`, `gcp.*`, `azure.*`) is
//! therefore registered under a made-up scheme (`s3+<hash>://bucket`), so two
//! credential sets on one bucket never collide. The hash is computed from the
//! options as declared (a secret contributes its name, not its value).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use url::Url;

use crate::error::{ConnectorError, Result};
use crate::options::TableOptions;
use crate::secrets::SecretResolver;

/// Option prefixes that configure object stores.
pub const STORE_OPTION_PREFIXES: &[&str] = &["aws.", "gcp.", "azure.", "http."];

/// A resolved table location: which store, and where in it.
#[derive(Debug, Clone)]
pub struct Location {
    /// The location as the user wrote it.
    pub original: String,
    /// The real URL (`file:///...`, `s3://bucket/prefix/`).
    pub url: Url,
    /// The URL the store is registered under in DataFusion.
    pub store_url: ObjectStoreUrl,
    /// Path of the location inside the store.
    pub path: Path,
    /// Whether the location names a directory (a table of many files) rather
    /// than one file.
    pub is_dir: bool,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The same store's multipart API, where it has one (S3, GCS, Azure,
    /// memory): uploads whose id the caller records, to abort them after a
    /// crash.
    pub multipart: Option<MultipartApi>,
}

/// A store's multipart API.
#[derive(Clone)]
pub struct MultipartApi(pub Arc<dyn MultipartStore>);

impl std::fmt::Debug for MultipartApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MultipartApi")
    }
}

/// A built store, with its multipart API where it has one.
type BuiltStore = (Arc<dyn ObjectStore>, Option<MultipartApi>);

impl Location {
    /// URL of `path` (a path inside this location's store), for messages.
    pub fn url_of(&self, path: &Path) -> String {
        let mut u = self.url.clone();
        u.set_path(&format!("/{path}"));
        u.to_string()
    }

    /// Whether the store is the local file system.
    pub fn is_local(&self) -> bool {
        self.url.scheme() == "file"
    }
}

/// How a registered object store was declared: what another process (a
/// cluster executor) needs to build and register the same store. Secrets
/// stay `secret('NAME')`, resolved by the process that connects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreDeclaration {
    /// A location in the store.
    pub location: String,
    /// The table options it was built with.
    pub options: TableOptions,
}

/// Builds, caches and registers object stores.
#[derive(Debug)]
pub struct StoreRegistry {
    runtime: Arc<RuntimeEnv>,
    secrets: SecretResolver,
    stores: Mutex<HashMap<String, BuiltStore>>,
    /// Declarations of the stores on other hosts than this one's disk.
    declared: Mutex<std::collections::BTreeMap<String, StoreDeclaration>>,
}

impl StoreRegistry {
    /// A registry registering stores into `runtime`.
    pub fn new(runtime: Arc<RuntimeEnv>, secrets: SecretResolver) -> Self {
        Self {
            runtime,
            secrets,
            stores: Mutex::new(HashMap::new()),
            declared: Mutex::default(),
        }
    }

    /// How every registered store other than the local file system and
    /// memory was declared, so another process can register the same.
    pub fn declarations(&self) -> Vec<StoreDeclaration> {
        self.declared
            .lock()
            .expect("store registry poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// The secret resolver used when connecting.
    pub fn secrets(&self) -> &SecretResolver {
        &self.secrets
    }

    /// Resolves a location (path or URL) with the table's store options.
    pub fn resolve(&self, location: &str, options: &TableOptions) -> Result<Location> {
        let url = parse_location(location)?;
        let scheme = url.scheme().to_string();
        let host = url.host_str().unwrap_or("").to_string();
        let store_options: Vec<(&String, &crate::OptionValue)> = options
            .iter()
            .filter(|(k, _)| STORE_OPTION_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();

        let registered_scheme = if store_options.is_empty() {
            scheme.clone()
        } else {
            let mut h = DefaultHasher::new();
            for (k, v) in &store_options {
                k.hash(&mut h);
                v.to_string().hash(&mut h);
            }
            format!("{scheme}+{:016x}", h.finish())
        };
        let key = format!("{registered_scheme}://{host}");
        let store_url =
            ObjectStoreUrl::parse(&key).map_err(|e| ConnectorError::InvalidLocation {
                location: location.to_string(),
                reason: e.to_string(),
            })?;

        let (store, multipart) = {
            let mut stores = self.stores.lock().expect("store registry poisoned");
            match stores.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let built = self.build_store(location, &url, &scheme, &host, options)?;
                    let s = Arc::clone(&built.0);
                    stores.insert(key.clone(), built.clone());
                    if !matches!(scheme.as_str(), "file" | "memory") {
                        self.declared
                            .lock()
                            .expect("store registry poisoned")
                            .insert(
                                key.clone(),
                                StoreDeclaration {
                                    location: location.to_string(),
                                    options: options.clone(),
                                },
                            );
                    }
                    self.runtime
                        .register_object_store(store_url.as_ref(), Arc::clone(&s));
                    built
                }
            }
        };

        let path =
            Path::from_url_path(url.path()).map_err(|e| ConnectorError::InvalidLocation {
                location: location.to_string(),
                reason: e.to_string(),
            })?;
        let is_dir = is_directory(&url);
        Ok(Location {
            original: location.to_string(),
            url,
            store_url,
            path,
            is_dir,
            store,
            multipart,
        })
    }

    fn build_store(
        &self,
        location: &str,
        url: &Url,
        scheme: &str,
        host: &str,
        options: &TableOptions,
    ) -> Result<BuiltStore> {
        let invalid = |reason: String| ConnectorError::InvalidLocation {
            location: location.to_string(),
            reason,
        };
        let resolved = options.resolve(&self.secrets)?;
        let with_prefix = |prefix: &str| {
            resolved
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
                .collect::<Vec<_>>()
        };
        /// A store with a multipart API.
        fn both<T: ObjectStore + MultipartStore>(store: T) -> BuiltStore {
            let store = Arc::new(store);
            (
                Arc::clone(&store) as Arc<dyn ObjectStore>,
                Some(MultipartApi(store as Arc<dyn MultipartStore>)),
            )
        }
        let built: BuiltStore = match scheme {
            "file" => (Arc::new(object_store::local::LocalFileSystem::new()), None),
            "memory" => both(InMemory::new()),
            "s3" | "s3a" => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(host);
                for (k, v) in with_prefix("aws.") {
                    let key = k.parse().map_err(|_| ConnectorError::InvalidOption {
                        key: format!("aws.{k}"),
                        reason: "not an S3 setting; use e.g. aws.access_key_id, \
                                 aws.secret_access_key, aws.region, aws.endpoint, aws.allow_http"
                            .to_string(),
                    })?;
                    b = b.with_config(key, v);
                }
                both(b.build().map_err(|e| invalid(e.to_string()))?)
            }
            "gs" | "gcs" => {
                let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(host);
                for (k, v) in with_prefix("gcp.") {
                    let key = k.parse().map_err(|_| ConnectorError::InvalidOption {
                        key: format!("gcp.{k}"),
                        reason: "not a Google Cloud Storage setting; use e.g. \
                                 gcp.service_account_path"
                            .to_string(),
                    })?;
                    b = b.with_config(key, v);
                }
                both(b.build().map_err(|e| invalid(e.to_string()))?)
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let mut b = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
                for (k, v) in with_prefix("azure.") {
                    let key = k.parse().map_err(|_| ConnectorError::InvalidOption {
                        key: format!("azure.{k}"),
                        reason: "not an Azure setting; use e.g. azure.account_name, \
                                 azure.access_key"
                            .to_string(),
                    })?;
                    b = b.with_config(key, v);
                }
                both(b.build().map_err(|e| invalid(e.to_string()))?)
            }
            "http" | "https" => {
                let base = &url[..url::Position::BeforePath];
                let store: Arc<dyn ObjectStore> = Arc::new(
                    HttpBuilder::new()
                        .with_url(base)
                        // An http:// location is the user's explicit choice.
                        .with_client_options(
                            object_store::ClientOptions::new().with_allow_http(scheme == "http"),
                        )
                        .build()
                        .map_err(|e| invalid(e.to_string()))?,
                );
                (store, None)
            }
            other => {
                return Err(invalid(format!(
                    "unsupported scheme '{other}'; use a local path, file://, s3://, gs://, \
                     az://, abfss://, memory:// or http(s)://"
                )));
            }
        };
        Ok(built)
    }
}

/// Parses a path or URL into a URL; local paths become absolute `file://` URLs.
pub fn parse_location(location: &str) -> Result<Url> {
    let invalid = |reason: String| ConnectorError::InvalidLocation {
        location: location.to_string(),
        reason,
    };
    if location.trim().is_empty() {
        return Err(invalid("the location is empty".to_string()));
    }
    match Url::parse(location) {
        Ok(url) if url.scheme().len() > 1 => Ok(url),
        _ => {
            let p = std::path::Path::new(location);
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| invalid(format!("cannot read the current directory: {e}")))?
                    .join(p)
            };
            let abs = normalize(&abs);
            let dir = location.ends_with('/') || abs.is_dir();
            let url = if dir {
                Url::from_directory_path(&abs)
            } else {
                Url::from_file_path(&abs)
            };
            url.map_err(|_| invalid("not an absolute path".to_string()))
        }
    }
}

fn normalize(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c.as_os_str()),
        }
    }
    out
}

/// A location is a directory when it ends with `/`, or its last segment has
/// no file extension.
fn is_directory(url: &Url) -> bool {
    let path = url.path();
    if path.ends_with('/') {
        return true;
    }
    let last = path.rsplit('/').next().unwrap_or("");
    !last.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_file_urls() {
        let u = parse_location("some/dir/").unwrap();
        assert_eq!(u.scheme(), "file");
        assert!(u.path().ends_with("/some/dir/"));
        let u = parse_location("/a/b/../c.csv").unwrap();
        assert_eq!(u.as_str(), "file:///a/c.csv");
        assert!(is_directory(&parse_location("s3://bkt/x/out").unwrap()));
        assert!(!is_directory(
            &parse_location("s3://bkt/x/out.parquet").unwrap()
        ));
    }

    #[test]
    fn credential_sets_get_distinct_store_urls() {
        let reg = StoreRegistry::new(Arc::new(RuntimeEnv::default()), SecretResolver::default());
        let mut a = TableOptions::new();
        a.insert_literal("aws.access_key_id", "A");
        a.insert_literal("aws.secret_access_key", "x");
        a.insert_literal("aws.region", "us-east-1");
        let mut b = a.clone();
        b.insert_literal("aws.access_key_id", "B");
        let la = reg.resolve("s3://bucket/t/", &a).unwrap();
        let lb = reg.resolve("s3://bucket/t/", &b).unwrap();
        assert_ne!(la.store_url, lb.store_url);
        assert!(la.store_url.as_str().starts_with("s3+"));
        assert!(la.is_dir);
    }
}
