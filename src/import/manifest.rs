//! The ImportVolume manifest, as the seed documents it (EC2's "disk image manifest",
//! version 2010-11-15), with the integrity check the seed proposes: a `<sha256>` of
//! each part's bytes (hex), which ImportVolume ignores and `manifest verify` checks.
//!
//! ```xml
//! <manifest>
//!   <version>2010-11-15</version>
//!   <file-format>RAW</file-format>
//!   <importer><name>ec2ami</name><version>0.1.0</version><release>...</release></importer>
//!   <self-destruct-url>(pre-signed DELETE of the manifest)</self-destruct-url>
//!   <import>
//!     <size>BYTES</size>
//!     <volume-size>GIB</volume-size>
//!     <parts count="N">
//!       <part index="0">
//!         <byte-range start="0" end="10485759"/>
//!         <key>PREFIX/NONCE/part0</key>
//!         <head-url>...</head-url><get-url>...</get-url><delete-url>...</delete-url>
//!         <sha256>HEX</sha256>
//!       </part>
//!       ...
//! ```

use std::fmt::Write as _;

/// The size of each part (the last may be shorter), as bsdec2-image-upload uses.
pub const PART_SIZE: u64 = 10 * 1024 * 1024;

/// The manifest format version ImportVolume reads.
pub const VERSION: &str = "2010-11-15";

/// An import manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Manifest {
    /// `RAW`, `VHD` or `VMDK`.
    pub file_format: String,
    /// Who wrote it: (name, version, release).
    pub importer: (String, String, String),
    /// Pre-signed DELETE of the manifest object.
    pub self_destruct_url: String,
    /// Image bytes.
    pub size: u64,
    /// Volume size, GiB.
    pub volume_size: u64,
    /// The parts, in order.
    pub parts: Vec<Part>,
}

/// One part of the image: its bytes, where they are, how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Part {
    /// Position, from 0.
    pub index: u64,
    /// First byte (inclusive).
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// S3 object key.
    pub key: String,
    /// Pre-signed HEAD.
    pub head_url: String,
    /// Pre-signed GET.
    pub get_url: String,
    /// Pre-signed DELETE.
    pub delete_url: String,
    /// SHA-256 of the part's bytes, lowercase hex (absent in manifests of other tools).
    pub sha256: Option<String>,
}

impl Part {
    /// The part's length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a part holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not XML.
    #[error("not an XML document: {0}")]
    Xml(String),
    /// XML, but not a manifest as ImportVolume reads it.
    #[error("{0}")]
    Invalid(String),
}

/// The byte ranges of an image of `size` bytes cut in parts of `part` bytes.
pub fn ranges(size: u64, part: u64) -> Vec<(u64, u64)> {
    (0..size.div_ceil(part))
        .map(|i| (i * part, ((i + 1) * part).min(size) - 1))
        .collect()
}

/// GiB, rounded up (at least 1).
pub fn volume_gib(size: u64) -> u64 {
    size.div_ceil(1 << 30).max(1)
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

impl Manifest {
    /// The XML document (one line per element, as readable as the seed's example).
    pub fn to_xml(&self) -> String {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n");
        let (name, version, release) = &self.importer;
        let _ = write!(
            x,
            "<manifest>\n  <version>{VERSION}</version>\n  <file-format>{}</file-format>\n  \
             <importer>\n    <name>{}</name>\n    <version>{}</version>\n    \
             <release>{}</release>\n  </importer>\n  <self-destruct-url>{}</self-destruct-url>\n  \
             <import>\n    <size>{}</size>\n    <volume-size>{}</volume-size>\n    \
             <parts count=\"{}\">\n",
            esc(&self.file_format),
            esc(name),
            esc(version),
            esc(release),
            esc(&self.self_destruct_url),
            self.size,
            self.volume_size,
            self.parts.len()
        );
        for p in &self.parts {
            let _ = write!(
                x,
                "      <part index=\"{}\">\n        <byte-range start=\"{}\" end=\"{}\"/>\n        \
                 <key>{}</key>\n        <head-url>{}</head-url>\n        <get-url>{}</get-url>\n        \
                 <delete-url>{}</delete-url>\n",
                p.index,
                p.start,
                p.end,
                esc(&p.key),
                esc(&p.head_url),
                esc(&p.get_url),
                esc(&p.delete_url)
            );
            if let Some(h) = &p.sha256 {
                let _ = writeln!(x, "        <sha256>{h}</sha256>");
            }
            x.push_str("      </part>\n");
        }
        x.push_str("    </parts>\n  </import>\n</manifest>\n");
        x
    }

    /// Read a manifest and check its shape as ImportVolume would: version, format, the
    /// parts' count, order and contiguous byte ranges covering `size`, every URL.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        type Node<'a, 'i> = roxmltree::Node<'a, 'i>;
        fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
            n.children()
                .find(|c| c.is_element() && c.tag_name().name() == name)
        }
        fn text_of(n: Node<'_, '_>, name: &str) -> Result<String, ManifestError> {
            child(n, name)
                .map(|c| c.text().unwrap_or("").trim().to_string())
                .ok_or_else(|| {
                    ManifestError::Invalid(format!("no <{name}> in <{}>", n.tag_name().name()))
                })
        }
        fn number(n: Node<'_, '_>, name: &str) -> Result<u64, ManifestError> {
            let t = text_of(n, name)?;
            t.parse()
                .map_err(|_| ManifestError::Invalid(format!("<{name}> `{t}` is not a number")))
        }
        let doc =
            roxmltree::Document::parse(text).map_err(|e| ManifestError::Xml(e.to_string()))?;
        let bad = |m: String| ManifestError::Invalid(m);
        let root = doc.root_element();
        if root.tag_name().name() != "manifest" {
            return Err(bad(format!(
                "the document is a <{}>, not a <manifest>",
                root.tag_name().name()
            )));
        }
        let version = text_of(root, "version")?;
        if version != VERSION {
            return Err(bad(format!(
                "version {version}: ImportVolume reads version {VERSION}"
            )));
        }
        let file_format = text_of(root, "file-format")?;
        if !matches!(file_format.as_str(), "RAW" | "VHD" | "VMDK") {
            return Err(bad(format!(
                "file-format {file_format}: RAW, VHD or VMDK expected"
            )));
        }
        let importer = match child(root, "importer") {
            Some(i) => (
                text_of(i, "name").unwrap_or_default(),
                text_of(i, "version").unwrap_or_default(),
                text_of(i, "release").unwrap_or_default(),
            ),
            None => return Err(bad("no <importer>".into())),
        };
        let self_destruct_url = text_of(root, "self-destruct-url")?;
        let import = child(root, "import").ok_or_else(|| bad("no <import>".into()))?;
        let size = number(import, "size")?;
        let volume_size = number(import, "volume-size")?;
        let parts_node = child(import, "parts").ok_or_else(|| bad("no <parts>".into()))?;
        let count: usize = parts_node
            .attribute("count")
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("<parts> has no count".into()))?;
        let mut parts = Vec::new();
        let mut next = 0u64;
        for (i, p) in parts_node
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "part")
            .enumerate()
        {
            let index: u64 = p
                .attribute("index")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("part {i} has no index")))?;
            if index != i as u64 {
                return Err(bad(format!("part {i} says it is part {index}")));
            }
            let range = child(p, "byte-range")
                .ok_or_else(|| bad(format!("part {i} has no <byte-range>")))?;
            let attr = |name: &str| -> Result<u64, ManifestError> {
                range
                    .attribute(name)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad(format!("part {i}'s byte-range has no {name}")))
            };
            let (start, end) = (attr("start")?, attr("end")?);
            if start != next || end < start {
                return Err(bad(format!(
                    "part {i}'s byte range {start}-{end} does not follow the previous part (which \
                     ends at {})",
                    next as i128 - 1
                )));
            }
            next = end + 1;
            let sha256 = match child(p, "sha256") {
                Some(h) => {
                    let h = h.text().unwrap_or("").trim().to_ascii_lowercase();
                    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad(format!("part {i}'s <sha256> is not 64 hex digits")));
                    }
                    Some(h)
                }
                None => None,
            };
            parts.push(Part {
                index,
                start,
                end,
                key: text_of(p, "key")?,
                head_url: text_of(p, "head-url")?,
                get_url: text_of(p, "get-url")?,
                delete_url: text_of(p, "delete-url")?,
                sha256,
            });
        }
        if parts.len() != count {
            return Err(bad(format!(
                "<parts count=\"{count}\"> holds {} part(s)",
                parts.len()
            )));
        }
        if next != size {
            return Err(bad(format!(
                "the parts cover {next} bytes; <size> says {size}"
            )));
        }
        if volume_size < volume_gib(size) {
            return Err(bad(format!(
                "<volume-size> {volume_size} GiB is smaller than the image ({size} bytes)"
            )));
        }
        Ok(Manifest {
            file_format,
            importer,
            self_destruct_url,
            size,
            volume_size,
            parts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Manifest {
        let size = 25 * 1024 * 1024 + 7;
        Manifest {
            file_format: "RAW".into(),
            importer: ("ec2ami".into(), "0.1.0".into(), "2026-12-02".into()),
            self_destruct_url:
                "https://b.s3.us-east-1.amazonaws.com/n/manifest.xml?X-Amz-A=1&X-Amz-B=2".into(),
            size,
            volume_size: 1,
            parts: ranges(size, PART_SIZE)
                .into_iter()
                .enumerate()
                .map(|(i, (start, end))| Part {
                    index: i as u64,
                    start,
                    end,
                    key: format!("n/part{i}"),
                    head_url: format!("https://h/{i}?a=1&b=2"),
                    get_url: format!("https://g/{i}?a=1&b=2"),
                    delete_url: format!("https://d/{i}?a=1&b=2"),
                    sha256: Some(format!("{:064x}", i)),
                })
                .collect(),
        }
    }

    #[test]
    fn ranges_are_inclusive_and_cover_the_image() {
        assert_eq!(ranges(10, 4), [(0, 3), (4, 7), (8, 9)]);
        assert_eq!(ranges(8, 4), [(0, 3), (4, 7)]);
        assert_eq!(ranges(PART_SIZE, PART_SIZE), [(0, 10_485_759)]);
        assert_eq!(volume_gib(1), 1);
        assert_eq!(volume_gib((1 << 30) + 1), 2);
    }

    #[test]
    fn the_manifest_round_trips_with_urls_escaped() {
        let m = example();
        let xml = m.to_xml();
        assert!(xml.contains("<version>2010-11-15</version>"));
        assert!(xml.contains("<parts count=\"3\">"));
        assert!(xml.contains("<byte-range start=\"0\" end=\"10485759\"/>"));
        assert!(xml.contains("?a=1&amp;b=2"), "the & of URLs is escaped");
        assert!(!xml.contains("?a=1&b=2"));
        assert_eq!(Manifest::parse(&xml).unwrap(), m);
    }

    #[test]
    fn malformed_manifests_are_refused_with_the_reason() {
        let xml = example().to_xml();
        let cases = [
            (
                xml.replace("2010-11-15", "2011-01-01"),
                "version 2011-01-01",
            ),
            (xml.replace("count=\"3\"", "count=\"4\""), "holds 3 part(s)"),
            (
                xml.replace("start=\"10485760\"", "start=\"10485761\""),
                "does not follow",
            ),
            (
                xml.replace("<file-format>RAW", "<file-format>QCOW2"),
                "RAW, VHD or VMDK",
            ),
            (
                xml.replace("<size>26214407</size>", "<size>26214408</size>"),
                "the parts cover",
            ),
            (
                xml.replace(&format!("{:064x}", 1), "abc"),
                "not 64 hex digits",
            ),
            (
                xml.replace("<manifest>", "<manifesto>")
                    .replace("</manifest>", "</manifesto>"),
                "not a <manifest>",
            ),
            ("<manifest".to_string(), "not an XML document"),
        ];
        for (text, want) in cases {
            let e = Manifest::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "wanted `{want}` in: {e}");
        }
    }
}
