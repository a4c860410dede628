//! What an image file refers to and whether it is whole, found before any conversion.
//!
//! A qcow2 header can name a backing file or an external data file, a VMDK descriptor
//! lists extent files and a parent: `qemu-img convert` follows all of them, so an image
//! could pull host files into a (public) snapshot. Every such reference is found twice,
//! by reading the header ourselves ([`header_references`]) and from
//! `qemu-img info --output json` ([`info_references`]), and refused unless the operator
//! allows it. `qemu-img check` then finds truncated or corrupt images, and the
//! conversion itself opens the file through a `json:` specification (`file.filename`,
//! `backing: null`) so that a path is never read as a protocol and nothing is followed.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::process::Command;

use super::{Format, ImageError};

/// How far into a file the header parser reads (a VMDK's embedded descriptor included).
const HEADER_READ: usize = 1 << 20;

/// What the operator allows an image to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// Follow backing files, external data files and extent files
    /// (`--allow-backing-file`): they are read and uploaded as part of the image.
    pub allow_backing_file: bool,
}

/// A file outside the image that the image would pull in when converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A qcow2 backing file (or a VMDK parent).
    BackingFile(String),
    /// A qcow2 external data file.
    DataFile(String),
    /// A VMDK extent stored in another file.
    Extent {
        /// The extent's file name as written.
        file: String,
        /// Its kind (FLAT, SPARSE, VMFS...).
        kind: String,
    },
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::BackingFile(n) => write!(f, "backing file {}", super::escaped(n)),
            Reference::DataFile(n) => write!(f, "external data file {}", super::escaped(n)),
            Reference::Extent { file, kind } => {
                write!(
                    f,
                    "{} extent file {}",
                    super::escaped(kind),
                    super::escaped(file)
                )
            }
        }
    }
}

/// What inspection found out about a non-raw image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The size of the disk the image holds, in bytes.
    pub virtual_size: u64,
    /// Its references (empty unless they were allowed).
    pub references: Vec<Reference>,
}

/// The references written in an image's first bytes (`head`, up to 1 MiB), for
/// `format`. Reads only `head`: no file is opened, whatever the bytes say.
pub fn header_references(format: Format, head: &[u8]) -> Vec<Reference> {
    match format {
        Format::Qcow2 => qcow2_references(head),
        Format::Vmdk if head.starts_with(b"# Disk DescriptorFile") => {
            descriptor_references(&String::from_utf8_lossy(head), false)
        }
        Format::Vmdk if head.starts_with(b"KDMV") => match embedded_descriptor(head) {
            Some(text) => descriptor_references(&String::from_utf8_lossy(text), true),
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn qcow2_references(h: &[u8]) -> Vec<Reference> {
    let mut refs = Vec::new();
    let version = be_u32(h, 4).unwrap_or(0);
    let backing_offset = be_u64(h, 8).unwrap_or(0);
    if backing_offset != 0 {
        let len = be_u32(h, 16).unwrap_or(0) as usize;
        let name = usize::try_from(backing_offset)
            .ok()
            .and_then(|o| h.get(o..o.checked_add(len)?))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| "(named beyond the header)".into());
        refs.push(Reference::BackingFile(name));
    }
    // Version 3: incompatible feature bit 2 is "external data file"; its name is the
    // header extension 0x44415441.
    if version >= 3 && be_u64(h, 72).unwrap_or(0) & 0b100 != 0 {
        let header_len = be_u32(h, 100).unwrap_or(104) as usize;
        let mut at = header_len;
        let mut name = None;
        while let (Some(kind), Some(len)) = (be_u32(h, at), be_u32(h, at + 4)) {
            if kind == 0 {
                break;
            }
            let len = len as usize;
            let Some(data) = h.get(at + 8..(at + 8).saturating_add(len)) else {
                break;
            };
            if kind == 0x4441_5441 {
                name = Some(String::from_utf8_lossy(data).into_owned());
                break;
            }
            at = at + 8 + len.div_ceil(8) * 8;
        }
        refs.push(Reference::DataFile(
            name.unwrap_or_else(|| "(named outside the header)".into()),
        ));
    }
    refs
}

/// A sparse VMDK's embedded descriptor, when it lies within `h`.
fn embedded_descriptor(h: &[u8]) -> Option<&[u8]> {
    let offset = usize::try_from(le_u64(h, 28)?.checked_mul(512)?).ok()?;
    let size = usize::try_from(le_u64(h, 36)?.checked_mul(512)?).ok()?;
    if offset == 0 || size == 0 {
        return None;
    }
    let end = offset.checked_add(size)?.min(h.len());
    let d = h.get(offset..end)?;
    let nul = d.iter().position(|&b| b == 0).unwrap_or(d.len());
    Some(&d[..nul])
}

/// References in a VMDK descriptor. An embedded descriptor's extents are the file
/// itself (qemu ignores them); a separate descriptor's extents are all other files.
fn descriptor_references(text: &str, embedded: bool) -> Vec<Reference> {
    let mut refs = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("parentFileNameHint") {
            let v = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            if !v.is_empty() {
                refs.push(Reference::BackingFile(v.to_string()));
            }
            continue;
        }
        if embedded {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(access), Some(_sectors), Some(kind)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if !matches!(access, "RW" | "RDONLY" | "NOACCESS") || kind == "ZERO" {
            continue;
        }
        let file = line
            .split_once('"')
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(f, _)| f.to_string())
            .unwrap_or_default();
        refs.push(Reference::Extent {
            file,
            kind: kind.to_string(),
        });
    }
    refs
}

/// The references `qemu-img info --output json` reports (an extent is a reference
/// when it is not the image's own `filename`).
pub fn info_references(info: &serde_json::Value) -> Vec<Reference> {
    let mut refs = Vec::new();
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    if let Some(b) = s(info, "full-backing-filename").or_else(|| s(info, "backing-filename")) {
        refs.push(Reference::BackingFile(b));
    }
    let own = s(info, "filename").unwrap_or_default();
    let data = info.get("format-specific").and_then(|f| f.get("data"));
    if let Some(d) = data.and_then(|d| s(d, "data-file")) {
        refs.push(Reference::DataFile(d));
    }
    for e in data
        .and_then(|d| d.get("extents"))
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
    {
        let file = s(e, "filename").unwrap_or_default();
        if file != own {
            refs.push(Reference::Extent {
                file,
                kind: s(e, "format").unwrap_or_else(|| "unknown".into()),
            });
        }
    }
    refs
}

/// The `json:` specification qemu-img opens `path` as `format` with: the path is a
/// plain file name (never a protocol) and, unless `follow`, no backing file is opened.
pub fn qemu_spec(path: &Path, format: Format, follow: bool) -> String {
    let mut spec = serde_json::json!({
        "driver": format.qemu_name(),
        "file": {"driver": "file", "filename": path.to_string_lossy()},
    });
    if format == Format::Qcow2 && !follow {
        spec["backing"] = serde_json::Value::Null;
    }
    format!("json:{spec}")
}

/// Inspect the non-raw image at `path` with `qemu`: refuse references unless allowed,
/// and images `qemu-img check` finds truncated or corrupt.
pub fn inspect(
    path: &Path,
    format: Format,
    qemu: &Path,
    opts: ImageOptions,
) -> Result<Inspection, ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut head = vec![0u8; HEADER_READ];
    let n = super::read_up_to(&file, &mut head, 0).map_err(|source| ImageError::Read {
        path: path.to_owned(),
        offset: 0,
        source,
    })?;
    head.truncate(n);
    drop(file);
    let refuse = |found: Reference| ImageError::Reference {
        path: path.to_owned(),
        format,
        found,
    };
    let from_header = header_references(format, &head);
    if !opts.allow_backing_file
        && let Some(r) = from_header.first()
    {
        return Err(refuse(r.clone()));
    }
    let qemu_err = |detail: String| ImageError::Conversion {
        path: path.to_owned(),
        format,
        detail,
    };
    let follow = opts.allow_backing_file;
    let spec = qemu_spec(path, format, follow);
    let out = Command::new(qemu)
        .args(["info", "--output", "json"])
        .arg(&spec)
        .output()
        .map_err(|e| qemu_err(format!("cannot run {}: {e}", qemu.display())))?;
    if !out.status.success() {
        return Err(ImageError::Corrupt {
            path: path.to_owned(),
            format,
            detail: qemu_message(&out.stderr, &spec, path),
        });
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| qemu_err(format!("qemu-img info printed no JSON: {e}")))?;
    let mut references = info_references(&info);
    if !opts.allow_backing_file
        && let Some(r) = references.first()
    {
        return Err(refuse(r.clone()));
    }
    for r in from_header {
        if !references.contains(&r) {
            references.push(r);
        }
    }
    let virtual_size = info
        .get("virtual-size")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| qemu_err("qemu-img info gave no virtual size".into()))?;
    // vpc (VHD) has no check; qemu refuses a truncated one when opening it.
    if format != Format::Vhd {
        let out = Command::new(qemu)
            .args(["check", "-q", "--output", "json"])
            .arg(&spec)
            .output()
            .map_err(|e| qemu_err(format!("cannot run {}: {e}", qemu.display())))?;
        // 0: clean, 3: leaked clusters only (harmless), 63: check not supported.
        match out.status.code() {
            Some(0 | 3 | 63) => {}
            _ => {
                return Err(ImageError::Corrupt {
                    path: path.to_owned(),
                    format,
                    detail: check_summary(&out.stdout, &out.stderr, &spec, path),
                });
            }
        }
    }
    Ok(Inspection {
        virtual_size,
        references,
    })
}

/// qemu-img's last message, with the `json:` specification replaced by the path.
pub(super) fn qemu_message(stderr: &[u8], spec: &str, path: &Path) -> String {
    let text = String::from_utf8_lossy(stderr).replace(spec, &path.to_string_lossy());
    let msg = text
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.contains("warning:"))
        .unwrap_or("qemu-img failed without a message")
        .trim()
        .trim_start_matches("qemu-img: ")
        .to_string();
    super::escaped(&msg)
}

/// One line for what `qemu-img check` found: the number of errors and the first one.
fn check_summary(stdout: &[u8], stderr: &[u8], spec: &str, path: &Path) -> String {
    let info: Option<serde_json::Value> = serde_json::from_slice(stdout).ok();
    let count = |k: &str| {
        info.as_ref()
            .and_then(|i| i.get(k))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    };
    let errors = count("corruptions") + count("check-errors");
    let text = String::from_utf8_lossy(stderr).replace(spec, &path.to_string_lossy());
    let first = text
        .lines()
        .map(|l| l.trim().trim_start_matches("qemu-img: "))
        .find(|l| !l.is_empty() && !l.contains("warning:"))
        .map(|l| l.trim_start_matches("ERROR: ").to_string());
    let first = first.map(|f| super::escaped(&f));
    match (errors, first) {
        (0, Some(f)) => format!("qemu-img check: {f} (truncated or corrupt)"),
        (0, None) => "qemu-img check found the image damaged (truncated or corrupt)".into(),
        (n, Some(f)) => {
            format!("qemu-img check found {n} error(s), the first: {f} (truncated or corrupt)")
        }
        (n, None) => format!("qemu-img check found {n} error(s) (truncated or corrupt)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_header(version: u32) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_backing_file_is_found_in_the_header() {
        let mut h = qcow2_header(3);
        let name = b"/etc/shadow";
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        h[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[512..512 + name.len()].copy_from_slice(name);
        assert_eq!(
            header_references(Format::Qcow2, &h),
            vec![Reference::BackingFile("/etc/shadow".into())]
        );
        // An offset past what was read is still a backing file.
        h[8..16].copy_from_slice(&(u64::MAX - 3).to_be_bytes());
        assert!(matches!(
            header_references(Format::Qcow2, &h)[..],
            [Reference::BackingFile(_)]
        ));
        assert!(header_references(Format::Qcow2, &qcow2_header(3)).is_empty());
    }

    #[test]
    fn qcow2_external_data_file_is_found() {
        let mut h = qcow2_header(3);
        h[72..80].copy_from_slice(&4u64.to_be_bytes());
        let name = b"/dev/sda";
        h[112..116].copy_from_slice(&0x4441_5441u32.to_be_bytes());
        h[116..120].copy_from_slice(&(name.len() as u32).to_be_bytes());
        h[120..120 + name.len()].copy_from_slice(name);
        assert_eq!(
            header_references(Format::Qcow2, &h),
            vec![Reference::DataFile("/dev/sda".into())]
        );
    }

    #[test]
    fn vmdk_descriptor_extents_and_parents_are_found() {
        let d = "# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\n\
                 createType=\"monolithicFlat\"\nRW 2048 FLAT \"/etc/passwd\" 0\n\
                 RW 100 ZERO\nparentFileNameHint=\"base.vmdk\"\n";
        let refs = header_references(Format::Vmdk, d.as_bytes());
        assert_eq!(
            refs,
            vec![
                Reference::Extent {
                    file: "/etc/passwd".into(),
                    kind: "FLAT".into()
                },
                Reference::BackingFile("base.vmdk".into()),
            ]
        );
        assert_eq!(refs[0].to_string(), "FLAT extent file /etc/passwd");
    }

    #[test]
    fn sparse_vmdk_embedded_extent_is_itself_but_a_parent_is_not() {
        let mut h = vec![0u8; 8192];
        h[..4].copy_from_slice(b"KDMV");
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&2u64.to_le_bytes());
        let d = b"# Disk DescriptorFile\nRW 2048 SPARSE \"me.vmdk\"\n";
        h[512..512 + d.len()].copy_from_slice(d);
        assert!(header_references(Format::Vmdk, &h).is_empty());
        let d = b"# Disk DescriptorFile\nparentFileNameHint=\"/root/base.vmdk\"\n";
        h[512..512 + d.len()].copy_from_slice(d);
        assert_eq!(
            header_references(Format::Vmdk, &h),
            vec![Reference::BackingFile("/root/base.vmdk".into())]
        );
    }

    #[test]
    fn qemu_info_references() {
        let info = serde_json::json!({
            "filename": "x.qcow2", "backing-filename": "b.qcow2",
            "full-backing-filename": "/d/b.qcow2",
            "format-specific": {"type": "qcow2", "data": {"data-file": "data.raw"}}
        });
        assert_eq!(
            info_references(&info),
            vec![
                Reference::BackingFile("/d/b.qcow2".into()),
                Reference::DataFile("data.raw".into())
            ]
        );
        let info = serde_json::json!({
            "filename": "sp.vmdk",
            "format-specific": {"type": "vmdk", "data": {"extents": [
                {"filename": "sp.vmdk", "format": ""},
                {"filename": "/etc/passwd", "format": "FLAT"}]}}
        });
        assert_eq!(
            info_references(&info),
            vec![Reference::Extent {
                file: "/etc/passwd".into(),
                kind: "FLAT".into()
            }]
        );
    }

    #[test]
    fn the_spec_names_a_file_and_no_backing() {
        let s = qemu_spec(Path::new("/a/nbd:x,\"y\".qcow2"), Format::Qcow2, false);
        let v: serde_json::Value = serde_json::from_str(s.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(v["file"]["filename"], "/a/nbd:x,\"y\".qcow2");
        assert_eq!(v["file"]["driver"], "file");
        assert!(v["backing"].is_null() && v.get("backing").is_some());
        let s = qemu_spec(Path::new("x.qcow2"), Format::Qcow2, true);
        assert!(!s.contains("backing"));
    }
}
