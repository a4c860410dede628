//! Register an AMI from a snapshot, with the defaults a release engineer expects, and
//! reuse an existing AMI of the same name made from the same snapshot.

use std::time::Duration;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, ImdsSupportValues,
    ResourceType, Tag, TagSpecification, TpmSupportValues, VolumeType,
};
use aws_smithy_types::DateTime;
use serde::Serialize;

use super::protect::Protect;
use super::uefi::UefiData;
use super::{AmiError, Arch, BootMode, Imds, permanent, wait_available};
use crate::aws::{Ami, AwsError, Clients, RetryPolicy, ec2, tags};

/// What an AMI should be.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Name (unique per account and region).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Architecture.
    pub arch: Arch,
    /// Boot mode; `None`: uefi on arm64, legacy-bios on x86_64.
    pub boot_mode: Option<BootMode>,
    /// ENA networking.
    pub ena: bool,
    /// Intel 82599 VF networking (`sriovNetSupport=simple`).
    pub sriov: bool,
    /// NitroTPM v2.0 (needs UEFI).
    pub tpm: bool,
    /// IMDS versions accepted.
    pub imds: Imds,
    /// Root device name.
    pub root_device: String,
    /// Root volume type.
    pub volume_type: String,
    /// Root volume size in GiB; `None`: the snapshot's size, at least 10 GiB.
    pub volume_size_gib: Option<i32>,
    /// When EC2 should mark the image deprecated.
    pub deprecate_at: Option<DateTime>,
    /// Extra tags.
    pub tags: Vec<(String, String)>,
    /// Deregistration protection (on the image and every copy).
    pub protect: Option<Protect>,
    /// The UEFI variable store (needs a UEFI boot mode).
    pub uefi_data: Option<UefiData>,
}

impl ImageSpec {
    /// A spec with the release engineer's defaults for `name` and `arch`.
    pub fn new(name: impl Into<String>, arch: Arch) -> Self {
        ImageSpec {
            name: name.into(),
            description: None,
            arch,
            boot_mode: None,
            ena: false,
            sriov: false,
            tpm: false,
            imds: Imds::V2,
            root_device: "/dev/sda1".into(),
            volume_type: "gp3".into(),
            volume_size_gib: None,
            deprecate_at: None,
            tags: Vec::new(),
            protect: None,
            uefi_data: None,
        }
    }

    /// The boot mode used: the one asked for, else uefi on arm64, legacy-bios on x86_64.
    pub fn effective_boot_mode(&self) -> BootMode {
        self.boot_mode.unwrap_or(match self.arch {
            Arch::Arm64 => BootMode::Uefi,
            Arch::X86_64 => BootMode::LegacyBios,
        })
    }

    /// Check what AWS would refuse, before any request.
    pub fn validate(&self) -> Result<(), AmiError> {
        let bad = |m: String| Err(AmiError::Invalid(m));
        let n = self.name.len();
        if !(3..=128).contains(&n) {
            return bad(format!(
                "AMI name `{}` must be 3 to 128 characters",
                self.name
            ));
        }
        if let Some(c) = self
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(*c)))
        {
            return bad(format!(
                "AMI name `{}` has `{c}`: only letters, digits and ( ) [ ] space . / - ' @ _ are allowed",
                self.name
            ));
        }
        if self.arch == Arch::Arm64 && self.effective_boot_mode() == BootMode::LegacyBios {
            return bad("arm64 images cannot boot in legacy-bios mode".into());
        }
        if self.tpm && self.effective_boot_mode() == BootMode::LegacyBios {
            return bad("--tpm needs a UEFI boot mode (uefi or uefi-preferred)".into());
        }
        if self.uefi_data.is_some() && self.effective_boot_mode() == BootMode::LegacyBios {
            return bad(
                "UEFI data needs a UEFI boot mode (uefi or uefi-preferred), not legacy-bios".into(),
            );
        }
        if self
            .volume_size_gib
            .is_some_and(|s| !(1..=65536).contains(&s))
        {
            return bad("--volume-size must be 1 to 65536 GiB".into());
        }
        if !VolumeType::values().contains(&self.volume_type.as_str()) {
            return bad(format!("unknown volume type `{}`", self.volume_type));
        }
        Ok(())
    }
}

/// The result of [`register`].
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    /// Region.
    pub region: String,
    /// The AMI.
    pub image_id: String,
    /// The snapshot it was made from.
    pub snapshot_id: String,
    /// True when an existing AMI (same name, same snapshot) was reused.
    pub reused: bool,
}

/// Register `snapshot_id` as the AMI `spec` describes (or reuse the one that already
/// is), then wait until it is available.
pub async fn register(
    clients: &Clients,
    snapshot_id: &str,
    spec: &ImageSpec,
    wait: Duration,
    retry: &RetryPolicy,
) -> Result<Registered, AmiError> {
    spec.validate()?;
    let region = clients.region().to_string();
    let done = |image_id: String, reused| Registered {
        region: region.clone(),
        image_id,
        snapshot_id: snapshot_id.to_string(),
        reused,
    };
    if let Some(existing) = reusable(clients, snapshot_id, spec, retry).await? {
        let id = existing.id.clone();
        tracing::info!("{id} in {region} is already `{}`: reused", spec.name);
        wait_available(clients, &id, wait, retry).await?;
        if let Some(p) = spec.protect
            && p.missing_on(&existing, crate::state::now_epoch())
        {
            p.apply(clients, &id, retry).await?;
        }
        return Ok(done(id, true));
    }
    let snapshot_gib = snapshot_size(clients, snapshot_id, retry).await?;
    let size = spec.volume_size_gib.unwrap_or(snapshot_gib.max(10));
    if size < snapshot_gib {
        return Err(AmiError::Invalid(format!(
            "--volume-size {size} GiB is smaller than the snapshot ({snapshot_gib} GiB)"
        )));
    }
    let result = retry
        .send(&clients.call("RegisterImage").on(&spec.name), || {
            request(clients, snapshot_id, spec, size).send()
        })
        .await;
    let image_id = match result {
        Ok(out) => out
            .image_id()
            .ok_or_else(|| permanent("RegisterImage", "answered no image id".into()))?
            .to_string(),
        // A retried RegisterImage whose first answer was lost finds its own image.
        Err(e) if e.has_code("InvalidAMIName.Duplicate") => {
            match reusable(clients, snapshot_id, spec, retry).await? {
                Some(img) => img.id,
                None => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!("registered {image_id} `{}` in {region}", spec.name);
    if let Err(e) = finish_new(clients, &image_id, spec, wait, retry).await {
        return Err(after_create(clients, &image_id, snapshot_id, spec, e, retry).await);
    }
    Ok(done(image_id, false))
}

/// The steps after RegisterImage answered: the deprecation, the wait until available,
/// the deregistration protection.
async fn finish_new(
    clients: &Clients,
    image_id: &str,
    spec: &ImageSpec,
    wait: Duration,
    retry: &RetryPolicy,
) -> Result<(), AmiError> {
    let region = clients.region();
    if let Some(at) = spec.deprecate_at {
        deprecate(clients, image_id, at, retry).await.map_err(|e| {
            AmiError::Invalid(format!(
                "setting the deprecation of {image_id} `{}` in {region} failed: {e}",
                spec.name
            ))
        })?;
    }
    wait_available(clients, image_id, wait, retry).await?;
    if let Some(p) = spec.protect {
        p.apply(clients, image_id, retry).await.map_err(|e| {
            AmiError::Invalid(format!(
                "protecting {image_id} `{}` in {region} from deregistration failed: {e}",
                spec.name
            ))
        })?;
    }
    Ok(())
}

/// A step after RegisterImage failed with `e`: nothing half-made is left unreported.
/// An AMI the wait ran out on (still `pending`, or available since) is kept and said
/// so, since the same register run again reuses it and finishes it; any other (failed,
/// or without its deprecation or protection) is deregistered again, the snapshot kept.
async fn after_create(
    clients: &Clients,
    image_id: &str,
    snapshot_id: &str,
    spec: &ImageSpec,
    e: AmiError,
    retry: &RetryPolicy,
) -> AmiError {
    // Only the wait leaves an image that may still become (or now is) available.
    let kept = if matches!(e, AmiError::State { .. }) {
        match ec2::image(clients, image_id, retry).await {
            Ok(Some(img)) if img.state != "pending" && img.state != "available" => None,
            Ok(Some(img)) => Some(img.state),
            Ok(None) => Some("not visible yet".to_string()),
            Err(_) => Some("its state unknown".to_string()),
        }
    } else {
        None
    };
    let what = match kept {
        Some(state) => format!(
            "{image_id} is kept ({state}): the same register run again reuses it, or \
             deregister it"
        ),
        None => match ec2::deregister_image(clients, image_id, retry).await {
            Ok(_) => format!("{image_id} was deregistered again (snapshot {snapshot_id} kept)"),
            Err(d) => format!(
                "{image_id} `{}` is still registered (deregistering it failed: {d})",
                spec.name
            ),
        },
    };
    AmiError::Invalid(format!("{e}; {what}"))
}

/// An existing AMI of that name made from that snapshot; an error if the name is taken
/// by another snapshot's image.
async fn reusable(
    clients: &Clients,
    snapshot_id: &str,
    spec: &ImageSpec,
    retry: &RetryPolicy,
) -> Result<Option<Ami>, AmiError> {
    let Some(img) = ec2::image_named(clients, &spec.name, retry).await? else {
        return Ok(None);
    };
    let image_id = img.id.clone();
    match img.source_snapshot() {
        Some(s) if s == snapshot_id => Ok(Some(img)),
        other => Err(AmiError::NameTaken {
            name: spec.name.clone(),
            region: clients.region().to_string(),
            image_id,
            existing: other.unwrap_or_else(|| "an unknown snapshot".into()),
            wanted: snapshot_id.to_string(),
        }),
    }
}

async fn snapshot_size(
    clients: &Clients,
    snapshot_id: &str,
    retry: &RetryPolicy,
) -> Result<i32, AmiError> {
    let snap = ec2::snapshot(clients, snapshot_id, retry)
        .await?
        .ok_or_else(|| {
            AmiError::Invalid(format!(
                "snapshot {snapshot_id} not found in {}",
                clients.region()
            ))
        })?;
    if !snap.completed() {
        return Err(AmiError::Invalid(format!(
            "snapshot {snapshot_id} is {}, not completed",
            snap.state
        )));
    }
    Ok(snap.volume_size.max(1))
}

fn request(
    clients: &Clients,
    snapshot_id: &str,
    spec: &ImageSpec,
    size: i32,
) -> aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder {
    let mut tags = vec![
        Tag::builder()
            .key(tags::OWNERSHIP)
            .value(tags::OWNERSHIP_VALUE)
            .build(),
        Tag::builder()
            .key(tags::SOURCE_SNAPSHOT)
            .value(snapshot_id)
            .build(),
    ];
    tags.extend(
        spec.tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build()),
    );
    let mut req = clients
        .ec2
        .register_image()
        .name(&spec.name)
        .set_description(spec.description.clone())
        .architecture(ArchitectureValues::from(spec.arch.to_string().as_str()))
        .root_device_name(&spec.root_device)
        .virtualization_type("hvm")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(&spec.root_device)
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snapshot_id)
                        .volume_type(VolumeType::from(spec.volume_type.as_str()))
                        .volume_size(size)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .ena_support(spec.ena)
        .boot_mode(BootModeValues::from(
            spec.effective_boot_mode().to_string().as_str(),
        ))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Image)
                .set_tags(Some(tags))
                .build(),
        );
    if spec.sriov {
        req = req.sriov_net_support("simple");
    }
    if spec.tpm {
        req = req.tpm_support(TpmSupportValues::V20);
    }
    if spec.imds == Imds::V2 {
        req = req.imds_support(ImdsSupportValues::V20);
    }
    if let Some(u) = &spec.uefi_data {
        req = req.uefi_data(&u.base64);
    }
    req
}

/// Set the time EC2 marks `image_id` deprecated.
pub async fn deprecate(
    clients: &Clients,
    image_id: &str,
    at: DateTime,
    retry: &RetryPolicy,
) -> Result<(), AwsError> {
    retry
        .send(&clients.call("EnableImageDeprecation").on(image_id), || {
            clients
                .ec2
                .enable_image_deprecation()
                .image_id(image_id)
                .deprecate_at(at)
                .send()
        })
        .await?;
    Ok(())
}

/// How `img` differs from `spec` (empty when it matches), for `validate`. Attributes
/// AWS leaves out of DescribeImages when unset count as unset (no IMDS support = v1
/// allowed, no TPM support = no TPM).
pub fn differences(spec: &ImageSpec, img: &Ami) -> Vec<String> {
    let mut d = Vec::new();
    let mut cmp = |what: &str, have: String, want: String| {
        if have != want {
            d.push(format!("{what} is {have}, expected {want}"));
        }
    };
    let unset = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".into());
    cmp("state", img.state.clone(), "available".into());
    cmp(
        "architecture",
        unset(&img.architecture),
        spec.arch.to_string(),
    );
    cmp(
        "boot mode",
        unset(&img.boot_mode),
        spec.effective_boot_mode().to_string(),
    );
    cmp("ENA support", img.ena.to_string(), spec.ena.to_string());
    cmp(
        "SR-IOV support",
        (img.sriov.as_deref() == Some("simple")).to_string(),
        spec.sriov.to_string(),
    );
    let imds = match img.imds.as_deref() {
        Some("v2.0") => Imds::V2,
        _ => Imds::Optional,
    };
    cmp("IMDS support", imds.to_string(), spec.imds.to_string());
    cmp(
        "TPM support",
        (img.tpm.as_deref() == Some("v2.0")).to_string(),
        spec.tpm.to_string(),
    );
    cmp(
        "root device",
        unset(&img.root_device),
        spec.root_device.clone(),
    );
    if let Some(want) = &spec.description {
        cmp(
            "description",
            format!("`{}`", img.description.as_deref().unwrap_or_default()),
            format!("`{want}`"),
        );
    }
    match img.root_mapping().filter(|m| m.ebs) {
        None => d.push("no EBS root volume mapping".into()),
        Some(ebs) => {
            cmp(
                "root volume type",
                unset(&ebs.volume_type),
                spec.volume_type.clone(),
            );
            if let Some(want) = spec.volume_size_gib {
                cmp(
                    "root volume size",
                    format!("{} GiB", ebs.volume_size.unwrap_or(0)),
                    format!("{want} GiB"),
                );
            }
        }
    }
    if let Some(p) = spec.protect
        && p.missing_on(img, crate::state::now_epoch())
    {
        d.push(format!(
            "deregistration protection is {}, expected {p}",
            img.protection.as_deref().unwrap_or("disabled")
        ));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_architecture() {
        let x = ImageSpec::new("MyOS 15.0 amd64", Arch::X86_64);
        assert_eq!(x.effective_boot_mode(), BootMode::LegacyBios);
        assert_eq!(x.imds, Imds::V2);
        assert_eq!(x.volume_type, "gp3");
        assert_eq!(x.root_device, "/dev/sda1");
        let a = ImageSpec::new("MyOS 15.0 arm64", Arch::Arm64);
        assert_eq!(a.effective_boot_mode(), BootMode::Uefi);
        assert!(x.validate().is_ok() && a.validate().is_ok());
    }

    use aws_sdk_ec2::types::Image;

    #[test]
    fn differences_name_each_attribute() {
        let mut spec = ImageSpec::new("MyOS x", Arch::Arm64);
        spec.ena = true;
        spec.description = Some("d".into());
        let good = Image::builder()
            .state(aws_sdk_ec2::types::ImageState::Available)
            .architecture(ArchitectureValues::Arm64)
            .boot_mode(BootModeValues::Uefi)
            .ena_support(true)
            .imds_support(ImdsSupportValues::V20)
            .root_device_name("/dev/sda1")
            .description("d")
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/sda1")
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_type(VolumeType::Gp3)
                            .build(),
                    )
                    .build(),
            );
        let good = Ami::from_sdk("us-east-1", &good.image_id("ami-1").build()).unwrap();
        assert_eq!(differences(&spec, &good), Vec::<String>::new());
        let bad = Image::builder()
            .image_id("ami-2")
            .state(aws_sdk_ec2::types::ImageState::Available)
            .architecture(ArchitectureValues::X8664)
            .root_device_name("/dev/xvda")
            .build();
        let bad = Ami::from_sdk("us-east-1", &bad).unwrap();
        let d = differences(&spec, &bad).join("; ");
        for needle in [
            "architecture is x86_64, expected arm64",
            "boot mode is unset, expected uefi",
            "ENA support is false, expected true",
            "IMDS support is optional, expected v2.0",
            "root device is /dev/xvda",
            "description is ``, expected `d`",
            "no EBS root volume mapping",
        ] {
            assert!(d.contains(needle), "`{needle}` not in: {d}");
        }
    }

    #[test]
    fn impossible_specs_are_refused() {
        let mut s = ImageSpec::new("ok name", Arch::Arm64);
        s.boot_mode = Some(BootMode::LegacyBios);
        assert!(s.validate().is_err());
        let mut s = ImageSpec::new("ok name", Arch::X86_64);
        s.tpm = true;
        assert!(s.validate().is_err(), "TPM needs UEFI");
        s.boot_mode = Some(BootMode::UefiPreferred);
        assert!(s.validate().is_ok());
        assert!(ImageSpec::new("ab", Arch::X86_64).validate().is_err());
        assert!(ImageSpec::new("bad*name", Arch::X86_64).validate().is_err());
        let mut s = ImageSpec::new("ok name", Arch::X86_64);
        s.volume_type = "gp9".into();
        assert!(s.validate().is_err());
        let mut s = ImageSpec::new("ok name", Arch::X86_64);
        s.uefi_data = Some(
            UefiData::check(
                &crate::ami::uefi::encode_store(&[0x78, 0x9c, 3, 0, 0, 0, 0, 1]),
                "t",
            )
            .unwrap(),
        );
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("UEFI data needs a UEFI boot mode"), "{e}");
        s.boot_mode = Some(BootMode::Uefi);
        assert!(s.validate().is_ok());
    }
}
