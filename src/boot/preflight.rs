//! `publish`'s pre-flight: before an image is uploaded, boot it locally in every
//! firmware its AMI's boot mode promises (`uefi-preferred`: UEFI and BIOS), and stop
//! that image, before any AWS call about it, if a boot fails.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::firmware::FirmwareChoice;
use super::{BootError, BootOptions, BootReport, record_history};
use crate::ami::{BootMode, ImageSpec, Imds};
use crate::history::BuildInfo;
use crate::state::StateDb;

/// How pre-flight boots are made.
#[derive(Debug, Clone)]
pub struct PreflightOptions {
    /// The metadata relay command (the binary passes `ec2ami imds relay`).
    pub relay: Vec<OsString>,
    /// Longest one boot may take.
    pub timeout: Duration,
    /// Where the console logs of failed boots are kept.
    pub failure_dir: PathBuf,
    /// The region the metadata service reports.
    pub region: String,
    /// The history the boots are recorded in.
    pub history: Option<std::sync::Arc<StateDb>>,
}

/// The firmwares an AMI of this boot mode must boot with, in the order tried.
pub fn firmwares(boot_mode: BootMode) -> FirmwareChoice {
    match boot_mode {
        BootMode::LegacyBios => FirmwareChoice::Bios,
        BootMode::Uefi => FirmwareChoice::Uefi,
        BootMode::UefiPreferred => FirmwareChoice::UefiThenBios,
    }
}

/// The firmwares in words, for a plan.
pub fn describe(boot_mode: BootMode) -> &'static str {
    match boot_mode {
        BootMode::LegacyBios => "boot locally by BIOS",
        BootMode::Uefi => "boot locally by UEFI",
        BootMode::UefiPreferred => "boot locally by UEFI and by BIOS",
    }
}

/// Why an image did not pass its pre-flight.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The boot could not be made at all.
    #[error("pre-flight boot of {}: {source}", path.display())]
    Boot {
        /// The image.
        path: PathBuf,
        /// Why.
        source: BootError,
    },
    /// A boot failed.
    #[error("pre-flight boot of {} failed; nothing of it was uploaded or registered: {}", path.display(), failures.join("; "))]
    Failed {
        /// The image.
        path: PathBuf,
        /// Each failed boot, with its console log.
        failures: Vec<String>,
    },
    /// Ctrl-C or SIGTERM.
    #[error("pre-flight boot interrupted")]
    Interrupted,
}

/// Boot `path` as the AMI `spec` will be booted, stopping at the first failure. The
/// runs go to the history (when `opts.history` is given) as the build `build`.
pub async fn check(
    path: &Path,
    spec: &ImageSpec,
    build: &BuildInfo,
    opts: &PreflightOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<BootReport, PreflightError> {
    let mut b = BootOptions::new(path, opts.relay.clone());
    b.arch = spec.arch;
    b.firmware = firmwares(spec.effective_boot_mode());
    b.timeout = opts.timeout;
    b.failure_dir = opts.failure_dir.clone();
    b.region = opts.region.clone();
    b.imds_v1 = spec.imds == Imds::Optional;
    b.stop_at_first_failure = true;
    let report = super::run(&b, shutdown)
        .await
        .map_err(|source| PreflightError::Boot {
            path: path.to_owned(),
            source,
        })?;
    if report.interrupted {
        return Err(PreflightError::Interrupted);
    }
    if let Some(db) = &opts.history
        && let Err(e) = record_history(db, &report, build, crate::state::now_epoch())
    {
        tracing::warn!("pre-flight boots not recorded in the history: {e}");
    }
    if !report.passed() {
        return Err(PreflightError::Failed {
            path: path.to_owned(),
            failures: report.failures(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_modes_promise_firmwares() {
        assert_eq!(firmwares(BootMode::LegacyBios), FirmwareChoice::Bios);
        assert_eq!(firmwares(BootMode::Uefi), FirmwareChoice::Uefi);
        assert_eq!(
            firmwares(BootMode::UefiPreferred),
            FirmwareChoice::UefiThenBios
        );
    }
}
