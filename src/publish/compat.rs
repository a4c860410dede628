//! `ec2ami compat bsdec2-image-upload ...`: bsdec2-image-upload's arguments and key
//! file, turned into a one-image [`Release`] published through the same pipeline, so
//! a release build switches tools by changing one variable (or by installing ec2ami
//! under that name: the binary answers to it).
//!
//! The command line itself (bsdec2-image-upload's option grammar) is parsed in the
//! binary; this module holds what the arguments mean.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::announce::Announce;
use super::{Release, ReleaseImage};
use crate::ami::{Arch, BootMode, ImageSpec, Imds, ShareSpec};
use crate::image::Format;
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
    /// `--ssm-name-extra NAME`: a second parameter holding the same AMI id (FreeBSD's
    /// release builds: `.../RELEASE/latest`).
    pub ssm_name_extra: Option<String>,
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
    /// `--vhd`: the image is a VHD (checked against the file's magic).
    pub vhd: bool,
    /// `--vmdk`: the image is a VMDK (checked against the file's magic).
    pub vmdk: bool,
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
    /// TOPICARN RELEASEVERSION IMAGEVERSION: the SNS announcement.
    pub announce: Option<Announce>,
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

/// Why a key file cannot be used. No variant carries the secret or a line's text.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read the key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not text, or too large to be a key file.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One line is wrong.
    #[error("{path} line {line}: {message}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A key is missing.
    #[error(
        "{path}: no {key}= line (a bsdec2-image-upload key file has an ACCESS_KEY_ID=... and an \
         ACCESS_KEY_SECRET=... line)"
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// ACCESS_KEY_ID or ACCESS_KEY_SECRET.
        key: &'static str,
    },
}

/// Largest key file read (bsdec2-image-upload reads lines of at most 1 KiB).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// What every line must be.
const LINE_FORM: &str = "lines must be ACCESS_KEY_ID=... or ACCESS_KEY_SECRET=...";

/// Read a key file as bsdec2-image-upload reads it: exactly two lines,
/// `ACCESS_KEY_ID=VALUE` and `ACCESS_KEY_SECRET=VALUE`, in either order; the value is
/// everything after the first `=`. Like bsdec2-image-upload, a line may end in CRLF
/// (the CR is not part of the value), and blank lines, comments, other keys and a
/// repeated key are refused. Refused too, where bsdec2-image-upload would go on to
/// sign with a value AWS cannot accept: an empty value, white space or control
/// characters in a value, CR-only line endings. (bsdec2-image-upload ignores a last
/// line without a newline; it is read here.) Errors never show a value.
pub fn read_key_file(path: &Path) -> Result<KeyFile, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let file_err = |message: &str| KeyFileError::File {
        path: path.to_owned(),
        message: message.to_string(),
    };
    if meta.is_dir() {
        return Err(file_err("is a directory, not a key file"));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(file_err("is too large to be a key file"));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let text = String::from_utf8(bytes).map_err(|_| file_err("is not text (UTF-8)"))?;
    let (mut id, mut secret) = (None, None);
    for (n, raw) in text.split_inclusive('\n').enumerate() {
        let line_err = |message: String| KeyFileError::Line {
            path: path.to_owned(),
            line: n + 1,
            message,
        };
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains('\r') {
            return Err(line_err(
                "a carriage return inside the line (old Mac line endings?): use LF or CRLF \
                 line endings"
                    .into(),
            ));
        }
        if line.is_empty() {
            return Err(line_err(format!("a blank line ({LINE_FORM})")));
        }
        if line.starts_with('#') {
            return Err(line_err(format!(
                "a comment (bsdec2-image-upload key files have none; {LINE_FORM})"
            )));
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(line_err(format!("no `=` ({LINE_FORM})")));
        };
        let slot = match key {
            "ACCESS_KEY_ID" => &mut id,
            "ACCESS_KEY_SECRET" => &mut secret,
            other if other.trim() != other || other.is_empty() => {
                return Err(line_err(format!(
                    "white space or nothing before `=` ({LINE_FORM})"
                )));
            }
            other => {
                let shown = crate::image::escaped(&other.chars().take(40).collect::<String>());
                return Err(line_err(format!("unknown key `{shown}` ({LINE_FORM})")));
            }
        };
        if slot.is_some() {
            return Err(line_err(format!("{key} is given twice")));
        }
        if value.is_empty() {
            return Err(line_err(format!("{key} is empty")));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(line_err(format!(
                "the value of {key} contains white space or a control character"
            )));
        }
        *slot = Some(value.to_string());
    }
    let missing = |key| KeyFileError::Missing {
        path: path.to_owned(),
        key,
    };
    Ok(KeyFile {
        access_key_id: id.ok_or_else(|| missing("ACCESS_KEY_ID"))?,
        secret: secret.ok_or_else(|| missing("ACCESS_KEY_SECRET"))?,
    })
}

impl Bsdec2Args {
    /// Check what can be checked without AWS: the region, the boot mode, the image
    /// (readable, and of the format `--vhd`/`--vmdk` say), the parameter names.
    pub fn check(&self) -> Result<Format, String> {
        if !super::release::looks_like_region(&self.region) || self.region == "all" {
            return Err(format!("`{}` is not a region name", self.region));
        }
        if self.uefi && self.uefi_preferred {
            return Err("give --uefi or --uefi-preferred, not both".into());
        }
        if self.vhd && self.vmdk {
            return Err("give --vhd or --vmdk, not both".into());
        }
        let (_, format) = crate::image::DiskImage::check(&self.image).map_err(|e| e.to_string())?;
        for (flag, said, wanted) in [
            ("--vhd", self.vhd, Format::Vhd),
            ("--vmdk", self.vmdk, Format::Vmdk),
        ] {
            if said && format != wanted {
                return Err(format!(
                    "{flag} was given but {} is a {format} image (its first bytes are not a \
                     {wanted} header)",
                    self.image.display()
                ));
            }
        }
        if !(self.vhd || self.vmdk) && matches!(format, Format::Vhd | Format::Vmdk) {
            tracing::info!(
                "{} is a {format} image (bsdec2-image-upload would want --{}): converting \
                 it",
                self.image.display(),
                format.to_string().to_lowercase()
            );
        }
        let public = self.public || self.public_amis;
        for s in self.ssm_names() {
            params::check_name(&s, public)?;
        }
        if self.ssm_name.is_some() && self.ssm_name == self.ssm_name_extra {
            return Err("--ssm-name and --ssm-name-extra name the same parameter".into());
        }
        Ok(format)
    }

    /// The parameters to write: `--ssm-name`, then `--ssm-name-extra`.
    pub fn ssm_names(&self) -> Vec<String> {
        self.ssm_name
            .iter()
            .chain(&self.ssm_name_extra)
            .cloned()
            .collect()
    }

    /// The release these arguments describe (after [`Bsdec2Args::check`]).
    pub fn release(&self, date: &str) -> Result<Release, String> {
        self.check()?;
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
            // bsdec2-image-upload always overwrites its parameters.
            ssm_overwrite: true,
            preflight: None,
            images: vec![ReleaseImage {
                path: abs,
                spec,
                ssm: self.ssm_names(),
                vars: Default::default(),
                parent_auto: false,
            }],
            date: date.to_string(),
            announce: self.announce.clone(),
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
        a.ssm_name_extra = Some("/aws/service/freebsd/arm64/base/ufs/14.1/STABLE/latest".into());
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
            [
                a.ssm_name.clone().unwrap(),
                a.ssm_name_extra.clone().unwrap()
            ]
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
        a.ssm_name_extra = Some("/aws/service/x/latest".into());
        assert!(a.release("x").unwrap_err().contains("public AMIs only"));
        let mut a = args(&img);
        a.ssm_name = Some("/x".into());
        a.ssm_name_extra = Some("/x".into());
        assert!(a.release("x").unwrap_err().contains("the same parameter"));
        let mut a = args(&img);
        a.region = "mars".into();
        assert!(a.release("x").is_err());
    }

    #[test]
    fn format_flags_must_match_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        std::fs::write(&raw, vec![1u8; 4096]).unwrap();
        let vmdk = dir.path().join("disk.vmdk");
        // A well-formed VMDK (a damaged one is refused before the flags are looked at).
        let made = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vmdk"])
            .arg(&raw)
            .arg(&vmdk)
            .status()
            .expect("qemu-img runs (apt-get install qemu-utils)");
        assert!(made.success());
        let mut a = args(&raw);
        a.vmdk = true;
        let e = a.check().unwrap_err();
        assert!(
            e.contains("--vmdk was given but") && e.contains("raw image"),
            "{e}"
        );
        let mut a = args(&raw);
        a.vhd = true;
        assert!(a.check().unwrap_err().contains("--vhd was given but"));
        let mut a = args(&vmdk);
        a.vhd = true;
        let e = a.check().unwrap_err();
        assert!(e.contains("is a VMDK image"), "{e}");
        let mut a = args(&raw);
        a.vhd = true;
        a.vmdk = true;
        assert!(a.check().unwrap_err().contains("not both"));
        assert_eq!(args(&raw).check().unwrap(), Format::Raw);
    }

    fn key_file(text: &[u8]) -> (tempfile::TempDir, Result<KeyFile, KeyFileError>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, text).unwrap();
        let r = read_key_file(&p);
        (dir, r)
    }

    #[test]
    fn key_files_are_read_as_bsdec2_image_upload_reads_them() {
        for text in [
            &b"ACCESS_KEY_ID=AKIDEXAMPLE\nACCESS_KEY_SECRET=s3cr3t/value=\n"[..],
            b"ACCESS_KEY_SECRET=s3cr3t/value=\nACCESS_KEY_ID=AKIDEXAMPLE\n",
            // CRLF, as bsdec2-image-upload reads it: the CR is not part of the value.
            b"ACCESS_KEY_ID=AKIDEXAMPLE\r\nACCESS_KEY_SECRET=s3cr3t/value=\r\n",
            // No newline after the last line.
            b"ACCESS_KEY_ID=AKIDEXAMPLE\nACCESS_KEY_SECRET=s3cr3t/value=",
        ] {
            let (_d, k) = key_file(text);
            let k = k.unwrap();
            assert_eq!(k.access_key_id, "AKIDEXAMPLE");
            assert_eq!(k.secret, "s3cr3t/value=");
            assert!(!format!("{k:?}").contains("s3cr3t"));
        }
    }

    #[test]
    fn bad_key_files_are_refused_without_showing_the_secret() {
        for (text, want) in [
            (
                &b"ACCESS_KEY_ID=AKID\nSECRET=s3cr3t\n"[..],
                "line 2: unknown key `SECRET`",
            ),
            (b"ACCESS_KEY_ID=AKID\n", "no ACCESS_KEY_SECRET= line"),
            (b"ACCESS_KEY_SECRET=s3cr3t\n", "no ACCESS_KEY_ID= line"),
            (
                b"ACCESS_KEY_ID=AKID\nACCESS_KEY_SECRET=\n",
                "ACCESS_KEY_SECRET is empty",
            ),
            (
                b"ACCESS_KEY_ID=AKID\nACCESS_KEY_SECRET=s3cr3t\nACCESS_KEY_SECRET=s3cr3t\n",
                "line 3: ACCESS_KEY_SECRET is given twice",
            ),
            (
                b"# keys\nACCESS_KEY_ID=AKID\nACCESS_KEY_SECRET=s3cr3t\n",
                "line 1: a comment",
            ),
            (
                b"ACCESS_KEY_ID=AKID\n\nACCESS_KEY_SECRET=s3cr3t\n",
                "line 2: a blank line",
            ),
            (b"ACCESS_KEY_ID=AKID\ns3cr3t\n", "line 2: no `=`"),
            (
                b"ACCESS_KEY_ID=AKID\rACCESS_KEY_SECRET=s3cr3t\r",
                "carriage return",
            ),
            (
                b"ACCESS_KEY_ID=AKID\nACCESS_KEY_SECRET=s3cr3t \n",
                "white space",
            ),
            (
                b"ACCESS_KEY_ID = AKID\nACCESS_KEY_SECRET=s3cr3t\n",
                "white space",
            ),
            (
                b"ACCESS_KEY_ID=AKID\nACCESS_KEY_SECRET=s3\xffcr3t\n",
                "not text",
            ),
        ] {
            let (_d, r) = key_file(text);
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "wanted `{want}` in: {e}");
            assert!(!e.contains("s3cr3t"), "secret shown: {e}");
        }
        let e = read_key_file(Path::new("/nonexistent/keys")).unwrap_err();
        assert!(e.to_string().contains("cannot read the key file"), "{e}");
    }
}
