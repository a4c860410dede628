//! `ec2ami register`, `copy` and `share`.

use std::time::Duration;

use aws_smithy_types::DateTime;
use clap::Args;

use super::{Failure, GlobalArgs, connect, parse_duration};
use ec2ami::ami::{
    self, Arch, BootMode, Completion, CopyLimiter, CopyOptions, CopyWaiter, ImageSpec, Imds,
    Protect, ShareSpec, UefiData,
};
use ec2ami::units::parse_date;

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The snapshot holding the disk image (from `ec2ami upload`).
    #[arg(value_parser = ec2ami::validate_input::snapshot_id)]
    snapshot_id: String,
    /// AMI name (unique in the account and region).
    #[arg(long)]
    name: String,
    /// AMI description.
    #[arg(long)]
    description: Option<String>,
    /// Architecture: x86_64 or arm64.
    #[arg(long, default_value = "x86_64")]
    arch: Arch,
    /// Boot mode: legacy-bios, uefi or uefi-preferred (default: uefi on arm64,
    /// legacy-bios on x86_64).
    #[arg(long)]
    boot_mode: Option<BootMode>,
    /// ENA networking support.
    #[arg(long)]
    ena: bool,
    /// Intel 82599 VF networking (sriovNetSupport=simple).
    #[arg(long)]
    sriov: bool,
    /// NitroTPM v2.0 (needs a UEFI boot mode).
    #[arg(long)]
    tpm: bool,
    /// Instance metadata: v2.0 (IMDSv2 only) or optional.
    #[arg(long, default_value = "v2.0")]
    imds: Imds,
    /// Root device name.
    #[arg(long, default_value = "/dev/sda1")]
    root_device: String,
    /// Root volume type.
    #[arg(long, default_value = "gp3")]
    volume_type: String,
    /// Root volume size in GiB (default: the snapshot's size, at least 10).
    #[arg(long, value_name = "GIB")]
    volume_size: Option<i32>,
    /// Deprecate the image at this time (2027-06-30 or RFC 3339).
    #[arg(long, value_name = "DATE", value_parser = parse_date, conflicts_with = "deprecate_in")]
    deprecate_at: Option<DateTime>,
    /// Deprecate the image this long from now (e.g. 730d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    deprecate_in: Option<Duration>,
    /// Tag the AMI (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = super::parse_user_tag)]
    tags: Vec<(String, String)>,
    /// Protect the AMI from deregistration; `--protect=cooldown` keeps it protected 24
    /// hours after protection is disabled.
    #[arg(long, value_name = "cooldown", num_args = 0..=1, require_equals = true,
          default_missing_value = "", value_parser = Protect::parse)]
    protect: Option<Protect>,
    /// The UEFI variable store (base64, as `aws ec2 get-instance-uefi-data` prints it,
    /// e.g. with Secure Boot keys); needs a UEFI boot mode.
    #[arg(long, value_name = "FILE")]
    uefi_data: Option<std::path::PathBuf>,
    /// How long to wait for the AMI to become available.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    wait_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The AMI to copy (in --region).
    #[arg(value_parser = ec2ami::validate_input::ami_id)]
    image_id: String,
    /// Destination regions: `all` (every enabled region) or a comma-separated list.
    #[arg(long, value_delimiter = ',', required = true, value_parser = ec2ami::validate_input::region_or_all)]
    to: Vec<String>,
    /// Regions where a failed copy is only a warning.
    #[arg(long, value_delimiter = ',', value_name = "REGION,...", value_parser = ec2ami::validate_input::region)]
    best_effort: Vec<String>,
    /// How long to wait for every copy to become available.
    #[arg(long, value_name = "DURATION", default_value = "60m", value_parser = parse_duration)]
    wait_timeout: Duration,
    /// A time-based copy: every snapshot completes within this duration (15-minute
    /// steps, 15m to 48h; SnapshotCopyCompletionDurationMinutes).
    #[arg(long, value_name = "DURATION", value_parser = Completion::parse)]
    completion: Option<Completion>,
    /// Protect each copy from deregistration (`--protect=cooldown`: with the 24-hour
    /// cooldown).
    #[arg(long, value_name = "cooldown", num_args = 0..=1, require_equals = true,
          default_missing_value = "", value_parser = Protect::parse)]
    protect: Option<Protect>,
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// AMIs (in --region); their copies in the other regions are shared too.
    #[arg(required = true, value_parser = ec2ami::validate_input::ami_id)]
    image_ids: Vec<String>,
    /// Make public (launch permission for everyone).
    #[arg(long)]
    public: bool,
    /// Share with this AWS account (repeatable).
    #[arg(long = "account", value_name = "ID")]
    accounts: Vec<String>,
    /// Share with this organization (ARN, repeatable).
    #[arg(long = "org", value_name = "ARN")]
    orgs: Vec<String>,
    /// Share with this organizational unit (ARN, repeatable).
    #[arg(long = "ou", value_name = "ARN")]
    ous: Vec<String>,
    /// Remove these permissions instead of adding them.
    #[arg(long)]
    revoke: bool,
    /// Regions to look for copies in: `all` or a comma-separated list.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = ec2ami::validate_input::region_or_all)]
    regions: Vec<String>,
}

pub async fn register(g: &GlobalArgs, a: &RegisterArgs) -> Result<(), Failure> {
    let deprecate_at = match (a.deprecate_at, a.deprecate_in) {
        (Some(at), _) => Some(at),
        (None, Some(d)) => Some(DateTime::from(std::time::SystemTime::now() + d)),
        (None, None) => None,
    };
    let spec = ImageSpec {
        description: a.description.clone(),
        boot_mode: a.boot_mode,
        ena: a.ena,
        sriov: a.sriov,
        tpm: a.tpm,
        imds: a.imds,
        root_device: a.root_device.clone(),
        volume_type: a.volume_type.clone(),
        volume_size_gib: a.volume_size,
        deprecate_at,
        tags: a.tags.clone(),
        protect: a.protect,
        uefi_data: match &a.uefi_data {
            Some(path) => Some(UefiData::read(path).map_err(ami::AmiError::Invalid)?),
            None => None,
        },
        ..ImageSpec::new(a.name.clone(), a.arch)
    };
    spec.validate()?;
    if let Some(at) = spec.deprecate_at {
        ec2ami::validate_input::deprecation_time(at, ec2ami::validate_input::now(), false)
            .map_err(|message| Failure {
                message,
                interrupted: false,
            })?;
    }
    let clients = connect(g).await?;
    let r = ami::register(&clients, &a.snapshot_id, &spec, a.wait_timeout, &g.retry()).await?;
    g.print(&r, || r.image_id.clone());
    Ok(())
}

pub async fn copy(g: &GlobalArgs, a: &CopyArgs) -> Result<(), Failure> {
    let clients = connect(g).await?;
    let retry = g.retry();
    let regions = ami::resolve_regions(&clients, &a.to, &retry).await?;
    let best_effort = ami::resolve_regions(&clients, &a.best_effort, &retry).await?;
    let opts = CopyOptions {
        regions,
        best_effort,
        wait: a.wait_timeout,
        retry,
        limiter: CopyLimiter::default(),
        on_created: None,
        token_salt: uuid::Uuid::new_v4().to_string(),
        known: None,
        completion: a.completion,
        protect: a.protect,
        waiter: CopyWaiter::default(),
    };
    let outcomes = ami::copy_to_regions(&clients, &a.image_id, &opts).await?;
    ami::check_outcomes(&a.image_id, &outcomes)?;
    g.print(&outcomes, || {
        std::iter::once(ami::created_line(clients.region(), &a.image_id))
            .chain(outcomes.iter().filter_map(|o| {
                o.image_id
                    .as_ref()
                    .filter(|_| o.error.is_none())
                    .map(|id| ami::created_line(&o.region, id))
            }))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

pub async fn share(g: &GlobalArgs, a: &ShareArgs) -> Result<(), Failure> {
    let spec = ShareSpec {
        public: a.public,
        accounts: a.accounts.clone(),
        orgs: a.orgs.clone(),
        ous: a.ous.clone(),
        revoke: a.revoke,
    };
    spec.validate()?;
    let clients = connect(g).await?;
    let retry = g.retry();
    let regions = ami::resolve_regions(&clients, &a.regions, &retry).await?;
    let mut images = Vec::new();
    for id in &a.image_ids {
        let found = ami::locate(&clients, id, &regions, &retry).await?;
        if !found.iter().any(|i| i.region == clients.region()) {
            return Err(Failure::from(ami::AmiError::Invalid(format!(
                "{id} not found in {}",
                clients.region()
            ))));
        }
        images.extend(found.into_iter().map(|i| ami::Target {
            region: i.region,
            image_id: i.id,
        }));
    }
    let done = ami::share(&clients, &images, &spec, &retry).await?;
    let verb = if a.revoke { "revoked" } else { "shared" };
    g.print(&done, || {
        done.iter()
            .map(|s| format!("{} {} {verb}", s.region, s.image_id))
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
