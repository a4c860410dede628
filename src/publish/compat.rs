//! `ec2ami compat bsdec2-image-upload ...`: bsdec2-image-upload's command line and key
//! file, turned into a one-image [`Release`] published through the same pipeline, so
//! a release build switches tools by changing one variable.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Release, ReleaseImage};
use crate::ami::{Arch, BootMode, ImageSpec, Imds, ShareSpec};
use crate::params;

/// bsdec2-image-upload's flags and arguments.
#[derive(Debug, Clone, Default)]
pub struct Bsdec2Args {
    /// `--public`: `--publicamis --allregions`.
    pub public: bool,
    /// `--publicamis`: launchable by everyone.
    pub public_amis: bool,
    /// `--allregions`: copy to every region.
    pub all_regions: bool,
    /// `--publicsnap`: the snapshots public too.
    pub public_snap: bool,
    /// `--ssm-name NAME`: a parameter of that name in every region.
    pub ssm_name: Option<String>,
    /// `--sriov`.
    pub sriov: bool,
    /// `--ena`.
    pub ena: bool,
    /// `--arm64`.
    pub arm64: bool,
    /// `--uefi`.
    pub uefi: bool,
    /// `--uefi-preferred`.
    pub uefi_preferred: bool,
    /// `--vhd`: the image is a VHD (ec2ami detects formats; this is checked).
    pub vhd: bool,
    /// IMDS support (ec2ami's own option; bsdec2-image-upload has none).
    pub imds: Imds,
    /// IMAGE.
    pub image: PathBuf,
    /// NAME.
    pub name: String,
    /// DESCRIPTION.
    pub description: String,
    /// REGION: where the image is uploaded and registered.
    pub region: String,
    /// BUCKET: unused (the EBS direct APIs need no S3 bucket).
    pub bucket: String,
    /// KEYFILE.
    pub keyfile: PathBuf,
    /// TOPICARN RELEASEVERSION IMAGEVERSION (an SNS announcement ec2ami does not send).
    pub announce: Vec<String>,
}

/// The AWS keys of a bsdec2-image-upload key file.
pub struct KeyFile {
    /// ACCESS_KEY_ID.
    pub access_key_id: String,
    /// ACCESS_KEY_SECRET (never printed).
    pub secret: String,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("access_key_id", &self.access_key_id)
            .field("secret", &"** redacted **")
            .finish()
    }
}

/// Read a key file: `ACCESS_KEY_ID=...` and `ACCESS_KEY_SECRET=...` lines (blank lines
/// and `#` comments allowed). Errors never show the secret.
pub fn read_key_file(path: &Path) -> Result<KeyFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let (mut id, mut secret) = (None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some(("ACCESS_KEY_ID", v)) => id = Some(v.trim().to_string()),
            Some(("ACCESS_KEY_SECRET", v)) => secret = Some(v.trim().to_string()),
            Some((k, _)) => {
                return Err(format!(
                    "{} line {}: unknown key `{k}` (expected ACCESS_KEY_ID and ACCESS_KEY_SECRET)",
                    path.display(),
                    n + 1
                ));
            }
            None => {
                return Err(format!("{} line {}: not KEY=VALUE", path.display(), n + 1));
            }
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret)) if !access_key_id.is_empty() && !secret.is_empty() => {
            Ok(KeyFile {
                access_key_id,
                secret,
            })
        }
        _ => Err(format!(
            "{}: needs both ACCESS_KEY_ID=... and ACCESS_KEY_SECRET=... lines",
            path.display()
        )),
    }
}

impl Bsdec2Args {
    /// The release these arguments describe.
    pub fn release(&self, date: &str) -> Result<Release, String> {
        if !super::release::looks_like_region(&self.region) || self.region == "all" {
            return Err(format!("`{}` is not a region name", self.region));
        }
        if self.uefi && self.uefi_preferred {
            return Err("give --uefi or --uefi-preferred, not both".into());
        }
        let public = self.public || self.public_amis;
        let arch = if self.arm64 {
            Arch::Arm64
        } else {
            Arch::X86_64
        };
        let mut spec = ImageSpec::new(self.name.clone(), arch);
        spec.description = Some(self.description.clone());
        spec.boot_mode = if self.uefi {
            Some(BootMode::Uefi)
        } else if self.uefi_preferred {
            Some(BootMode::UefiPreferred)
        } else {
            None
        };
        spec.ena = self.ena;
        spec.sriov = self.sriov;
        spec.imds = self.imds;
        spec.validate().map_err(|e| e.to_string())?;
        let (_, format) = crate::image::DiskImage::check(&self.image).map_err(|e| e.to_string())?;
        if self.vhd && format != crate::image::Format::Vhd {
            return Err(format!(
                "--vhd was given but {} is a {format} image",
                self.image.display()
            ));
        }
        let ssm: Vec<String> = self.ssm_name.iter().cloned().collect();
        for s in &ssm {
            params::check_name(s, public)?;
        }
        let abs = std::path::absolute(&self.image).unwrap_or_else(|_| self.image.clone());
        let mut h = Sha256::new();
        for part in [
            "bsdec2-image-upload",
            &abs.to_string_lossy(),
            &self.name,
            &self.description,
            &self.region,
            &format!("{self:?}"),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        let key = h
            .finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Release {
            path: abs.clone(),
            key,
            regions: if self.public || self.all_regions {
                vec!["all".into()]
            } else {
                vec![self.region.clone()]
            },
            source_region: Some(self.region.clone()),
            best_effort: Vec::new(),
            share: ShareSpec {
                public,
                ..ShareSpec::default()
            },
            public_snapshots: self.public_snap,
            // bsdec2-image-upload always overwrites its parameter.
            ssm_overwrite: true,
            preflight: None,
            images: vec![ReleaseImage {
                path: abs,
                spec,
                ssm,
                vars: Default::default(),
            }],
            date: date.to_string(),
            copy_completion: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(image: &Path) -> Bsdec2Args {
        Bsdec2Args {
            image: image.to_owned(),
            name: "FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS".into(),
            description: "FreeBSD/amd64 stable/14@abc".into(),
            region: "us-east-1".into(),
            bucket: "unused".into(),
            keyfile: "keys".into(),
            imds: Imds::V2,
            ..Bsdec2Args::default()
        }
    }

    #[test]
    fn flags_map_to_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        std::fs::write(&img, vec![1u8; 4096]).unwrap();
        let mut a = args(&img);
        a.public = true;
        a.arm64 = true;
        a.ena = true;
        a.uefi_preferred = true;
        a.ssm_name = Some("/aws/service/freebsd/arm64/base/ufs/14.1/STABLE".into());
        let r = a.release("20241003").unwrap();
        assert_eq!(r.regions, ["all"]);
        assert!(r.public());
        assert!(r.ssm_overwrite);
        let spec = &r.images[0].spec;
        assert_eq!(spec.arch, Arch::Arm64);
        assert_eq!(spec.effective_boot_mode(), BootMode::UefiPreferred);
        assert!(spec.ena);
        assert_eq!(
            r.images[0].params_in("eu-west-1"),
            [a.ssm_name.clone().unwrap()]
        );

        // Defaults: one region, private, legacy-bios on amd64, uefi on arm64.
        let r = args(&img).release("20241003").unwrap();
        assert_eq!(r.regions, ["us-east-1"]);
        assert!(!r.public());
        assert_eq!(r.images[0].spec.effective_boot_mode(), BootMode::LegacyBios);

        let mut a = args(&img);
        a.ssm_name = Some("/aws/service/x".into());
        assert!(a.release("x").unwrap_err().contains("public AMIs only"));
        let mut a = args(&img);
        a.vhd = true;
        assert!(a.release("x").unwrap_err().contains("--vhd"));
        let mut a = args(&img);
        a.region = "mars".into();
        assert!(a.release("x").is_err());
    }

    #[test]
    fn key_files_are_read_and_secrets_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(
            &p,
            "# keys\nACCESS_KEY_ID=AKIDEXAMPLE\nACCESS_KEY_SECRET=s3cr3t/value=\n",
        )
        .unwrap();
        let k = read_key_file(&p).unwrap();
        assert_eq!(k.access_key_id, "AKIDEXAMPLE");
        assert_eq!(k.secret, "s3cr3t/value=");
        assert!(!format!("{k:?}").contains("s3cr3t"));
        std::fs::write(&p, "ACCESS_KEY_ID=AKIDEXAMPLE\nSECRET=s3cr3t\n").unwrap();
        let e = read_key_file(&p).unwrap_err();
        assert!(
            e.contains("unknown key `SECRET`") && !e.contains("s3cr3t"),
            "{e}"
        );
        std::fs::write(&p, "ACCESS_KEY_ID=AKIDEXAMPLE\n").unwrap();
        assert!(read_key_file(&p).unwrap_err().contains("both"));
    }
}
