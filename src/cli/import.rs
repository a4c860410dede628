//! `upload --via s3` and `manifest write|verify`: the S3 import path.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use ec2ami::import::{self, S3Options};

use super::{Failure, GlobalArgs, UploadArgs, connect, parse_duration, shutdown_signal};

/// Largest number of parts in flight (each holds 10 MiB in memory).
const MAX_PART_WORKERS: usize = 16;

/// How `upload` gets the image to EBS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// The EBS direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot).
    Direct,
    /// Parts in S3 with a manifest, then ImportVolume (raw) or ImportSnapshot (VMDK, VHD).
    S3,
}

/// `upload`'s options of the S3 path.
#[derive(Debug, Args)]
pub struct ViaArgs {
    /// How the image goes to EBS.
    #[arg(long, value_enum, default_value_t = Via::Direct)]
    pub via: Via,
    /// The S3 bucket of --via s3 (in the region of the import).
    #[arg(long, required_if_eq("via", "s3"))]
    pub bucket: Option<String>,
    /// Key prefix of --via s3 (objects go under PREFIX/ec2ami-NONCE/).
    #[arg(long, requires = "bucket")]
    pub prefix: Option<String>,
    /// Zone of ImportVolume's volume (default: the region's first available zone).
    #[arg(long, value_name = "ZONE", requires = "bucket")]
    pub availability_zone: Option<String>,
}

/// `manifest ...`.
#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Put an image's 10 MiB parts and their manifest (with each part's SHA-256) in S3,
    /// import nothing; prints the manifest (or its pre-signed URL with --print url).
    Write(WriteArgs),
    /// Fetch every part of a manifest by its get-url and check its length and SHA-256.
    Verify(VerifyArgs),
}

/// `manifest write`.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Raw, VMDK or VHD image.
    image: PathBuf,
    /// The S3 bucket.
    #[arg(long)]
    bucket: String,
    /// Key prefix (objects go under PREFIX/ec2ami-NONCE/).
    #[arg(long)]
    prefix: Option<String>,
    /// Also write the manifest to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Lifetime of the pre-signed URLs (at most 7 days).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    expires: Duration,
    /// Concurrent part uploads.
    #[arg(long, default_value_t = import::DEFAULT_WORKERS, value_parser = parse_part_workers)]
    workers: usize,
}

/// `manifest verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The manifest file (`-` for stdin).
    manifest: PathBuf,
    /// Concurrent fetches.
    #[arg(long, default_value_t = import::DEFAULT_WORKERS, value_parser = parse_part_workers)]
    workers: usize,
}

fn parse_part_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_PART_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a worker count from 1 to {MAX_PART_WORKERS}"
        )),
    }
}

/// Seven days: the longest a SigV4 pre-signed URL lives.
const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

fn s3_options(g: &GlobalArgs, bucket: &str, prefix: &Option<String>) -> S3Options {
    S3Options {
        prefix: prefix.clone().unwrap_or_default(),
        retry: g.retry(),
        ..S3Options::new(bucket)
    }
}

/// `upload IMAGE --via s3 --bucket B`.
pub(super) async fn upload(g: &GlobalArgs, a: &UploadArgs) -> Result<(), Failure> {
    let not_with_s3 = [
        (a.encrypted, "--encrypted"),
        (a.kms_key_id.is_some(), "--kms-key-id"),
        (a.no_wait, "--no-wait"),
        (a.index_dir.is_some(), "--index-dir"),
        (a.client_token.is_some(), "--client-token"),
    ];
    if let Some((_, flag)) = not_with_s3.iter().find(|(set, _)| *set) {
        return Err(Failure {
            message: format!(
                "{flag} belongs to the direct upload; it cannot be used with --via s3"
            ),
            interrupted: false,
        });
    }
    let bucket =
        a.s3.bucket
            .as_deref()
            .expect("clap requires --bucket with --via s3");
    let opts = S3Options {
        workers: a.workers.min(MAX_PART_WORKERS),
        keep_on_failure: a.keep_on_failure,
        wait: a.wait_timeout,
        description: a.description.clone(),
        tags: a.tags.clone(),
        availability_zone: a.s3.availability_zone.clone(),
        ..s3_options(g, bucket, &a.s3.prefix)
    };
    // Every check of the image happens before any AWS call.
    ec2ami::image::DiskImage::check(&a.image).or_else(|e| match e {
        // The S3 path sends VMDK and VHD as they are: no qemu-img needed here.
        ec2ami::image::ImageError::NeedsConversion { .. } => Ok((0, ec2ami::image::Format::Raw)),
        e => Err(e),
    })?;
    let clients = connect(g).await?;
    match import::import(&clients, &a.image, &opts, shutdown_signal()).await {
        Ok(report) => {
            tracing::info!(
                "imported {} ({} part(s), {} bytes) by {} task {} to {} in {:.1}s",
                a.image.display(),
                report.parts,
                report.bytes_sent,
                report.operation,
                report.task_id,
                report.snapshot_id,
                report.seconds
            );
            g.print(&report, || report.snapshot_id.clone());
            Ok(())
        }
        Err(e) => Err(Failure {
            interrupted: e.interrupted(),
            message: e.to_string(),
        }),
    }
}

/// `manifest write|verify`.
pub(super) async fn manifest(g: &GlobalArgs, c: &ManifestCommand) -> Result<(), Failure> {
    match c {
        ManifestCommand::Write(a) => write(g, a).await,
        ManifestCommand::Verify(a) => verify_cmd(g, a).await,
    }
}

async fn write(g: &GlobalArgs, a: &WriteArgs) -> Result<(), Failure> {
    if a.expires > MAX_EXPIRY || a.expires.is_zero() {
        return Err(Failure {
            message: "--expires must be more than 0 and at most 7d (SigV4 pre-signed URLs)".into(),
            interrupted: false,
        });
    }
    if let Some(out) = &a.out
        && out.exists()
    {
        return Err(Failure {
            message: format!("{} exists; not overwriting it", out.display()),
            interrupted: false,
        });
    }
    ec2ami::image::DiskImage::check(&a.image).or_else(|e| match e {
        ec2ami::image::ImageError::NeedsConversion { .. } => Ok((0, ec2ami::image::Format::Raw)),
        e => Err(e),
    })?;
    let opts = S3Options {
        workers: a.workers,
        url_expiry: a.expires,
        ..s3_options(g, &a.bucket, &a.prefix)
    };
    let clients = connect(g).await?;
    let written = import::write_manifest(&clients, &a.image, &opts)
        .await
        .map_err(|e| Failure {
            interrupted: e.interrupted(),
            message: e.to_string(),
        })?;
    let xml = written.manifest.to_xml();
    if let Some(out) = &a.out {
        std::fs::write(out, &xml).map_err(|e| Failure {
            message: format!(
                "writing {}: {e} (the manifest is in S3: s3://{}/{})",
                out.display(),
                written.bucket,
                written.manifest_key
            ),
            interrupted: false,
        })?;
    }
    tracing::info!(
        "wrote s3://{}/{} ({} part(s), {} bytes)",
        written.bucket,
        written.manifest_key,
        written.part_keys.len(),
        written.bytes_sent
    );
    g.print(&written, || xml.trim_end().to_string());
    Ok(())
}

async fn verify_cmd(g: &GlobalArgs, a: &VerifyArgs) -> Result<(), Failure> {
    let text = if a.manifest.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(&a.manifest)
    }
    .map_err(|e| Failure {
        message: format!("cannot read {}: {e}", a.manifest.display()),
        interrupted: false,
    })?;
    let m = import::Manifest::parse(&text).map_err(|e| Failure {
        message: format!("{}: {e}", a.manifest.display()),
        interrupted: false,
    })?;
    let v = import::verify(
        &m,
        import::VerifyOptions {
            workers: a.workers,
            timeout: Duration::from_secs(300),
        },
    )
    .await
    .map_err(|message| Failure {
        message,
        interrupted: false,
    })?;
    let bad = v.failures();
    g.print(&v, || {
        v.parts
            .iter()
            .map(|p| format!("part {} {}: {}", p.index, p.key, p.result))
            .collect::<Vec<_>>()
            .join("\n")
    });
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            message: format!(
                "{}: {} of {} part(s) do not match the manifest (first: part {}: {})",
                a.manifest.display(),
                bad.len(),
                v.parts.len(),
                bad[0].index,
                bad[0].result
            ),
            interrupted: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_workers_are_bounded() {
        assert_eq!(parse_part_workers("16"), Ok(16));
        assert!(parse_part_workers("0").is_err());
        assert!(parse_part_workers("17").is_err());
    }
}
