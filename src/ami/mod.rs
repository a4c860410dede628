//! AMIs: register one from a snapshot, copy it to regions, share it, and find an
//! image's copies across regions. Every step looks before it creates, so reruns are
//! harmless.

pub mod copy;
pub mod register;
pub mod share;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, Image, ImageState};
use futures_util::future::join_all;
use serde::Serialize;
use tokio::time::Instant;

use crate::aws::{AwsError, Clients, ErrorClass, RetryPolicy};

pub use copy::{
    CopyLimiter, CopyOptions, CopyOutcome, Inventory, OnCreated, check_outcomes, copy_to_regions,
    inventory,
};
pub use register::{ImageSpec, Registered, register};
pub use share::{ShareSpec, share};

/// On an AMI: the snapshot it was registered from.
pub const SOURCE_SNAPSHOT_TAG: &str = "ec2ami:source-snapshot";
/// On a copy: the AMI id it was copied from.
pub const SOURCE_IMAGE_TAG: &str = "ec2ami:source-image";
/// On a copy: the region it was copied from.
pub const SOURCE_REGION_TAG: &str = "ec2ami:source-region";

/// CPU architecture of an AMI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Arch {
    /// amd64.
    #[serde(rename = "x86_64")]
    X86_64,
    /// aarch64 (Graviton).
    #[serde(rename = "arm64")]
    Arm64,
}

/// How an AMI boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BootMode {
    /// BIOS.
    #[serde(rename = "legacy-bios")]
    LegacyBios,
    /// UEFI.
    #[serde(rename = "uefi")]
    Uefi,
    /// UEFI where the instance type has it, BIOS elsewhere (polyglot images).
    #[serde(rename = "uefi-preferred")]
    UefiPreferred,
}

/// Instance metadata service versions an AMI's instances accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Imds {
    /// IMDSv2 only (the secure default).
    #[serde(rename = "v2.0")]
    #[default]
    V2,
    /// v1 or v2.
    #[serde(rename = "optional")]
    Optional,
}

macro_rules! string_enum {
    ($t:ty, $what:literal, $($s:literal => $v:expr),+ $(,)?) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($v),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " `{}` (one of: {})"),
                        s,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                $(if *self == $v { return f.write_str($s); })+
                unreachable!()
            }
        }
    };
}

string_enum!(Arch, "architecture", "x86_64" => Arch::X86_64, "arm64" => Arch::Arm64);
string_enum!(BootMode, "boot mode",
    "legacy-bios" => BootMode::LegacyBios,
    "uefi" => BootMode::Uefi,
    "uefi-preferred" => BootMode::UefiPreferred);
string_enum!(Imds, "IMDS support", "v2.0" => Imds::V2, "optional" => Imds::Optional);

/// Why an AMI step failed.
#[derive(Debug, thiserror::Error)]
pub enum AmiError {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The request makes no sense; nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// The name is taken by an image of different content.
    #[error(
        "an AMI named `{name}` already exists in {region} ({image_id}) made from {existing}, \
         not from {wanted}: choose another name or deregister it"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// Region.
        region: String,
        /// The existing AMI.
        image_id: String,
        /// Its snapshot.
        existing: String,
        /// The snapshot we register.
        wanted: String,
    },
    /// An image did not become available in time, or failed.
    #[error("{image_id} in {region}: {message}")]
    State {
        /// The AMI.
        image_id: String,
        /// Region.
        region: String,
        /// What happened.
        message: String,
    },
    /// Some regions failed (copies, sharing).
    #[error("{}", .0.join("; "))]
    Regions(Vec<String>),
}

/// An AMI in one region.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegionalImage {
    /// Region.
    pub region: String,
    /// AMI id there.
    pub image_id: String,
    /// Its name.
    pub name: String,
    /// pending, available, failed...
    pub state: String,
    /// Launchable by everyone.
    pub public: bool,
}

impl RegionalImage {
    fn from_image(region: &str, img: &Image) -> Option<RegionalImage> {
        Some(RegionalImage {
            region: region.to_string(),
            image_id: img.image_id()?.to_string(),
            name: img.name().unwrap_or_default().to_string(),
            state: img
                .state()
                .map(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string(),
            public: img.public().unwrap_or(false),
        })
    }
}

fn tag<'a>(img: &'a Image, key: &str) -> Option<&'a str> {
    img.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Our images in `clients`' region matching `filters` (every page).
pub async fn describe_own(
    clients: &Clients,
    filters: Vec<Filter>,
    retry: &RetryPolicy,
) -> Result<Vec<Image>, AwsError> {
    let mut images = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = retry
            .run("DescribeImages", || async {
                clients
                    .ec2
                    .describe_images()
                    .owners("self")
                    .set_filters(Some(filters.clone()))
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk("DescribeImages", e))
            })
            .await?;
        images.extend(out.images().iter().cloned());
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(images),
        }
    }
}

/// One DescribeImages filter.
pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// Our AMI named `name` in `clients`' region, if any.
pub async fn find_by_name(
    clients: &Clients,
    name: &str,
    retry: &RetryPolicy,
) -> Result<Option<Image>, AwsError> {
    Ok(describe_own(clients, vec![filter("name", name)], retry)
        .await?
        .into_iter()
        .next())
}

/// One image by id in `clients`' region (`None` if EC2 does not know it).
pub async fn describe_one(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<Option<Image>, AwsError> {
    let out = retry
        .run(&format!("DescribeImages {image_id}"), || async {
            clients
                .ec2
                .describe_images()
                .image_ids(image_id)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("DescribeImages", e))
        })
        .await;
    match out {
        Ok(out) => Ok(out.images().first().cloned()),
        Err(e) if e.has_code("InvalidAMIID.NotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The regions enabled for the account (opt-in regions only once opted in).
pub async fn enabled_regions(
    clients: &Clients,
    retry: &RetryPolicy,
) -> Result<Vec<String>, AwsError> {
    let out = retry
        .run("DescribeRegions", || async {
            clients
                .ec2
                .describe_regions()
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("DescribeRegions", e))
        })
        .await?;
    let mut regions: Vec<String> = out
        .regions()
        .iter()
        .filter(|r| r.opt_in_status() != Some("not-opted-in"))
        .filter_map(|r| r.region_name().map(str::to_string))
        .collect();
    regions.sort();
    Ok(regions)
}

/// Resolve a region list: `all` means every enabled region; otherwise the names are
/// checked against the enabled ones (an unknown or disabled region is an error).
pub async fn resolve_regions(
    clients: &Clients,
    wanted: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<String>, AmiError> {
    let enabled = enabled_regions(clients, retry).await?;
    if wanted.iter().any(|r| r == "all") {
        return Ok(enabled);
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .filter(|r| !enabled.contains(r))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(AmiError::Invalid(format!(
            "unknown or disabled region(s): {} (enabled: {})",
            unknown.join(", "),
            enabled.join(", ")
        )));
    }
    let mut out = wanted.to_vec();
    out.dedup();
    Ok(out)
}

/// Where `image_id` (in `home`'s region) exists: the image itself and its copies
/// (tagged with [`SOURCE_IMAGE_TAG`]) in `regions`, looked up concurrently.
pub async fn locate(
    home: &Clients,
    image_id: &str,
    regions: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<RegionalImage>, AwsError> {
    let home_region = home.region().to_string();
    let lookups = regions.iter().map(|region| {
        let home_region = home_region.clone();
        async move {
            if *region == home_region {
                let img = describe_one(home, image_id, retry).await?;
                return Ok(img.and_then(|i| RegionalImage::from_image(region, &i)));
            }
            let clients = home.in_region(region);
            let found = describe_own(
                &clients,
                vec![filter(&format!("tag:{SOURCE_IMAGE_TAG}"), image_id)],
                retry,
            )
            .await?;
            Ok(found
                .iter()
                .find_map(|i| RegionalImage::from_image(region, i)))
        }
    });
    let mut found = Vec::new();
    for r in join_all(lookups).await {
        if let Some(img) = r? {
            found.push(img);
        }
    }
    Ok(found)
}

/// How long a new image may stay invisible to DescribeImages (eventual consistency)
/// before it is taken as gone.
const NOT_VISIBLE_GRACE: Duration = Duration::from_secs(120);

/// Wait until `image_id` is `available` (fails on `failed`/`error`/`deregistered`, when
/// it stays invisible, or at the deadline).
pub async fn wait_available(
    clients: &Clients,
    image_id: &str,
    deadline: Duration,
    retry: &RetryPolicy,
) -> Result<(), AmiError> {
    let until = Instant::now() + deadline;
    let mut delay = Duration::from_millis(500);
    let state_err = |message: String| AmiError::State {
        image_id: image_id.to_string(),
        region: clients.region().to_string(),
        message,
    };
    let started = Instant::now();
    loop {
        let img = describe_one(clients, image_id, retry).await?;
        if img.is_none() && started.elapsed() > NOT_VISIBLE_GRACE {
            return Err(state_err(format!(
                "does not exist ({}s after it was expected)",
                NOT_VISIBLE_GRACE.as_secs()
            )));
        }
        match img.as_ref().and_then(|i| i.state()) {
            Some(ImageState::Available) => return Ok(()),
            Some(
                s @ (ImageState::Failed
                | ImageState::Error
                | ImageState::Invalid
                | ImageState::Deregistered),
            ) => {
                let why = img
                    .as_ref()
                    .and_then(|i| i.state_reason())
                    .and_then(|r| r.message())
                    .unwrap_or("no reason given");
                return Err(state_err(format!("image is {}: {why}", s.as_str())));
            }
            // Not visible yet (a new image, eventual consistency) or still pending.
            other => tracing::debug!(
                "{image_id} in {} is {:?}; waiting",
                clients.region(),
                other.map(|s| s.as_str())
            ),
        }
        if Instant::now() + delay > until {
            return Err(state_err(format!(
                "not available within {}s",
                deadline.as_secs()
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

/// An error of ours (not AWS's), for reporting through the same types.
pub(crate) fn permanent(operation: &'static str, msg: String) -> AwsError {
    crate::snapshot::local_error(operation, ErrorClass::Permanent, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_parse_and_print() {
        for s in ["x86_64", "arm64"] {
            assert_eq!(s.parse::<Arch>().unwrap().to_string(), s);
        }
        for s in ["legacy-bios", "uefi", "uefi-preferred"] {
            assert_eq!(s.parse::<BootMode>().unwrap().to_string(), s);
        }
        assert_eq!("v2.0".parse::<Imds>().unwrap(), Imds::V2);
        let e = "amd64".parse::<Arch>().unwrap_err();
        assert!(e.contains("x86_64, arm64"), "{e}");
    }
}
