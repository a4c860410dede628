//! What a publish uploaded for an image: the file's size and modification time, and the
//! snapshot's LINEAR aggregate checksum (the block index's). Recorded in the journal
//! (the snapshot step's detail) and as the [`tags::IMAGE_IDENTITY`] tag on the snapshot
//! and the source AMI, so a rerun (whatever its state database) and `validate` notice
//! that the file is no longer what the AMI of that name was made from.
//!
//! [`tags::IMAGE_IDENTITY`]: crate::aws::tags::IMAGE_IDENTITY

use std::path::Path;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;

/// The identity of an uploaded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// File size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// The snapshot's LINEAR aggregate SHA-256 (base64), once uploaded.
    pub checksum: Option<String>,
}

impl Stamp {
    /// The file at `path` as it is now (no checksum: that comes from an upload).
    pub fn of(path: &Path) -> Result<Stamp, String> {
        let id = crate::image::FileIdentity::of(path).map_err(|e| e.to_string())?;
        Ok(Stamp::from_identity(&id))
    }

    /// From a [`FileIdentity`](crate::image::FileIdentity).
    pub fn from_identity(id: &crate::image::FileIdentity) -> Stamp {
        Stamp {
            size: id.size,
            mtime_ns: id.mtime_ns,
            checksum: None,
        }
    }

    /// As a tag value or journal detail: `size=N mtime=NS[ sha256=B64]`.
    pub fn encode(&self) -> String {
        let mut s = format!("size={} mtime={}", self.size, self.mtime_ns);
        if let Some(c) = &self.checksum {
            s.push_str(&format!(" sha256={c}"));
        }
        s
    }

    /// Read [`Stamp::encode`]'s form (`None`: not one).
    pub fn decode(s: &str) -> Option<Stamp> {
        let (mut size, mut mtime, mut checksum) = (None, None, None);
        for part in s.split_whitespace() {
            match part.split_once('=')? {
                ("size", v) => size = Some(v.parse().ok()?),
                ("mtime", v) => mtime = Some(v.parse().ok()?),
                ("sha256", v) => checksum = Some(v.to_string()),
                _ => {}
            }
        }
        Some(Stamp {
            size: size?,
            mtime_ns: mtime?,
            checksum,
        })
    }

    /// How the file `now` differs from this recorded stamp, in words (`None`: the same
    /// file as far as size and modification time tell).
    pub fn change(&self, now: &Stamp) -> Option<String> {
        let mut out = Vec::new();
        if self.size != now.size {
            out.push(format!("size {} -> {} bytes", self.size, now.size));
        }
        if self.mtime_ns != now.mtime_ns {
            out.push(format!(
                "modified {} -> {}",
                when(self.mtime_ns),
                when(now.mtime_ns)
            ));
        }
        (!out.is_empty()).then(|| out.join(", "))
    }
}

fn when(ns: i128) -> String {
    let secs = (ns.div_euclid(1_000_000_000)) as i64;
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    DateTime::from_secs_and_nanos(secs, nanos)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| ns.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_and_names_what_changed() {
        let s = Stamp {
            size: 16_777_216,
            mtime_ns: 1_764_690_000_123_456_789,
            checksum: Some("q83vEjRWeJA=".into()),
        };
        assert_eq!(Stamp::decode(&s.encode()), Some(s.clone()));
        let bare = Stamp {
            checksum: None,
            ..s.clone()
        };
        assert_eq!(Stamp::decode(&bare.encode()), Some(bare.clone()));
        assert_eq!(s.change(&bare), None, "the checksum is not the file's");
        let grown = Stamp {
            size: 20_971_520,
            mtime_ns: s.mtime_ns + 2_000_000_000,
            checksum: None,
        };
        assert_eq!(
            s.change(&grown).unwrap(),
            "size 16777216 -> 20971520 bytes, modified 2025-12-02T15:40:00.123456Z -> \
             2025-12-02T15:40:02.123456Z"
        );
        assert_eq!(Stamp::decode("found by tag"), None);
        assert_eq!(Stamp::decode("size=1"), None);
    }
}
