//! The release file: a TOML description of a whole matrix of images, turned into a
//! typed [`Release`] (what every AMI, copy, permission and parameter should be) with
//! every template rendered and every check done before anything is created.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aws_smithy_types::DateTime;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ami::{Arch, BootMode, Completion, ImageSpec, Imds, Protect, ShareSpec, UefiData};
use crate::aws::tags::{BUILD_DATE, TAGGED_VARS, VAR_PREFIX};
use crate::params;
use crate::params::template::{self, Vars};
use crate::units::{parse_date, parse_duration};

/// Keys of `[defaults]` / `[[image]]` that configure the AMI (all are also template
/// variables when they are plain values).
const IMAGE_KEYS: &[&str] = &[
    "path",
    "arch",
    "name",
    "description",
    "boot_mode",
    "ena",
    "sriov",
    "tpm",
    "imds",
    "root_device",
    "volume_type",
    "volume_size",
    "deprecate_at",
    "deprecate_in",
    "tags",
    "ssm",
    "protect",
    "uefi_data",
];

/// A release file that cannot be used; nothing has been created.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Unreadable file.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML or not the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// Something about one image.
    #[error("{path}: image {index} ({what}): {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// 1-based position among the `[[image]]` entries.
        index: usize,
        /// Its name when known, else its path.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// Something about the release as a whole.
    #[error("{path}: {message}")]
    Release {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `regions = "all"` or a list.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum RawRegions {
    One(String),
    Many(Vec<String>),
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    regions: RawRegions,
    #[serde(default)]
    source_region: Option<String>,
    #[serde(default)]
    best_effort: Vec<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    public_snapshots: bool,
    #[serde(default)]
    share_accounts: Vec<String>,
    #[serde(default)]
    share_orgs: Vec<String>,
    #[serde(default)]
    share_ous: Vec<String>,
    #[serde(default)]
    ssm: Vec<String>,
    #[serde(default)]
    ssm_overwrite: bool,
    #[serde(default)]
    preflight: Option<bool>,
    #[serde(default)]
    allow_paths_outside: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    copy_completion: Option<String>,
    /// `"auto"`: upload each image against the newest snapshot of its series.
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    defaults: toml::Table,
    #[serde(default, rename = "image")]
    images: Vec<toml::Table>,
    #[serde(default)]
    announce: Option<RawAnnounce>,
}

/// `announce = { topic = "arn:aws:sns:...", release = "...", image = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnnounce {
    topic: String,
    release: String,
    image: String,
}

/// A parsed release file, before its templates are rendered.
#[derive(Debug, Clone)]
pub struct ReleaseFile {
    path: PathBuf,
    raw: RawRelease,
    image_options: crate::image::ImageOptions,
    /// Identity of this file and content, for the journal.
    pub key: String,
}

/// One image of a release: what to upload and what its AMI should be.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseImage {
    /// The disk image.
    pub path: PathBuf,
    /// The AMI (name, attributes, tags).
    #[serde(skip)]
    pub spec: ImageSpec,
    /// SSM parameter names; a `{region}` in them is rendered per region.
    pub ssm: Vec<String>,
    /// The template variables, for the record.
    pub vars: Vars,
    /// `parent = "auto"`: upload against the newest completed snapshot of the series.
    pub parent_auto: bool,
}

impl ReleaseImage {
    /// The AMI name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The parameter names in `region`.
    pub fn params_in(&self, region: &str) -> Vec<String> {
        let mut vars = self.vars.clone();
        vars.insert("region".into(), region.into());
        self.ssm
            .iter()
            .map(|t| template::render(t, &vars).expect("checked when the release was read"))
            .collect()
    }
}

/// A release with every template rendered and checked: what should exist.
#[derive(Debug, Clone)]
pub struct Release {
    /// The release file.
    pub path: PathBuf,
    /// Identity for the journal.
    pub key: String,
    /// Regions as written (`all` or names); resolved against DescribeRegions later.
    pub regions: Vec<String>,
    /// Where images are uploaded and registered (default: the first region, or the
    /// command's region when `all`).
    pub source_region: Option<String>,
    /// Regions whose failure is only a warning.
    pub best_effort: Vec<String>,
    /// Who may launch the AMIs (public and/or accounts, organizations, OUs).
    pub share: ShareSpec,
    /// Make the snapshots behind the AMIs public too.
    pub public_snapshots: bool,
    /// Overwrite SSM parameters holding another AMI.
    pub ssm_overwrite: bool,
    /// Boot every image locally before its upload (`preflight`; `None`: not said, the
    /// command decides).
    pub preflight: Option<bool>,
    /// The images, in file order.
    pub images: Vec<ReleaseImage>,
    /// The build date used (YYYYMMDD).
    pub date: String,
    /// The SNS announcement of the whole release, sent once it is published.
    pub announce: Option<super::announce::Announce>,
    /// Copies are time-based (`copy_completion`).
    pub copy_completion: Option<Completion>,
}

impl Release {
    /// True when the AMIs are to be public.
    pub fn public(&self) -> bool {
        self.share.public
    }
}

impl ReleaseFile {
    /// Read and parse `path` (its shape only; see [`ReleaseFile::resolve`]).
    pub fn read(path: &Path) -> Result<ReleaseFile, ReleaseError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReleaseError::Read {
            path: path.to_owned(),
            source,
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Self::parse(&abs, &text)
    }

    /// Parse `text`, the content of the file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ReleaseFile, ReleaseError> {
        let raw: RawRelease = toml::from_str(text).map_err(|e| ReleaseError::Parse {
            path: path.to_owned(),
            message: crate::validate_input::toml_error(text, &e),
        })?;
        let mut h = Sha256::new();
        h.update(path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        let key = h
            .finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(ReleaseFile {
            path: path.to_owned(),
            raw,
            image_options: Default::default(),
            key,
        })
    }

    /// Check the images with `opts` (e.g. backing files allowed) rather than the
    /// strict default.
    pub fn with_image_options(mut self, opts: crate::image::ImageOptions) -> ReleaseFile {
        self.image_options = opts;
        self
    }

    /// The date the file sets in `[defaults]` (then no default date is needed).
    fn fixed_date(&self) -> Option<String> {
        self.raw.defaults.get("date").and_then(scalar)
    }

    /// Render and check everything, with `date` as the default `{date}` (a resumed
    /// publish passes the date of its first run). Checks the files only when
    /// `check_files` (validate needs the names, not the images).
    pub fn resolve(&self, date: &str, check_files: bool) -> Result<Release, ReleaseError> {
        let r = &self.raw;
        let rel_err = |message: String| ReleaseError::Release {
            path: self.path.clone(),
            message,
        };
        let regions = match &r.regions {
            RawRegions::One(s) if s == "all" => vec!["all".to_string()],
            RawRegions::One(s) => vec![s.clone()],
            RawRegions::Many(v) if v.is_empty() => {
                return Err(rel_err("`regions` is empty".into()));
            }
            RawRegions::Many(v) => v.clone(),
        };
        if let Some(bad) = regions
            .iter()
            .chain(&r.best_effort)
            .chain(&r.source_region)
            .find(|x| !looks_like_region(x))
        {
            return Err(rel_err(format!(
                "`{}` is not a region name",
                crate::image::escaped(bad)
            )));
        }
        let share = ShareSpec {
            public: r.public,
            accounts: r.share_accounts.clone(),
            orgs: r.share_orgs.clone(),
            ous: r.share_ous.clone(),
            revoke: false,
        };
        if share.public || !share.permissions().is_empty() {
            share
                .validate()
                .map_err(|e| rel_err(format!("sharing: {e}")))?;
        }
        if r.images.is_empty() {
            return Err(rel_err("no [[image]] entries".into()));
        }
        let announce = match &r.announce {
            Some(a) => Some(
                super::announce::Announce::new(&a.topic, &a.release, &a.image)
                    .map_err(|e| rel_err(format!("announce: {e}")))?,
            ),
            None => None,
        };
        let copy_completion = r
            .copy_completion
            .as_deref()
            .map(Completion::parse)
            .transpose()
            .map_err(|e| rel_err(format!("`copy_completion`: {e}")))?;
        let base_dir = self.path.parent().unwrap_or(Path::new("."));
        let date = self.fixed_date().unwrap_or_else(|| date.to_string());
        let mut images = Vec::new();
        for (i, table) in r.images.iter().enumerate() {
            let mut merged = r.defaults.clone();
            // An image's own deprecation replaces the default one, whichever key each uses.
            if table.contains_key("deprecate_at") || table.contains_key("deprecate_in") {
                merged.remove("deprecate_at");
                merged.remove("deprecate_in");
            }
            for (k, v) in table {
                merged.insert(k.clone(), v.clone());
            }
            let what = merged
                .get("name")
                .or_else(|| merged.get("path"))
                .and_then(scalar)
                .unwrap_or_else(|| "unnamed".into());
            let img_err = |message: String| ReleaseError::Image {
                path: self.path.clone(),
                index: i + 1,
                what: what.clone(),
                message,
            };
            let image = self
                .image(&merged, &date, base_dir, check_files)
                .map_err(img_err)?;
            images.push(image);
        }
        let release = Release {
            path: self.path.clone(),
            key: self.key.clone(),
            regions,
            source_region: r.source_region.clone(),
            best_effort: r.best_effort.clone(),
            share,
            public_snapshots: r.public_snapshots,
            ssm_overwrite: r.ssm_overwrite,
            preflight: r.preflight,
            images,
            date,
            announce,
            copy_completion,
        };
        check_unique(&release).map_err(rel_err)?;
        Ok(release)
    }

    fn image(
        &self,
        t: &toml::Table,
        date: &str,
        base_dir: &Path,
        check_files: bool,
    ) -> Result<ReleaseImage, String> {
        // Every plain value is a variable; name and description are templates.
        let mut vars: Vars = t
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "name" | "description"))
            .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
            .collect();
        vars.entry("date".into())
            .or_insert_with(|| date.to_string());
        if let Some(fs) = vars.get("fs").cloned() {
            vars.entry("fs_upper".into())
                .or_insert_with(|| fs.to_uppercase());
        }
        for k in t.keys() {
            if !IMAGE_KEYS.contains(&k.as_str()) && scalar(&t[k]).is_none() {
                return Err(format!(
                    "`{k}` is a {}: only the known keys ({}) may be tables or arrays",
                    t[k].type_str(),
                    IMAGE_KEYS.join(", ")
                ));
            }
        }
        let render = |key: &str, tmpl: &str, vars: &Vars| {
            template::render(tmpl, vars).map_err(|e| format!("{key}: {e}"))
        };
        let string = |key: &str| -> Result<Option<String>, String> {
            match t.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(format!("`{key}` must be a string, not a {}", v.type_str())),
            }
        };
        let flag = |key: &str| -> Result<bool, String> {
            match t.get(key) {
                None => Ok(false),
                Some(toml::Value::Boolean(b)) => Ok(*b),
                Some(v) => Err(format!(
                    "`{key}` must be true or false, not a {}",
                    v.type_str()
                )),
            }
        };
        let name_t = string("name")?.ok_or("no `name` (in [defaults] or the image)")?;
        let name = render("name", &name_t, &vars)?;
        vars.insert("name".into(), name.clone());
        let description = match string("description")? {
            Some(d) => Some(render("description", &d, &vars)?),
            None => None,
        };
        if let Some(d) = &description {
            vars.insert("description".into(), d.clone());
        }
        let path_t = string("path")?.ok_or("no `path`")?;
        let path = base_dir.join(render("path", &path_t, &vars)?);
        let path = if check_files {
            let real = image_path(base_dir, &path, self.raw.allow_paths_outside)?;
            crate::image::DiskImage::check_with(&real, self.image_options)
                .map_err(|e| e.to_string())?;
            real
        } else {
            path
        };
        let arch_s = string("arch")?.ok_or("no `arch` (x86_64 or arm64)")?;
        let arch = match arch_s.as_str() {
            "amd64" => Arch::X86_64,
            "aarch64" => Arch::Arm64,
            s => s.parse::<Arch>()?,
        };
        let mut spec = ImageSpec::new(name.clone(), arch);
        spec.description = description;
        spec.boot_mode = string("boot_mode")?
            .map(|s| s.parse::<BootMode>())
            .transpose()?;
        spec.ena = flag("ena")?;
        spec.sriov = flag("sriov")?;
        spec.tpm = flag("tpm")?;
        if let Some(s) = string("imds")? {
            spec.imds = s.parse::<Imds>()?;
        }
        if let Some(s) = string("root_device")? {
            spec.root_device = s;
        }
        if let Some(s) = string("volume_type")? {
            spec.volume_type = s;
        }
        spec.volume_size_gib = match t.get("volume_size") {
            None => None,
            Some(toml::Value::Integer(n)) => {
                Some(i32::try_from(*n).map_err(|_| format!("volume_size {n} is out of range"))?)
            }
            Some(v) => {
                return Err(format!(
                    "`volume_size` must be a number of GiB, not a {}",
                    v.type_str()
                ));
            }
        };
        spec.deprecate_at = deprecation(t)?;
        spec.protect = match t.get("protect") {
            None | Some(toml::Value::Boolean(false)) => None,
            Some(toml::Value::Boolean(true)) => Some(Protect { cooldown: false }),
            Some(toml::Value::String(s)) if s == "cooldown" => Some(Protect { cooldown: true }),
            Some(v) => {
                return Err(format!(
                    "`protect` must be true, false or \"cooldown\", not {v:?}"
                ));
            }
        };
        if let Some(u) = string("uefi_data")? {
            let file = base_dir.join(render("uefi_data", &u, &vars)?);
            spec.uefi_data = Some(UefiData::read(&file)?);
        }
        if let Some(at) = spec.deprecate_at {
            crate::validate_input::deprecation_time(
                at,
                crate::validate_input::now(),
                self.raw.public,
            )?;
        }
        // Tags: the release's, the build variables, then the image's own.
        for k in self.raw.tags.keys() {
            crate::validate_input::user_tag_key(k)?;
        }
        let mut tags: BTreeMap<String, String> = self
            .raw
            .tags
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(&format!("tags.{k}"), v, &vars)?)))
            .collect::<Result<_, String>>()?;
        for v in TAGGED_VARS {
            if let Some(value) = vars.get(*v) {
                tags.insert(format!("{}{v}", VAR_PREFIX), value.clone());
            }
        }
        tags.insert(BUILD_DATE.into(), vars["date"].clone());
        match t.get("tags") {
            None => {}
            Some(toml::Value::Table(own)) => {
                for (k, v) in own {
                    crate::validate_input::user_tag_key(k)?;
                    let v = v
                        .as_str()
                        .ok_or_else(|| format!("tag `{k}` must be a string"))?;
                    tags.insert(k.clone(), render(&format!("tags.{k}"), v, &vars)?);
                }
            }
            Some(v) => return Err(format!("`tags` must be a table, not a {}", v.type_str())),
        }
        spec.tags = tags.into_iter().collect();
        spec.validate().map_err(|e| e.to_string())?;
        let ssm = match t.get("ssm") {
            None => self.raw.ssm.clone(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or("`ssm` entries must be strings")
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(format!(
                    "`ssm` must be a list of names, not a {}",
                    v.type_str()
                ));
            }
        };
        // Check every parameter name now, with a stand-in region.
        let mut with_region = vars.clone();
        with_region.insert("region".into(), "us-east-1".into());
        for s in &ssm {
            let n = render("ssm", s, &with_region)?;
            params::check_name(&n, self.raw.public)?;
        }
        let parent = match t.get("parent") {
            None => self.raw.parent.clone(),
            Some(toml::Value::String(p)) => Some(p.clone()),
            Some(v) => return Err(format!("`parent` must be \"auto\", not a {}", v.type_str())),
        };
        let parent_auto = match parent.as_deref() {
            None | Some("none") => false,
            Some("auto") => true,
            Some(p) => {
                return Err(format!(
                    "`parent = \"{}\"`: only \"auto\" (the newest snapshot of the series) or \"none\"",
                    crate::image::escaped(p)
                ));
            }
        };
        Ok(ReleaseImage {
            path,
            spec,
            ssm,
            vars,
            parent_auto,
        })
    }
}

/// The image file `path` resolved (symbolic links and `..` followed): a regular file
/// within `base_dir`'s tree unless the release file allows paths outside it.
fn image_path(base_dir: &Path, path: &Path, allow_outside: bool) -> Result<PathBuf, String> {
    let shown = crate::image::escaped(&path.to_string_lossy());
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot open {shown}: {e}"))?;
    let real_shown = crate::image::escaped(&real.to_string_lossy());
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot open {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{shown} is not a regular file (a release publishes image files only)"
        ));
    }
    if !allow_outside {
        let base = std::fs::canonicalize(base_dir).unwrap_or_else(|_| base_dir.to_owned());
        if !real.starts_with(&base) {
            return Err(format!(
                "{shown} resolves to {real_shown}, outside the release file's directory {}; \
                 set allow_paths_outside = true in the release file to publish it",
                crate::image::escaped(&base.to_string_lossy())
            ));
        }
    }
    Ok(real)
}

/// A TOML value as a template variable, if it is a plain value.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

fn deprecation(t: &toml::Table) -> Result<Option<DateTime>, String> {
    match (t.get("deprecate_at"), t.get("deprecate_in")) {
        (Some(_), Some(_)) => Err("give deprecate_at or deprecate_in, not both".into()),
        (Some(v), None) => {
            let s = scalar(v).ok_or("`deprecate_at` must be a date")?;
            parse_date(&s).map(Some)
        }
        (None, Some(v)) => {
            let s = v
                .as_str()
                .ok_or("`deprecate_in` must be a duration such as \"730d\"")?;
            let d = parse_duration(s)?;
            Ok(Some(DateTime::from(std::time::SystemTime::now() + d)))
        }
        (None, None) => Ok(None),
    }
}

/// A plausible AWS region name (`us-east-1`, `ap-southeast-7`, `us-gov-west-1`), or `all`.
pub fn looks_like_region(s: &str) -> bool {
    s == "all" || crate::validate_input::is_region(s)
}

/// Two images may not share a name, and no parameter may be written by two images.
fn check_unique(r: &Release) -> Result<(), String> {
    let mut names = BTreeSet::new();
    for img in &r.images {
        if !names.insert(img.name()) {
            return Err(format!(
                "two images would both be named `{}`: add a variable that tells them apart \
                 (e.g. {{flavour}} or {{fs}}) to the name",
                img.name()
            ));
        }
    }
    let mut params: BTreeMap<String, &str> = BTreeMap::new();
    for img in &r.images {
        for p in img.params_in("us-east-1") {
            if let Some(other) = params.insert(p.clone(), img.name()) {
                return Err(format!(
                    "images `{other}` and `{}` would both write the parameter `{p}`",
                    img.name()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
regions = ["us-east-1", "us-west-2", "eu-west-1"]   # or "all"
public = true
ssm = ["/myos/{arch}/{flavour}/{fs}/{version}/{branch}"]

[defaults]
version = "15.0"
branch = "CURRENT"
git = "4f1e2d3"
description = "MyOS/{arch} {branch}@{git}"
name = "MyOS {version}-{branch}-{arch}-{date} {flavour} {fs_upper}"
boot_mode = "uefi-preferred"
ena = true

[[image]]
path = "base-ufs-amd64.raw"
arch = "x86_64"
flavour = "base"
fs = "ufs"

[[image]]
path = "small-zfs-arm64.raw"
arch = "arm64"
flavour = "small"
fs = "zfs"
"#;

    fn parse(text: &str) -> Result<Release, ReleaseError> {
        ReleaseFile::parse(Path::new("/rel/release.toml"), text)?.resolve("20261124", false)
    }

    #[test]
    fn the_example_release_resolves() {
        let r = parse(EXAMPLE).unwrap();
        assert_eq!(r.regions, ["us-east-1", "us-west-2", "eu-west-1"]);
        assert!(r.public());
        assert_eq!(r.images.len(), 2);
        let a = &r.images[0];
        assert_eq!(a.name(), "MyOS 15.0-CURRENT-x86_64-20261124 base UFS");
        assert_eq!(
            a.spec.description.as_deref(),
            Some("MyOS/x86_64 CURRENT@4f1e2d3")
        );
        assert_eq!(a.path, Path::new("/rel/base-ufs-amd64.raw"));
        assert_eq!(a.spec.boot_mode, Some(BootMode::UefiPreferred));
        assert!(a.spec.ena);
        assert_eq!(
            a.params_in("eu-west-1"),
            ["/myos/x86_64/base/ufs/15.0/CURRENT"]
        );
        let b = &r.images[1];
        assert_eq!(b.name(), "MyOS 15.0-CURRENT-arm64-20261124 small ZFS");
        assert_eq!(b.spec.arch, Arch::Arm64);
        let tag = |k: &str| {
            b.spec
                .tags
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(tag("ec2ami:flavour"), Some("small"));
        assert_eq!(tag("ec2ami:version"), Some("15.0"));
        assert_eq!(tag(BUILD_DATE), Some("20261124"));
    }

    #[test]
    fn the_key_follows_the_content() {
        let a = ReleaseFile::parse(Path::new("/r.toml"), EXAMPLE).unwrap();
        let b = ReleaseFile::parse(Path::new("/r.toml"), EXAMPLE).unwrap();
        let c = ReleaseFile::parse(Path::new("/r.toml"), &EXAMPLE.replace("15.0", "15.1")).unwrap();
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn bad_releases_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            (
                &EXAMPLE.replace("{flavour} {fs_upper}", "{flavor} {fs_upper}"),
                "unknown variable `{flavor}`",
            ),
            (
                &EXAMPLE
                    .replace("arch = \"arm64\"", "arch = \"x86_64\"")
                    .replace("flavour = \"small\"", "flavour = \"base\"")
                    .replace("fs = \"zfs\"", "fs = \"ufs\""),
                "both be named",
            ),
            (
                &EXAMPLE
                    .replace("public = true", "public = false")
                    .replace("/myos/", "/aws/service/myos/"),
                "public AMIs only",
            ),
            (
                &EXAMPLE.replace("\"eu-west-1\"", "\"mars\""),
                "not a region",
            ),
            (
                &EXAMPLE.replace("arch = \"arm64\"", "arch = \"sparc64\""),
                "unknown architecture",
            ),
            (
                &EXAMPLE.replace("ena = true", "ena = \"yes\""),
                "true or false",
            ),
            (
                &EXAMPLE.replace("public = true", "publik = true"),
                "unknown field `publik`",
            ),
            (
                &EXAMPLE.replace("path = \"base-ufs-amd64.raw\"", "path = 1"),
                "must be a string",
            ),
            (
                &EXAMPLE.replace("[defaults]", "[defaults]\ndeprecate_at = \"2020-01-01\""),
                "in the past",
            ),
            (
                &EXAMPLE.replace("[defaults]", "[defaults]\ndeprecate_in = \"1100d\""),
                "2 years ahead for a public AMI",
            ),
            (
                &EXAMPLE
                    .replace("public = true", "public = false")
                    .replace("[defaults]", "[defaults]\ndeprecate_in = \"4000d\""),
                "10 years ahead",
            ),
            (
                &EXAMPLE.replace(
                    "[defaults]",
                    "[tags]\n\"ec2ami:managed-by\" = \"me\"\n[defaults]",
                ),
                "tag `ec2ami:managed-by` is reserved",
            ),
            (
                &EXAMPLE.replace(
                    "flavour = \"small\"",
                    "flavour = \"small\"\ntags = { \"ec2ami:image-size\" = \"1\" }",
                ),
                "tag `ec2ami:image-size` is reserved",
            ),
            ("regions = []\n[[image]]\npath='x'", "`regions` is empty"),
            (
                &format!(
                    "announce = {{ topic = \"arn:aws:sqs:us-east-1:123456789012:q\", release = \"15.0\", image = \"x\" }}\n{EXAMPLE}"
                ),
                "announce: `arn:aws:sqs:us-east-1:123456789012:q` is not an SNS topic ARN",
            ),
            (
                &format!(
                    "announce = {{ topic = \"arn:aws:sns:us-east-1:123456789012:t\", release = \"15.0\" }}\n{EXAMPLE}"
                ),
                "missing field `image`",
            ),
            ("regions = 'all'", "no [[image]]"),
            ("regions = ", "TOML"),
        ];
        for (text, needle) in cases {
            let e = match parse(text) {
                Ok(_) => panic!("accepted a bad release (wanted `{needle}`)"),
                Err(e) => e.to_string(),
            };
            let ok = e.contains(needle)
                || (*needle == "TOML" && matches!(parse(text), Err(ReleaseError::Parse { .. })));
            assert!(ok, "wanted `{needle}` in: {e}");
        }
    }

    #[test]
    fn two_images_writing_one_parameter_are_refused() {
        // Distinct names (arch differs), one parameter name (no {arch} in it).
        let text = EXAMPLE
            .replace("{arch}/{flavour}/{fs}/", "{flavour}/")
            .replace("flavour = \"small\"", "flavour = \"base\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("would both write the parameter `/myos/base/15.0/CURRENT`"),
            "{e}"
        );
    }

    #[test]
    fn missing_files_are_found_when_asked() {
        let f = ReleaseFile::parse(Path::new("/nonexistent/release.toml"), EXAMPLE).unwrap();
        let e = f.resolve("20261124", true).unwrap_err().to_string();
        assert!(e.contains("base-ufs-amd64.raw"), "{e}");
    }

    #[test]
    fn region_names() {
        for ok in ["us-east-1", "ap-southeast-7", "us-gov-west-1", "all"] {
            assert!(looks_like_region(ok), "{ok}");
        }
        for bad in ["mars", "us-east", "US-EAST-1", "us-east-x", ""] {
            assert!(!looks_like_region(bad), "{bad}");
        }
    }

    #[test]
    fn a_date_in_defaults_wins_over_today() {
        let text = EXAMPLE.replace("[defaults]", "[defaults]\ndate = \"20240101\"");
        let r = parse(&text).unwrap();
        assert!(r.images[0].name().contains("20240101"));
        assert_eq!(r.date, "20240101");
    }

    #[test]
    fn deprecations_past_ec2_limits_are_refused() {
        let with = |public: bool, deprecate_in: &str| {
            let text = EXAMPLE
                .replace("public = true", &format!("public = {public}"))
                .replace(
                    "[defaults]",
                    &format!("[defaults]\ndeprecate_in = \"{deprecate_in}\""),
                );
            parse(&text)
        };
        assert!(with(true, "729d").is_ok());
        let e = with(true, "731d").unwrap_err().to_string();
        assert!(e.contains("2 years ahead for a public AMI"), "{e}");
        assert!(with(false, "731d").is_ok());
        let e = with(false, "3653d").unwrap_err().to_string();
        assert!(e.contains("10 years ahead"), "{e}");
    }

    #[test]
    fn a_deprecation_in_defaults_applies_to_every_image_unless_one_says_otherwise() {
        let text = EXAMPLE
            .replace("public = true", "public = false")
            .replace("[defaults]", "[defaults]\ndeprecate_in = \"180d\"")
            .replace(
                "flavour = \"small\"",
                // Within the 2 years EC2 allows for a public AMI.
                "flavour = \"small\"\ndeprecate_at = \"2028-06-01\"",
            );
        let before = DateTime::from(std::time::SystemTime::now()).secs();
        let r = parse(&text).unwrap();
        let base = r.images[0].spec.deprecate_at.expect("the default").secs();
        assert!((base - before - 180 * 86_400).abs() < 60, "{base}");
        let small = r.images[1].spec.deprecate_at.expect("its own").secs();
        assert_eq!(small, 1_843_430_400);
    }
}
