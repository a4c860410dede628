//! AMIs: register one from a snapshot, copy it to regions, share it, and find an
//! image's copies across regions. Every step looks before it creates, so reruns are
//! harmless.

pub mod copy;
pub mod protect;
pub mod register;
pub mod retire;
pub mod share;
pub mod uefi;
pub mod waiter;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;
use tokio::time::Instant;

use crate::aws::ec2::{self, ImageQuery};
use crate::aws::poll::{Backoff, Poll, PollError, poll_until};
use crate::aws::{Ami, AwsError, Clients, ErrorClass, RetryPolicy, tags};

pub use copy::{
    CopyLimiter, CopyOptions, CopyOutcome, Inventory, OnCreated, check_outcomes, copy_to_regions,
};
pub use protect::{Completion, Protect};
pub use register::{ImageSpec, Registered, register};
pub use share::{ShareSpec, Target, share};
pub use uefi::UefiData;
pub use waiter::CopyWaiter;

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

/// The line FreeBSD's release scripts grep, as bsdec2-image-upload prints it for each
/// AMI and region.
pub fn created_line(region: &str, image_id: &str) -> String {
    format!("Created AMI in {region} region: {image_id}")
}

/// The regions of `wanted` (`all`: every enabled region), each checked to be enabled.
pub async fn resolve_regions(
    clients: &Clients,
    wanted: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<String>, AmiError> {
    ec2::resolve_regions(clients, wanted, retry)
        .await?
        .map_err(AmiError::Invalid)
}

/// Where `image_id` (in `home`'s region) exists: the image itself and its copies
/// (tagged with [`tags::SOURCE_IMAGE`]) in `regions`, looked up concurrently.
pub async fn locate(
    home: &Clients,
    image_id: &str,
    regions: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<Ami>, AwsError> {
    let home_region = home.region().to_string();
    let lookups = regions.iter().map(|region| {
        let home_region = home_region.clone();
        async move {
            if *region == home_region {
                return ec2::image(home, image_id, retry).await;
            }
            let clients = home.in_region(region);
            let query = ImageQuery::own(vec![ec2::filter(
                &format!("tag:{}", tags::SOURCE_IMAGE),
                image_id,
            )]);
            Ok(ec2::images(&clients, &query, retry)
                .await?
                .into_iter()
                .next())
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
    let state_err = |message: String| AmiError::State {
        image_id: image_id.to_string(),
        region: clients.region().to_string(),
        message,
    };
    let started = Instant::now();
    let backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(15),
    };
    let r = poll_until(deadline, backoff, || async {
        let img = ec2::image(clients, image_id, retry).await?;
        let Some(img) = img else {
            // Not visible yet: a new image, eventual consistency.
            if started.elapsed() > NOT_VISIBLE_GRACE {
                return Err(state_err(format!(
                    "does not exist ({}s after it was expected)",
                    NOT_VISIBLE_GRACE.as_secs()
                )));
            }
            return Ok(Poll::Pending);
        };
        match img.state.as_str() {
            "available" => Ok(Poll::Ready(())),
            s @ ("failed" | "error" | "invalid" | "deregistered") => Err(state_err(format!(
                "image is {s}: {}",
                img.state_reason.as_deref().unwrap_or("no reason given")
            ))),
            other => {
                tracing::debug!("{image_id} in {} is {other}; waiting", clients.region());
                Ok(Poll::Pending)
            }
        }
    })
    .await;
    match r {
        Ok(()) => Ok(()),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::TimedOut { .. }) => Err(state_err(format!(
            "not available within {}s",
            deadline.as_secs()
        ))),
    }
}

/// An error of ours (not AWS's), for reporting through the same types.
pub(crate) fn permanent(operation: &'static str, msg: String) -> AwsError {
    AwsError::local(operation, ErrorClass::Permanent, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_line_is_bsdec2s() {
        assert_eq!(
            created_line("us-east-1", "ami-0123456789abcdef0"),
            "Created AMI in us-east-1 region: ami-0123456789abcdef0"
        );
    }

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
