//! The EC2 calls of an image's later life: deregistration protection, disabling and
//! enabling, block public access states, the count of public images, and images looked
//! up by id in batches (one request for many, as copy waiting needs).

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use serde::Serialize;

use super::ec2::{self, ImageQuery, filter, filter_any};
use super::{Ami, AwsError, Call, Clients, RetryPolicy};

/// Most values of one DescribeImages filter (AWS takes up to 200).
pub const IDS_PER_FILTER: usize = 200;

/// Deregistration protection of an image, as DescribeImages shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Protection {
    /// Not protected: it can be deregistered.
    Off,
    /// Protected; `cooldown`: disabling it keeps it protected 24 hours longer.
    On {
        /// Enabled with the 24-hour cooldown.
        cooldown: bool,
    },
    /// Protection was disabled, the cooldown runs until `until` (epoch seconds).
    Cooling {
        /// When it can be deregistered.
        until: i64,
    },
}

impl Protection {
    /// Read DeregistrationProtection (`enabled`, `enabled-with-cooldown`, `disabled-until
    /// 2026-12-01T10:00:00.000Z`, `disabled`; absent: not protected). A cooldown that
    /// has run out reads as off.
    pub fn parse(state: Option<&str>, now: i64) -> Protection {
        let Some(s) = state.map(str::trim) else {
            return Protection::Off;
        };
        if s == "enabled-with-cooldown" {
            return Protection::On { cooldown: true };
        }
        if s == "enabled" {
            return Protection::On { cooldown: false };
        }
        if let Some(t) = s.strip_prefix("disabled-until") {
            let until = DateTime::from_str(t.trim(), Format::DateTime)
                .map(|d| d.secs())
                // Unreadable: take it as protected for the whole cooldown.
                .unwrap_or(now + 86_400);
            return if until > now {
                Protection::Cooling { until }
            } else {
                Protection::Off
            };
        }
        Protection::Off
    }

    /// True while DeregisterImage would be refused.
    pub fn blocks_deregistration(&self) -> bool {
        !matches!(self, Protection::Off)
    }
}

/// EnableImageDeregistrationProtection (`cooldown`: WithCooldown).
pub async fn enable_protection(
    clients: &Clients,
    image_id: &str,
    cooldown: bool,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let call = Call::new("EnableImageDeregistrationProtection", clients.region()).on(image_id);
    retry
        .send(&call, || {
            clients
                .ec2
                .enable_image_deregistration_protection()
                .image_id(image_id)
                .with_cooldown(cooldown)
                .send()
        })
        .await?;
    Ok(())
}

/// DisableImageDeregistrationProtection.
pub async fn disable_protection(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let call = Call::new("DisableImageDeregistrationProtection", clients.region()).on(image_id);
    retry
        .send(&call, || {
            clients
                .ec2
                .disable_image_deregistration_protection()
                .image_id(image_id)
                .send()
        })
        .await?;
    Ok(())
}

/// DisableImage: no longer launchable, every launch permission removed.
pub async fn disable_image(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let call = Call::new("DisableImage", clients.region()).on(image_id);
    retry
        .send(&call, || {
            clients.ec2.disable_image().image_id(image_id).send()
        })
        .await?;
    Ok(())
}

/// EnableImage: launchable again (the launch permissions are not restored by AWS).
pub async fn enable_image(
    clients: &Clients,
    image_id: &str,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    let call = Call::new("EnableImage", clients.region()).on(image_id);
    retry
        .send(&call, || {
            clients.ec2.enable_image().image_id(image_id).send()
        })
        .await?;
    Ok(())
}

/// GetImageBlockPublicAccessState: `block-new-sharing` or `unblocked`.
pub async fn image_block_public_access(
    clients: &Clients,
    retry: &RetryPolicy,
) -> Result<String, AwsError> {
    let out = retry
        .send(&clients.call("GetImageBlockPublicAccessState"), || {
            clients.ec2.get_image_block_public_access_state().send()
        })
        .await?;
    Ok(out
        .image_block_public_access_state()
        .unwrap_or("unblocked")
        .to_string())
}

/// GetSnapshotBlockPublicAccessState: `block-all-sharing`, `block-new-sharing` or
/// `unblocked`.
pub async fn snapshot_block_public_access(
    clients: &Clients,
    retry: &RetryPolicy,
) -> Result<String, AwsError> {
    let out = retry
        .send(&clients.call("GetSnapshotBlockPublicAccessState"), || {
            clients.ec2.get_snapshot_block_public_access_state().send()
        })
        .await?;
    Ok(out
        .state()
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| "unblocked".into()))
}

/// The account's public images in `clients`' region (deprecated ones count against the
/// quota too).
pub async fn public_images(clients: &Clients, retry: &RetryPolicy) -> Result<Vec<Ami>, AwsError> {
    let q = ImageQuery {
        filters: vec![filter("is-public", "true")],
        include_deprecated: true,
        include_disabled: false,
    };
    ec2::images(clients, &q, retry).await
}

/// The account's images among `ids` in `clients`' region, disabled ones too: one
/// DescribeImages per 200 ids, by an `image-id` filter (an id EC2 does not know yet is
/// simply absent, where ImageIds would fail the whole request).
pub async fn images_by_id(
    clients: &Clients,
    ids: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<Ami>, AwsError> {
    let mut out = Vec::new();
    for chunk in ids.chunks(IDS_PER_FILTER) {
        let q = ImageQuery::everything(vec![filter_any("image-id", chunk)]);
        out.extend(ec2::images(clients, &q, retry).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protection_states_read_as_ec2_writes_them() {
        let now = 1_800_000_000;
        assert_eq!(Protection::parse(None, now), Protection::Off);
        assert_eq!(Protection::parse(Some("disabled"), now), Protection::Off);
        assert_eq!(
            Protection::parse(Some("enabled"), now),
            Protection::On { cooldown: false }
        );
        assert_eq!(
            Protection::parse(Some("enabled-with-cooldown"), now),
            Protection::On { cooldown: true }
        );
        let later = DateTime::from_secs(now + 3600)
            .fmt(Format::DateTime)
            .unwrap();
        assert_eq!(
            Protection::parse(Some(&format!("disabled-until {later}")), now),
            Protection::Cooling { until: now + 3600 }
        );
        let past = DateTime::from_secs(now - 1).fmt(Format::DateTime).unwrap();
        assert_eq!(
            Protection::parse(Some(&format!("disabled-until {past}")), now),
            Protection::Off
        );
        assert!(Protection::On { cooldown: false }.blocks_deregistration());
        assert!(!Protection::Off.blocks_deregistration());
    }
}
