//! ec2ami's one view of an AMI and of a snapshot in a region: what register, copy,
//! share, validate, publish, prune and bench need to know, read from DescribeImages and
//! DescribeSnapshots once, with tags as a map.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Image as SdkImage, Snapshot as SdkSnapshot};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use serde::Serialize;

use super::tags;

/// An AMI in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ami {
    /// Region.
    pub region: String,
    /// AMI id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// pending, available, failed, disabled...
    pub state: String,
    /// Why it is failed, if EC2 says.
    pub state_reason: Option<String>,
    /// Launchable by everyone.
    pub public: bool,
    /// CreationDate, epoch seconds (0 when EC2 gives none).
    pub created: i64,
    /// Owner account.
    pub owner: Option<String>,
    /// x86_64, arm64...
    pub architecture: Option<String>,
    /// legacy-bios, uefi, uefi-preferred; `None` when unset.
    pub boot_mode: Option<String>,
    /// ENA support.
    pub ena: bool,
    /// `simple` when SR-IOV is on.
    pub sriov: Option<String>,
    /// `v2.0` when IMDSv2 is required.
    pub imds: Option<String>,
    /// `v2.0` when NitroTPM is on.
    pub tpm: Option<String>,
    /// Root device name.
    pub root_device: Option<String>,
    /// Block device mappings.
    pub mappings: Vec<Mapping>,
    /// DeprecationTime as EC2 shows it, if set.
    pub deprecation: Option<String>,
    /// DeregistrationProtection as EC2 shows it (`enabled`, `enabled-with-cooldown`,
    /// `disabled-until TIME`, `disabled`), if it says.
    pub protection: Option<String>,
    /// LastLaunchedTime, epoch seconds (EC2 reports a launch up to 24 hours late).
    pub last_launched: Option<i64>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// One block device mapping of an AMI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping {
    /// Device name, e.g. `/dev/sda1`.
    pub device: String,
    /// An EBS volume (not an instance store or a suppressed device).
    pub ebs: bool,
    /// The EBS snapshot, if it is an EBS mapping with one.
    pub snapshot_id: Option<String>,
    /// Volume size in GiB.
    pub volume_size: Option<i32>,
    /// Volume type, e.g. `gp3`.
    pub volume_type: Option<String>,
}

impl Ami {
    /// Our view of an SDK image in `region` (`None` without an id).
    pub fn from_sdk(region: &str, img: &SdkImage) -> Option<Ami> {
        Some(Ami {
            region: region.to_string(),
            id: img.image_id()?.to_string(),
            name: img.name().unwrap_or_default().to_string(),
            description: img.description().map(str::to_string),
            state: img
                .state()
                .map(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string(),
            state_reason: img
                .state_reason()
                .and_then(|r| r.message())
                .map(str::to_string),
            public: img.public().unwrap_or(false),
            created: img
                .creation_date()
                .and_then(|d| DateTime::from_str(d, Format::DateTime).ok())
                .map(|d| d.secs())
                .unwrap_or(0),
            owner: img.owner_id().map(str::to_string),
            architecture: img.architecture().map(|a| a.as_str().to_string()),
            boot_mode: img.boot_mode().map(|b| b.as_str().to_string()),
            ena: img.ena_support().unwrap_or(false),
            sriov: img.sriov_net_support().map(str::to_string),
            imds: img.imds_support().map(|v| v.as_str().to_string()),
            tpm: img.tpm_support().map(|v| v.as_str().to_string()),
            root_device: img.root_device_name().map(str::to_string),
            mappings: img
                .block_device_mappings()
                .iter()
                .map(|m| Mapping {
                    device: m.device_name().unwrap_or_default().to_string(),
                    ebs: m.ebs().is_some(),
                    snapshot_id: m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string),
                    volume_size: m.ebs().and_then(|e| e.volume_size()),
                    volume_type: m
                        .ebs()
                        .and_then(|e| e.volume_type())
                        .map(|v| v.as_str().to_string()),
                })
                .collect(),
            deprecation: img.deprecation_time().map(str::to_string),
            protection: img.deregistration_protection().map(str::to_string),
            last_launched: img
                .last_launched_time()
                .and_then(|d| DateTime::from_str(d, Format::DateTime).ok())
                .map(|d| d.secs()),
            tags: tags::to_map(img.tags().iter().map(|t| (t.key(), t.value()))),
        })
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// When ec2ami disabled it (its `ec2ami:disabled-at` tag), epoch seconds.
    pub fn disabled_at(&self) -> Option<i64> {
        self.tag(tags::DISABLED_AT)
            .and_then(|t| DateTime::from_str(t, Format::DateTime).ok())
            .map(|d| d.secs())
    }

    /// Carries ec2ami's ownership tag.
    pub fn managed(&self) -> bool {
        tags::is_managed(&self.tags)
    }

    /// True when `available`.
    pub fn available(&self) -> bool {
        self.state == "available"
    }

    /// Every snapshot its mappings name.
    pub fn snapshots(&self) -> Vec<String> {
        self.snapshot_ids().map(str::to_string).collect()
    }

    /// The ids of the snapshots its mappings name, borrowed.
    pub fn snapshot_ids(&self) -> impl Iterator<Item = &str> {
        self.mappings
            .iter()
            .filter_map(|m| m.snapshot_id.as_deref())
    }

    /// The root device's mapping.
    pub fn root_mapping(&self) -> Option<&Mapping> {
        self.mappings
            .iter()
            .find(|m| Some(m.device.as_str()) == self.root_device.as_deref())
    }

    /// The snapshot it was made from: our tag, else its root device mapping's.
    pub fn source_snapshot(&self) -> Option<String> {
        self.tag(tags::SOURCE_SNAPSHOT)
            .map(str::to_string)
            .or_else(|| self.root_mapping().and_then(|m| m.snapshot_id.clone()))
    }
}

/// An EBS snapshot in one region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Region.
    pub region: String,
    /// Snapshot id.
    pub id: String,
    /// pending, completed, error...
    pub state: String,
    /// Why it is in error, if EC2 says.
    pub state_message: Option<String>,
    /// Progress, e.g. `100%`.
    pub progress: Option<String>,
    /// Volume size, GiB.
    pub volume_size: i32,
    /// The full snapshot size in bytes, when EC2 reports it.
    pub full_size: Option<i64>,
    /// Description (CreateImage and CopyImage write the AMI id there).
    pub description: String,
    /// StartTime, epoch seconds.
    pub started: i64,
    /// Encrypted.
    pub encrypted: bool,
    /// Owner account.
    pub owner: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

impl Snapshot {
    /// Our view of an SDK snapshot in `region` (`None` without an id).
    pub fn from_sdk(region: &str, s: &SdkSnapshot) -> Option<Snapshot> {
        Some(Snapshot {
            region: region.to_string(),
            id: s.snapshot_id()?.to_string(),
            state: s
                .state()
                .map(|st| st.as_str())
                .unwrap_or("unknown")
                .to_string(),
            state_message: s.state_message().map(str::to_string),
            progress: s.progress().map(str::to_string),
            volume_size: s.volume_size().unwrap_or(0),
            full_size: s.full_snapshot_size_in_bytes().filter(|b| *b > 0),
            description: s.description().unwrap_or_default().to_string(),
            started: s.start_time().map(|t| t.secs()).unwrap_or(0),
            encrypted: s.encrypted().unwrap_or(false),
            owner: s.owner_id().map(str::to_string),
            tags: tags::to_map(s.tags().iter().map(|t| (t.key(), t.value()))),
        })
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// Carries ec2ami's ownership tag.
    pub fn managed(&self) -> bool {
        tags::is_managed(&self.tags)
    }

    /// True when `completed`.
    pub fn completed(&self) -> bool {
        self.state == "completed"
    }

    /// Size for estimates, GiB: the full snapshot size when EC2 reports it, else the
    /// volume size (an upper bound).
    pub fn gib(&self) -> f64 {
        match self.full_size {
            Some(b) => b as f64 / (1u64 << 30) as f64,
            None => f64::from(self.volume_size),
        }
    }
}
