//! The S3 import path (the seed's legacy upload): the image cut in 10 MiB parts put to
//! S3 concurrently (each with its SHA-256, which S3 checks), a manifest of the parts as
//! ImportVolume reads it (with a `<sha256>` per part that `manifest verify` checks),
//! then ImportVolume (raw images: a volume, snapshotted and deleted) or ImportSnapshot
//! (VMDK and VHD: the parts joined server-side into one object by UploadPartCopy),
//! polled with backoff until done. The S3 objects are deleted afterwards (kept on
//! failure when asked). AWS's import failures, including the `SERVER_ERROR` status that
//! leaves an import hanging, end the run with a clear error; `ResourceLimitExceeded`
//! (too many imports at once) is waited out.

pub(crate) mod manifest;
pub(crate) mod verify;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{
    DiskImageDetail, DiskImageFormat, ResourceType, SnapshotDiskContainer, Tag, TagSpecification,
    UserBucket, VolumeDetail,
};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectIdentifier};
use base64::Engine as _;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::aws::poll::{Backoff, Poll, PollError, poll_until};
use crate::aws::{AwsError, Call, Clients, ErrorClass, RetryPolicy, ec2, tags};
use crate::image::{self, Format};

pub use manifest::{Manifest, PART_SIZE, Part};
pub use verify::{VerifyOptions, verify};

/// Concurrent part uploads by default.
pub const DEFAULT_WORKERS: usize = 8;

/// How an image goes through S3.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// The bucket (in the clients' region, where the import runs).
    pub bucket: String,
    /// Key prefix (a trailing `/` is added when missing); objects go under PREFIX/NONCE/.
    pub prefix: String,
    /// Concurrent part uploads.
    pub workers: usize,
    /// Keep the S3 objects (and an unfinished task's volume) when the import fails.
    pub keep_on_failure: bool,
    /// How long the import (and the snapshot after it) may take, limit waits included.
    pub wait: Duration,
    /// Lifetime of the pre-signed URLs in the manifest.
    pub url_expiry: Duration,
    /// Snapshot description.
    pub description: Option<String>,
    /// Extra snapshot tags.
    pub tags: Vec<(String, String)>,
    /// Zone of ImportVolume's volume (default: the region's first available zone).
    pub availability_zone: Option<String>,
    /// The retry policy of every request.
    pub retry: RetryPolicy,
    /// Pauses between polls of the import task.
    pub backoff: Backoff,
}

impl S3Options {
    /// Options with the defaults for `bucket`.
    pub fn new(bucket: impl Into<String>) -> S3Options {
        S3Options {
            bucket: bucket.into(),
            prefix: String::new(),
            workers: DEFAULT_WORKERS,
            keep_on_failure: false,
            wait: Duration::from_secs(4 * 3600),
            url_expiry: Duration::from_secs(7 * 24 * 3600 - 60),
            description: None,
            tags: Vec::new(),
            availability_zone: None,
            retry: RetryPolicy::default(),
            backoff: Backoff {
                first: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
        }
    }
}

/// What an import through S3 did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    /// The new snapshot.
    pub snapshot_id: String,
    /// Its region.
    pub region: String,
    /// `ImportVolume` or `ImportSnapshot`.
    pub operation: &'static str,
    /// The conversion or import task.
    pub task_id: String,
    /// `RAW`, `VMDK` or `VHD`.
    pub file_format: String,
    /// Bytes of the image file.
    pub size_bytes: u64,
    /// Bytes of the disk it holds (the VMDK's or VHD's virtual size; for raw, the same).
    pub disk_bytes: u64,
    /// Parts put to S3.
    pub parts: usize,
    /// Image bytes sent to S3.
    pub bytes_sent: u64,
    /// The bucket.
    pub bucket: String,
    /// The manifest's key.
    pub manifest_key: String,
    /// Whether the S3 objects were deleted afterwards.
    pub objects_deleted: bool,
    /// Wall time.
    pub seconds: f64,
}

/// What `manifest write` put in S3.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    /// The manifest.
    #[serde(skip)]
    pub manifest: Manifest,
    /// The bucket.
    pub bucket: String,
    /// The manifest's key.
    pub manifest_key: String,
    /// A pre-signed GET of the manifest (what ImportVolume takes).
    pub manifest_url: String,
    /// The parts' keys, in order.
    pub part_keys: Vec<String>,
    /// Image bytes sent.
    pub bytes_sent: u64,
}

/// Why an import through S3 failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The image cannot be read.
    #[error("{0}")]
    Image(#[from] image::ImageError),
    /// Not a format the import takes.
    #[error(
        "{path} is a {format} image: the S3 import takes raw, VMDK (monolithic sparse or \
         streamOptimized) and VHD images (convert it with qemu-img, or upload it without --via s3)"
    )]
    Unsupported {
        /// The image.
        path: PathBuf,
        /// Its format.
        format: String,
    },
    /// Reading the image failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A request failed.
    #[error("{0}")]
    Aws(#[from] AwsError),
    /// AWS ended the import task with an error.
    #[error("{operation} task {task} failed: {message}")]
    Failed {
        /// `ImportVolume` or `ImportSnapshot`.
        operation: &'static str,
        /// The task.
        task: String,
        /// AWS's status message.
        message: String,
    },
    /// The task reports AWS's SERVER_ERROR status, in which imports hang; it was cancelled.
    #[error(
        "{operation} task {task} hangs with AWS's status `{message}` (an import in this state \
         never finishes); it was cancelled: run the import again"
    )]
    Hung {
        /// `ImportVolume` or `ImportSnapshot`.
        operation: &'static str,
        /// The task.
        task: String,
        /// AWS's status message.
        message: String,
    },
    /// The task did not finish in time (it was cancelled).
    #[error("{operation} task {task} did not finish within {}s; it was cancelled", waited.as_secs())]
    TimedOut {
        /// `ImportVolume` or `ImportSnapshot`.
        operation: &'static str,
        /// The task.
        task: String,
        /// How long it waited.
        waited: Duration,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

/// A failed import and what became of its S3 objects.
#[derive(Debug, thiserror::Error)]
#[error("{error}{}", cleanup_note(.kept, .cleanup_error))]
pub struct ImportFailure {
    /// What went wrong.
    pub error: ImportError,
    /// The objects left in S3 (`--keep-on-failure`, or deleting them failed).
    pub kept: Vec<String>,
    /// Why deleting them failed, if it did.
    pub cleanup_error: Option<String>,
}

fn cleanup_note(kept: &[String], cleanup_error: &Option<String>) -> String {
    match (kept.is_empty(), cleanup_error) {
        (true, _) => String::new(),
        (false, Some(e)) => format!(
            " (deleting its {} S3 object(s) failed too: {e}; they are under {})",
            kept.len(),
            common_dir(kept)
        ),
        (false, None) => format!(
            " (its {} S3 object(s) were kept under {})",
            kept.len(),
            common_dir(kept)
        ),
    }
}

fn common_dir(keys: &[String]) -> String {
    keys.first()
        .and_then(|k| k.rsplit_once('/'))
        .map(|(d, _)| format!("{d}/"))
        .unwrap_or_default()
}

impl ImportFailure {
    /// Whether the run ended by a signal.
    pub fn interrupted(&self) -> bool {
        matches!(self.error, ImportError::Interrupted)
    }
}

/// The image file as the import reads it: its bytes unconverted.
struct Source {
    path: PathBuf,
    file: File,
    size: u64,
    file_format: &'static str,
    /// The disk's size once imported: the file's for raw, the header's for VMDK and VHD.
    disk_size: u64,
}

/// The virtual disk size a VMDK sparse header (capacity in sectors at byte 12, little
/// endian) or a VHD footer (current size at byte 48, big endian) records.
fn virtual_size(file: &File, format: &str, size: u64) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    match format {
        "VMDK" => {
            file.read_exact_at(&mut b, 12)?;
            Ok(u64::from_le_bytes(b).saturating_mul(512))
        }
        "VHD" => {
            file.read_exact_at(&mut b, size.saturating_sub(512) + 48)?;
            Ok(u64::from_be_bytes(b))
        }
        _ => Ok(size),
    }
}

impl Source {
    fn open(path: &Path) -> Result<Source, ImportError> {
        let read = |source| ImportError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(|source| image::ImageError::Open {
            path: path.to_owned(),
            source,
        })?;
        let size = file.seek(SeekFrom::End(0)).map_err(read)?;
        if size == 0 {
            return Err(image::ImageError::Empty {
                path: path.to_owned(),
            }
            .into());
        }
        let format = image::detect_format(&file, size).map_err(read)?;
        let mut head = [0u8; 4];
        let _ = file.read_at(&mut head, 0);
        let file_format = match format {
            Format::Raw => "RAW",
            Format::Vhd => "VHD",
            // A sparse extent holds the disk; a descriptor alone names other files.
            Format::Vmdk if &head == b"KDMV" => "VMDK",
            other => {
                return Err(ImportError::Unsupported {
                    path: path.to_owned(),
                    format: if other == Format::Vmdk {
                        "VMDK descriptor (no extent in the file)".into()
                    } else {
                        other.to_string()
                    },
                });
            }
        };
        let disk_size = virtual_size(&file, file_format, size).map_err(read)?;
        Ok(Source {
            path: path.to_owned(),
            file,
            size,
            file_format,
            disk_size,
        })
    }

    fn read(&self, start: u64, end: u64) -> Result<Vec<u8>, ImportError> {
        let mut buf = vec![0u8; (end - start + 1) as usize];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(|source| ImportError::Read {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }
}

/// Where one run's objects go: PREFIX/NONCE/.
fn run_dir(prefix: &str) -> String {
    let mut p = prefix.trim_start_matches('/').to_string();
    if !p.is_empty() && !p.ends_with('/') {
        p.push('/');
    }
    format!("{p}ec2ami-{}", uuid::Uuid::new_v4().simple())
}

fn b64_sha256(data: &[u8]) -> (String, String) {
    let digest = Sha256::digest(data);
    (
        base64::engine::general_purpose::STANDARD.encode(digest),
        digest.iter().map(|b| format!("{b:02x}")).collect(),
    )
}

/// The S3 side of a run: the objects it created, for deletion.
struct Objects {
    s3: aws_sdk_s3::Client,
    region: String,
    bucket: String,
    keys: std::sync::Mutex<Vec<String>>,
}

impl Objects {
    fn add(&self, key: &str) {
        self.keys.lock().unwrap().push(key.to_string());
    }

    fn list(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }

    /// Delete every object of the run (DeleteObjects, up to 1000 keys a request).
    async fn delete_all(&self, retry: &RetryPolicy) -> Result<(), AwsError> {
        let keys = self.list();
        for chunk in keys.chunks(1000) {
            let ids: Vec<ObjectIdentifier> = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build().expect("key set"))
                .collect();
            let delete = aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .expect("objects set");
            let out = retry
                .send(
                    &Call::new("DeleteObjects", self.region.clone()).on(&self.bucket),
                    || {
                        self.s3
                            .delete_objects()
                            .bucket(&self.bucket)
                            .delete(delete.clone())
                            .send()
                    },
                )
                .await?;
            if let Some(e) = out.errors().first() {
                return Err(AwsError::local(
                    "DeleteObjects",
                    ErrorClass::Permanent,
                    format!(
                        "{}: {}",
                        e.key().unwrap_or("?"),
                        e.message().or(e.code()).unwrap_or("not deleted")
                    ),
                )
                .within(&Call::new("DeleteObjects", self.region.clone()).on(&self.bucket)));
            }
        }
        self.keys.lock().unwrap().clear();
        Ok(())
    }
}

async fn presign<F, Fut, E>(what: &'static str, expiry: Duration, f: F) -> Result<String, AwsError>
where
    F: FnOnce(PresigningConfig) -> Fut,
    Fut: std::future::Future<
            Output = Result<
                aws_sdk_s3::presigning::PresignedRequest,
                aws_sdk_s3::error::SdkError<E>,
            >,
        >,
    E: std::error::Error + Send + Sync + 'static,
{
    let conf = PresigningConfig::expires_in(expiry)
        .map_err(|e| AwsError::config(format!("pre-signed URL lifetime: {e}")))?;
    f(conf)
        .await
        .map(|p| p.uri().to_string())
        .map_err(|e| AwsError::local(what, ErrorClass::Permanent, format!("pre-signing: {e}")))
}

/// Put the parts and the manifest; returns the manifest and its key.
async fn put_parts_and_manifest(
    clients: &Clients,
    src: Arc<Source>,
    dir: &str,
    opts: &S3Options,
    objects: &Objects,
) -> Result<(Manifest, String, u64), ImportError> {
    let s3 = &objects.s3;
    let bucket = &opts.bucket;
    let ranges = manifest::ranges(src.size, PART_SIZE);
    let total = ranges.len();
    let region = clients.region().to_string();
    let parts: Vec<Part> = futures_util::stream::iter(ranges.into_iter().enumerate())
        .map(|(i, (start, end))| {
            let src = src.clone();
            let region = region.clone();
            async move {
                let data = tokio::task::spawn_blocking(move || src.read(start, end))
                    .await
                    .expect("reading a part does not panic")?;
                let (b64, hex) = b64_sha256(&data);
                let key = format!("{dir}/part{i}");
                let body = bytes::Bytes::from(data);
                let call = Call::new("PutObject", region).on(format!("s3://{bucket}/{key}"));
                opts.retry
                    .send(&call, || {
                        s3.put_object()
                            .bucket(bucket)
                            .key(&key)
                            .checksum_sha256(&b64)
                            .content_length(body.len() as i64)
                            .body(ByteStream::from(body.clone()))
                            .send()
                    })
                    .await?;
                objects.add(&key);
                tracing::debug!("put part {}/{total} ({} bytes)", i + 1, end - start + 1);
                let exp = opts.url_expiry;
                Ok::<_, ImportError>(Part {
                    index: i as u64,
                    start,
                    end,
                    head_url: presign("HeadObject", exp, |c| {
                        s3.head_object().bucket(bucket).key(&key).presigned(c)
                    })
                    .await?,
                    get_url: presign("GetObject", exp, |c| {
                        s3.get_object().bucket(bucket).key(&key).presigned(c)
                    })
                    .await?,
                    delete_url: presign("DeleteObject", exp, |c| {
                        s3.delete_object().bucket(bucket).key(&key).presigned(c)
                    })
                    .await?,
                    key,
                    sha256: Some(hex),
                })
            }
        })
        .buffered(opts.workers.max(1))
        .try_collect()
        .await?;
    let manifest_key = format!("{dir}/manifest.xml");
    let m = Manifest {
        file_format: src.file_format.to_string(),
        importer: (
            "ec2ami".into(),
            env!("CARGO_PKG_VERSION").into(),
            crate::units::today(),
        ),
        self_destruct_url: presign("DeleteObject", opts.url_expiry, |c| {
            s3.delete_object()
                .bucket(bucket)
                .key(&manifest_key)
                .presigned(c)
        })
        .await?,
        size: src.size,
        volume_size: manifest::volume_gib(src.size),
        parts,
    };
    let xml = m.to_xml();
    let (b64, _) = b64_sha256(xml.as_bytes());
    opts.retry
        .send(
            &Call::new("PutObject", region).on(format!("s3://{bucket}/{manifest_key}")),
            || {
                s3.put_object()
                    .bucket(bucket)
                    .key(&manifest_key)
                    .content_type("application/xml")
                    .checksum_sha256(&b64)
                    .body(ByteStream::from(xml.clone().into_bytes()))
                    .send()
            },
        )
        .await?;
    objects.add(&manifest_key);
    Ok((m, manifest_key, src.size))
}

/// `manifest write`: put the image's parts and its manifest in S3, import nothing.
pub async fn write_manifest(
    clients: &Clients,
    path: &Path,
    opts: &S3Options,
) -> Result<Written, ImportFailure> {
    let fail = |error| ImportFailure {
        error,
        kept: Vec::new(),
        cleanup_error: None,
    };
    let src = Arc::new(Source::open(path).map_err(fail)?);
    let objects = Objects {
        s3: crate::aws::s3::client(clients),
        region: clients.region().to_string(),
        bucket: opts.bucket.clone(),
        keys: Default::default(),
    };
    let dir = run_dir(&opts.prefix);
    match put_parts_and_manifest(clients, src, &dir, opts, &objects).await {
        Ok((manifest, manifest_key, bytes_sent)) => {
            let manifest_url = presign("GetObject", opts.url_expiry, |c| {
                objects
                    .s3
                    .get_object()
                    .bucket(&opts.bucket)
                    .key(&manifest_key)
                    .presigned(c)
            })
            .await
            .map_err(|e| fail(e.into()))?;
            Ok(Written {
                part_keys: manifest.parts.iter().map(|p| p.key.clone()).collect(),
                manifest,
                bucket: opts.bucket.clone(),
                manifest_key,
                manifest_url,
                bytes_sent,
            })
        }
        Err(error) => Err(finish_failure(error, &objects, opts).await),
    }
}

async fn finish_failure(error: ImportError, objects: &Objects, opts: &S3Options) -> ImportFailure {
    if opts.keep_on_failure {
        return ImportFailure {
            error,
            kept: objects.list(),
            cleanup_error: None,
        };
    }
    match objects.delete_all(&opts.retry).await {
        Ok(()) => ImportFailure {
            error,
            kept: Vec::new(),
            cleanup_error: None,
        },
        Err(e) => ImportFailure {
            error,
            kept: objects.list(),
            cleanup_error: Some(e.to_string()),
        },
    }
}

/// Upload `path` through S3 and import it as a snapshot (see the module comment).
pub async fn import(
    clients: &Clients,
    path: &Path,
    opts: &S3Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<ImportReport, ImportFailure> {
    let started = Instant::now();
    let src = match Source::open(path) {
        Ok(s) => Arc::new(s),
        Err(error) => {
            return Err(ImportFailure {
                error,
                kept: Vec::new(),
                cleanup_error: None,
            });
        }
    };
    let objects = Objects {
        s3: crate::aws::s3::client(clients),
        region: clients.region().to_string(),
        bucket: opts.bucket.clone(),
        keys: Default::default(),
    };
    let task = std::sync::Mutex::new(None::<(&'static str, String)>);
    let run = run_import(clients, src.clone(), opts, &objects, &task);
    let result = tokio::select! {
        r = run => r,
        () = shutdown => Err(ImportError::Interrupted),
    };
    match result {
        Ok(mut report) => {
            if let Err(e) = objects.delete_all(&opts.retry).await {
                tracing::warn!(
                    "the snapshot {} is made, but deleting its S3 objects failed: {e}",
                    report.snapshot_id
                );
            } else {
                report.objects_deleted = true;
            }
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(error) => {
            let running = task.lock().unwrap().clone();
            if let (Some((op, id)), ImportError::Interrupted) = (running, &error) {
                cancel(clients, op, &id, &opts.retry).await;
            }
            Err(finish_failure(error, &objects, opts).await)
        }
    }
}

async fn run_import(
    clients: &Clients,
    src: Arc<Source>,
    opts: &S3Options,
    objects: &Objects,
    task: &std::sync::Mutex<Option<(&'static str, String)>>,
) -> Result<ImportReport, ImportError> {
    let dir = run_dir(&opts.prefix);
    let (m, manifest_key, bytes_sent) =
        put_parts_and_manifest(clients, src.clone(), &dir, opts, objects).await?;
    eprintln_progress(&format!(
        "put {} part(s) of {} ({} bytes) and the manifest s3://{}/{manifest_key}",
        m.parts.len(),
        src.path.display(),
        src.size,
        opts.bucket
    ));
    let deadline = Instant::now() + opts.wait;
    let left = || deadline.saturating_duration_since(Instant::now());
    let description = opts
        .description
        .clone()
        .unwrap_or_else(|| format!("ec2ami import of {}", file_name(&src.path)));
    let mut snapshot_tags: Vec<(String, String)> = vec![
        (tags::OWNERSHIP.into(), tags::OWNERSHIP_VALUE.into()),
        (tags::IMAGE_SIZE.into(), src.disk_size.to_string()),
    ];
    snapshot_tags.extend(opts.tags.iter().cloned());
    let (operation, task_id, snapshot_id) = if src.file_format == "RAW" {
        let url = presign("GetObject", opts.url_expiry, |c| {
            objects
                .s3
                .get_object()
                .bucket(&opts.bucket)
                .key(&manifest_key)
                .presigned(c)
        })
        .await?;
        let zone = match &opts.availability_zone {
            Some(z) => z.clone(),
            None => first_zone(clients, &opts.retry).await?,
        };
        let id = start_when_allowed(clients, "ImportVolume", left(), opts, || async {
            let out = opts
                .retry
                .send(&clients.call("ImportVolume").on(&manifest_key), || {
                    clients
                        .ec2
                        .import_volume()
                        .availability_zone(&zone)
                        .description(&description)
                        .image(
                            DiskImageDetail::builder()
                                .format(DiskImageFormat::Raw)
                                .bytes(src.size as i64)
                                .import_manifest_url(&url)
                                .build(),
                        )
                        .volume(VolumeDetail::builder().size(m.volume_size as i64).build())
                        .send()
                })
                .await?;
            Ok(out
                .conversion_task()
                .and_then(|t| t.conversion_task_id())
                .unwrap_or_default()
                .to_string())
        })
        .await?;
        *task.lock().unwrap() = Some(("ImportVolume", id.clone()));
        eprintln_progress(&format!("ImportVolume task {id} started"));
        let volume = wait_task(clients, "ImportVolume", &id, left(), opts).await?;
        let spec = tag_spec(ResourceType::Snapshot, &snapshot_tags);
        let snap = opts
            .retry
            .send(&clients.call("CreateSnapshot").on(&volume), || {
                clients
                    .ec2
                    .create_snapshot()
                    .volume_id(&volume)
                    .description(&description)
                    .tag_specifications(spec.clone())
                    .send()
            })
            .await?;
        let snapshot_id = snap.snapshot_id().unwrap_or_default().to_string();
        crate::snapshot::wait_for_completed(clients, &snapshot_id, left(), &opts.retry).await?;
        opts.retry
            .send(&clients.call("DeleteVolume").on(&volume), || {
                clients.ec2.delete_volume().volume_id(&volume).send()
            })
            .await?;
        ("ImportVolume", id, snapshot_id)
    } else {
        let disk_key = format!("{dir}/disk.{}", src.file_format.to_ascii_lowercase());
        join_parts(objects, &m, &disk_key, opts).await?;
        let token = uuid::Uuid::new_v4().to_string();
        let id = start_when_allowed(clients, "ImportSnapshot", left(), opts, || async {
            let out = opts
                .retry
                .send(&clients.call("ImportSnapshot").on(&disk_key), || {
                    clients
                        .ec2
                        .import_snapshot()
                        .client_token(&token)
                        .description(&description)
                        .disk_container(
                            SnapshotDiskContainer::builder()
                                .description(&description)
                                .format(src.file_format)
                                .user_bucket(
                                    UserBucket::builder()
                                        .s3_bucket(&opts.bucket)
                                        .s3_key(&disk_key)
                                        .build(),
                                )
                                .build(),
                        )
                        .send()
                })
                .await?;
            Ok(out.import_task_id().unwrap_or_default().to_string())
        })
        .await?;
        *task.lock().unwrap() = Some(("ImportSnapshot", id.clone()));
        eprintln_progress(&format!("ImportSnapshot task {id} started"));
        let snapshot_id = wait_task(clients, "ImportSnapshot", &id, left(), opts).await?;
        let pairs: Vec<(&str, &str)> = snapshot_tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ec2::create_tags(clients, &snapshot_id, &pairs, &opts.retry).await?;
        crate::snapshot::wait_for_completed(clients, &snapshot_id, left(), &opts.retry).await?;
        ("ImportSnapshot", id, snapshot_id)
    };
    Ok(ImportReport {
        snapshot_id,
        region: clients.region().to_string(),
        operation,
        task_id,
        file_format: src.file_format.to_string(),
        size_bytes: src.size,
        disk_bytes: src.disk_size,
        parts: m.parts.len(),
        bytes_sent,
        bucket: opts.bucket.clone(),
        manifest_key,
        objects_deleted: false,
        seconds: 0.0,
    })
}

fn eprintln_progress(line: &str) {
    tracing::info!("{line}");
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn tag_spec(kind: ResourceType, pairs: &[(String, String)]) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            pairs
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .build()
}

/// The region's first available zone (ImportVolume's volume needs one).
async fn first_zone(clients: &Clients, retry: &RetryPolicy) -> Result<String, AwsError> {
    let out = retry
        .send(&clients.call("DescribeAvailabilityZones"), || {
            clients
                .ec2
                .describe_availability_zones()
                .filters(ec2::filter("state", "available"))
                .send()
        })
        .await?;
    let mut zones: Vec<String> = out
        .availability_zones()
        .iter()
        .filter_map(|z| z.zone_name().map(str::to_string))
        .collect();
    zones.sort();
    zones.into_iter().next().ok_or_else(|| {
        AwsError::local(
            "DescribeAvailabilityZones",
            ErrorClass::Permanent,
            "the region has no available zone".into(),
        )
        .within(&clients.call("DescribeAvailabilityZones"))
    })
}

/// One object of the parts, by UploadPartCopy (S3 copies; nothing is sent again).
async fn join_parts(
    objects: &Objects,
    m: &Manifest,
    key: &str,
    opts: &S3Options,
) -> Result<(), ImportError> {
    let s3 = &objects.s3;
    let bucket = &opts.bucket;
    let call = |op| Call::new(op, objects.region.clone()).on(format!("s3://{bucket}/{key}"));
    let created = opts
        .retry
        .send(&call("CreateMultipartUpload"), || {
            s3.create_multipart_upload().bucket(bucket).key(key).send()
        })
        .await?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let joined: Result<Vec<CompletedPart>, ImportError> =
        futures_util::stream::iter(m.parts.iter())
            .map(|p| {
                let upload_id = &upload_id;
                async move {
                    let source = format!("{bucket}/{}", p.key);
                    let out = opts
                        .retry
                        .send(&call("UploadPartCopy"), || {
                            s3.upload_part_copy()
                                .bucket(bucket)
                                .key(key)
                                .upload_id(upload_id)
                                .part_number(p.index as i32 + 1)
                                .copy_source(&source)
                                .send()
                        })
                        .await?;
                    Ok(CompletedPart::builder()
                        .part_number(p.index as i32 + 1)
                        .set_e_tag(
                            out.copy_part_result()
                                .and_then(|r| r.e_tag())
                                .map(str::to_string),
                        )
                        .build())
                }
            })
            .buffered(opts.workers.max(1))
            .try_collect()
            .await;
    let parts = match joined {
        Ok(p) => p,
        Err(e) => {
            let _ = s3
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            return Err(e);
        }
    };
    let done = CompletedMultipartUpload::builder()
        .set_parts(Some(parts))
        .build();
    opts.retry
        .send(&call("CompleteMultipartUpload"), || {
            s3.complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(done.clone())
                .send()
        })
        .await?;
    objects.add(key);
    Ok(())
}

/// Start an import, waiting out `ResourceLimitExceeded` (too many imports at once) with
/// backoff for at most `within`.
async fn start_when_allowed<F, Fut>(
    clients: &Clients,
    operation: &'static str,
    within: Duration,
    opts: &S3Options,
    start: F,
) -> Result<String, ImportError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, AwsError>>,
{
    let r = poll_until(within, opts.backoff, || async {
        match start().await {
            Ok(id) => Ok(Poll::Ready(id)),
            Err(e) if e.has_code("ResourceLimitExceeded") => {
                tracing::info!(
                    "{operation} in {}: the account's import limit is reached, waiting",
                    clients.region()
                );
                Ok(Poll::Pending)
            }
            Err(e) => Err(e),
        }
    })
    .await;
    match r {
        Ok(id) if !id.is_empty() => Ok(id),
        Ok(_) => Err(AwsError::local(
            operation,
            ErrorClass::Permanent,
            "the answer names no task".into(),
        )
        .within(&clients.call(operation))
        .into()),
        Err(PollError::Failed(e)) => Err(e.into()),
        Err(PollError::TimedOut { waited }) => Err(AwsError::local(
            operation,
            ErrorClass::Permanent,
            format!(
                "ResourceLimitExceeded for {}s: the account's import limit stayed reached",
                waited.as_secs()
            ),
        )
        .within(&clients.call(operation))
        .into()),
    }
}

/// What one describe of a task says.
enum TaskState {
    Active(String),
    Done(String),
    Failed(String),
}

async fn describe_task(
    clients: &Clients,
    operation: &'static str,
    id: &str,
    retry: &RetryPolicy,
) -> Result<TaskState, AwsError> {
    if operation == "ImportVolume" {
        let out = retry
            .send(&clients.call("DescribeConversionTasks").on(id), || {
                clients
                    .ec2
                    .describe_conversion_tasks()
                    .conversion_task_ids(id)
                    .send()
            })
            .await?;
        let Some(t) = out.conversion_tasks().first() else {
            return Ok(TaskState::Failed("the task has disappeared".into()));
        };
        let message = t.status_message().unwrap_or_default().to_string();
        use aws_sdk_ec2::types::ConversionTaskState as S;
        Ok(match t.state() {
            Some(S::Completed) => match t
                .import_volume()
                .and_then(|v| v.volume())
                .and_then(|v| v.id())
            {
                Some(v) => TaskState::Done(v.to_string()),
                None => TaskState::Failed("completed without a volume".into()),
            },
            Some(S::Cancelled) | Some(S::Cancelling) => TaskState::Failed(message),
            _ => TaskState::Active(message),
        })
    } else {
        let out = retry
            .send(&clients.call("DescribeImportSnapshotTasks").on(id), || {
                clients
                    .ec2
                    .describe_import_snapshot_tasks()
                    .import_task_ids(id)
                    .send()
            })
            .await?;
        let Some(d) = out
            .import_snapshot_tasks()
            .first()
            .and_then(|t| t.snapshot_task_detail())
        else {
            return Ok(TaskState::Failed("the task has disappeared".into()));
        };
        let message = d.status_message().unwrap_or_default().to_string();
        Ok(match d.status().unwrap_or_default() {
            "completed" => match d.snapshot_id() {
                Some(s) => TaskState::Done(s.to_string()),
                None => TaskState::Failed("completed without a snapshot".into()),
            },
            "deleting" | "deleted" => TaskState::Failed(message),
            _ => TaskState::Active(message),
        })
    }
}

/// Whether an active task's status message is AWS's SERVER_ERROR, in which it hangs.
fn hangs(message: &str) -> bool {
    message.to_ascii_uppercase().contains("SERVER_ERROR")
}

/// Poll the task until it is done (its volume or snapshot id), failed or hanging.
async fn wait_task(
    clients: &Clients,
    operation: &'static str,
    id: &str,
    within: Duration,
    opts: &S3Options,
) -> Result<String, ImportError> {
    let r = poll_until(within, opts.backoff, || async {
        match describe_task(clients, operation, id, &opts.retry).await? {
            TaskState::Done(v) => Ok(Poll::Ready(v)),
            TaskState::Failed(message) => Err(ImportError::Failed {
                operation,
                task: id.to_string(),
                message: if message.is_empty() {
                    "no reason given".into()
                } else {
                    message
                },
            }),
            TaskState::Active(message) if hangs(&message) => Err(ImportError::Hung {
                operation,
                task: id.to_string(),
                message,
            }),
            TaskState::Active(message) => {
                tracing::debug!("{operation} task {id}: {message}");
                Ok(Poll::Pending)
            }
        }
    })
    .await;
    match r {
        Ok(v) => Ok(v),
        Err(PollError::Failed(e)) => {
            if matches!(e, ImportError::Hung { .. }) {
                cancel(clients, operation, id, &opts.retry).await;
            }
            Err(e)
        }
        Err(PollError::TimedOut { waited }) => {
            cancel(clients, operation, id, &opts.retry).await;
            Err(ImportError::TimedOut {
                operation,
                task: id.to_string(),
                waited,
            })
        }
    }
}

/// Cancel a task (best effort: a failure is logged, the run's own error stands).
async fn cancel(clients: &Clients, operation: &'static str, id: &str, retry: &RetryPolicy) {
    let r = if operation == "ImportVolume" {
        retry
            .send(&clients.call("CancelConversionTask").on(id), || {
                clients
                    .ec2
                    .cancel_conversion_task()
                    .conversion_task_id(id)
                    .send()
            })
            .await
            .map(|_| ())
    } else {
        retry
            .send(&clients.call("CancelImportTask").on(id), || {
                clients.ec2.cancel_import_task().import_task_id(id).send()
            })
            .await
            .map(|_| ())
    };
    if let Err(e) = r {
        tracing::warn!("cancelling {operation} task {id}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dirs_are_under_the_prefix_and_unique() {
        let a = run_dir("images/15.0");
        assert!(a.starts_with("images/15.0/ec2ami-"), "{a}");
        assert!(run_dir("p/").starts_with("p/ec2ami-"));
        assert!(run_dir("").starts_with("ec2ami-"));
        assert!(run_dir("/abs").starts_with("abs/ec2ami-"));
        assert_ne!(run_dir("x"), run_dir("x"));
    }

    #[test]
    fn server_error_is_recognised_as_a_hang() {
        assert!(hangs("ServerError: SERVER_ERROR"));
        assert!(hangs("server_error"));
        assert!(!hangs("Pending"));
        assert!(!hangs("converting"));
    }

    #[test]
    fn checksums_are_base64_for_s3_and_hex_for_the_manifest() {
        let (b64, hex) = b64_sha256(b"abc");
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(b64, "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
    }

    #[test]
    fn a_failure_says_where_kept_objects_are() {
        let f = ImportFailure {
            error: ImportError::Interrupted,
            kept: vec!["p/ec2ami-1/part0".into(), "p/ec2ami-1/manifest.xml".into()],
            cleanup_error: None,
        };
        assert_eq!(
            f.to_string(),
            "interrupted (its 2 S3 object(s) were kept under p/ec2ami-1/)"
        );
    }

    #[test]
    fn vhd_and_vmdk_give_their_virtual_size() {
        let dir = tempfile::tempdir().unwrap();
        // A fixed VHD: data, then the 512-byte footer with the current size at 48.
        let mut vhd = vec![7u8; 4096];
        let mut footer = [0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        footer[48..56].copy_from_slice(&4096u64.to_be_bytes());
        vhd.extend_from_slice(&footer);
        let p = dir.path().join("d.vhd");
        std::fs::write(&p, &vhd).unwrap();
        let s = Source::open(&p).unwrap();
        assert_eq!((s.file_format, s.size, s.disk_size), ("VHD", 4608, 4096));
        // A VMDK sparse header: capacity 2048 sectors.
        let mut vmdk = vec![0u8; 1024];
        vmdk[..4].copy_from_slice(b"KDMV");
        vmdk[12..20].copy_from_slice(&2048u64.to_le_bytes());
        let p = dir.path().join("d.vmdk");
        std::fs::write(&p, &vmdk).unwrap();
        let s = Source::open(&p).unwrap();
        assert_eq!((s.file_format, s.disk_size), ("VMDK", 1 << 20));
    }

    #[test]
    fn unsupported_formats_are_refused_before_any_call() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.qcow2");
        std::fs::write(&p, b"QFI\xfb\0\0\0\x03rest").unwrap();
        let e = Source::open(&p).err().unwrap().to_string();
        assert!(e.contains("is a qcow2 image"), "{e}");
        let p = dir.path().join("d.vmdk");
        std::fs::write(&p, b"# Disk DescriptorFile\nversion=1\n").unwrap();
        let e = Source::open(&p).err().unwrap().to_string();
        assert!(e.contains("VMDK descriptor"), "{e}");
        let p = dir.path().join("empty");
        std::fs::write(&p, b"").unwrap();
        assert!(Source::open(&p).is_err());
        let p = dir.path().join("raw");
        std::fs::write(&p, vec![1u8; 1000]).unwrap();
        let s = Source::open(&p).unwrap();
        assert_eq!((s.size, s.file_format, s.disk_size), (1000, "RAW", 1000));
        assert_eq!(s.read(10, 19).unwrap(), vec![1u8; 10]);
    }
}
