//! A real S3-compatible server for tests: s3s-fs served over HTTP on `127.0.0.1:0`, in
//! process, with SigV4 authentication. A bucket is a directory under a temp dir.
//!
//! [`TestS3::start_with_faults`] adds a second, fault-injecting endpoint over the same buckets
//! for the processes under test (see [`super::test_faults`]); [`TestS3::endpoint`] stays
//! fault-free for the test's own set-up and checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::test_faults::{self, Faults};
use super::{Location, RetryConfig, S3Options, Storage};

/// The fixed test credentials.
pub const ACCESS_KEY: &str = "shardmerge-test-key";
/// The fixed test secret.
pub const SECRET_KEY: &str = "shardmerge-test-secret";

/// A running in-process s3s-fs server; stopped when dropped.
pub struct TestS3 {
    root: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    server: JoinHandle<()>,
    faulty: Option<FaultyEndpoint>,
}

/// The fault-injecting endpoint of a [`TestS3`].
struct FaultyEndpoint {
    endpoint: String,
    faults: Arc<Faults>,
    server: JoinHandle<()>,
}

impl TestS3 {
    /// Starts a server on the current tokio runtime.
    pub async fn start() -> TestS3 {
        let root = tempfile::tempdir().expect("temp dir for the s3 root");
        let service = s3_service(root.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let endpoint = format!("http://{}", listener.local_addr().expect("bound address"));
        let server = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        TestS3 {
            root,
            endpoint,
            server,
            faulty: None,
        }
    }

    /// Starts a server with two endpoints over the same buckets: [`TestS3::endpoint`], never
    /// faulty, for the test itself, and [`TestS3::faulty_endpoint`] for the processes under
    /// test, where [`TestS3::faults`] injects faults drawn from `seed` once configured.
    pub async fn start_with_faults(seed: u64) -> TestS3 {
        let root = tempfile::tempdir().expect("temp dir for the s3 root");
        let service = s3_service(root.path());
        let faults = Arc::new(Faults::new(root.path().to_path_buf(), seed));
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port") };
        let (clean, faulty) = (bind().await, bind().await);
        let endpoint = format!("http://{}", clean.local_addr().expect("bound address"));
        let faulty_endpoint = format!("http://{}", faulty.local_addr().expect("bound address"));
        let server = tokio::spawn(test_faults::serve(clean, service.clone(), faults.clone(), false));
        let faulty_server = tokio::spawn(test_faults::serve(faulty, service, faults.clone(), true));
        TestS3 {
            root,
            endpoint,
            server,
            faulty: Some(FaultyEndpoint {
                endpoint: faulty_endpoint,
                faults,
                server: faulty_server,
            }),
        }
    }

    /// `http://127.0.0.1:PORT` of the fault-injecting endpoint, when started with faults.
    pub fn faulty_endpoint(&self) -> Option<&str> {
        self.faulty.as_ref().map(|f| f.endpoint.as_str())
    }

    /// The fault controls, counters and upload tracking, when started with faults.
    pub fn faults(&self) -> Option<&Arc<Faults>> {
        self.faulty.as_ref().map(|f| &f.faults)
    }

    /// S3 options for this server, with few, quick retries so failures surface fast.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            access_key_id: Some(ACCESS_KEY.to_owned()),
            secret_access_key: Some(SECRET_KEY.to_owned()),
            region: Some("us-east-1".to_owned()),
            allow_http: true,
            retry: RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            },
        }
    }

    /// A [`Storage`] talking to this server.
    pub fn storage(&self) -> Storage {
        Storage::with_s3_options(self.options())
    }

    /// Creates the bucket `name` and returns its directory, where files appear as objects.
    pub fn create_bucket(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("bucket directory");
        dir
    }

    /// Copies the files of the local directory `from` to `bucket/prefix/`.
    pub fn upload_dir(&self, from: &Path, bucket: &str, prefix: &str) {
        let to = self.create_bucket(bucket).join(prefix);
        std::fs::create_dir_all(&to).expect("prefix directory");
        for entry in std::fs::read_dir(from).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().expect("file name"))).expect("copy a file");
            }
        }
    }

    /// Uploads the files of the local directory `from` to `s3://bucket/prefix/` through the
    /// S3 API (PutObject on the fault-free endpoint), creating the bucket.
    pub async fn put_dir(&self, from: &Path, bucket: &str, prefix: &str) {
        self.create_bucket(bucket);
        let storage = self.storage();
        let to = Location::parse(&format!("s3://{bucket}/{prefix}")).expect("an s3 location");
        for entry in std::fs::read_dir(from).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_file() {
                let name = path.file_name().expect("file name").to_string_lossy().into_owned();
                let bytes = std::fs::read(&path).expect("read a file to upload");
                storage
                    .put(&to.join(&name), bytes.into())
                    .await
                    .unwrap_or_else(|e| panic!("upload {name}: {e}"));
            }
        }
    }
}

/// s3s-fs over `root`, with the test credentials.
fn s3_service(root: &Path) -> s3s::service::S3Service {
    let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs over the temp dir");
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    builder.build()
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(f) = &self.faulty {
            f.server.abort();
        }
    }
}
