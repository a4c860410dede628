//! UEFI data for RegisterImage (`register --uefi-data FILE`, `uefi_data = "FILE"`): the
//! non-volatile UEFI variable store (Secure Boot keys...) as `aws ec2
//! get-instance-uefi-data` prints it and python-uefivars writes it: base64 of an
//! `AMZNUEFI` blob (8-byte magic, CRC32C, version 0, a zlib stream). Checked before any
//! request: AWS takes at most 64,000 characters, and a blob that is not this format
//! would only fail at boot.

use std::path::Path;

use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The longest UefiData RegisterImage takes, in base64 characters.
pub const MAX_CHARS: usize = 64_000;
const MAGIC: &[u8; 8] = b"AMZNUEFI";

/// A checked UEFI variable store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UefiData {
    /// The base64 text, as RegisterImage takes it.
    #[serde(skip)]
    pub base64: String,
    /// SHA-256 of the base64 text, hex (to compare with what an AMI holds).
    pub sha256: String,
    /// Where it was read from.
    pub source: String,
}

impl UefiData {
    /// Read and check the file at `path`.
    pub fn read(path: &Path) -> Result<UefiData, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read UEFI data {}: {e}", path.display()))?;
        UefiData::check(&text, &path.display().to_string())
    }

    /// Check `text` (read from `source`).
    pub fn check(text: &str, source: &str) -> Result<UefiData, String> {
        let bad = |why: String| Err(format!("UEFI data {source}: {why}"));
        // As get-instance-uefi-data prints it: one base64 string, maybe wrapped.
        let b64: String = text.split_whitespace().collect();
        if b64.is_empty() {
            return bad("the file is empty".into());
        }
        if b64.len() > MAX_CHARS {
            return bad(format!(
                "{} base64 characters, more than the {MAX_CHARS} RegisterImage takes",
                b64.len()
            ));
        }
        let raw = match base64::engine::general_purpose::STANDARD.decode(&b64) {
            Ok(r) => r,
            Err(e) => {
                return bad(format!(
                    "not base64 ({e}): give the variable store as `aws ec2 \
                     get-instance-uefi-data` prints it"
                ));
            }
        };
        if raw.len() < 18 || &raw[..8] != MAGIC {
            return bad(
                "not an AWS UEFI variable store (no AMZNUEFI header): make it with \
                 python-uefivars (-o aws) or take it from `aws ec2 get-instance-uefi-data`"
                    .into(),
            );
        }
        let crc = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let version = u32::from_le_bytes(raw[12..16].try_into().expect("4 bytes"));
        if version != 0 {
            return bad(format!("variable store version {version}, only 0 is known"));
        }
        if crc32c(&raw[12..]) != crc {
            return bad("its CRC32C does not match: the data is damaged or truncated".into());
        }
        // A zlib stream: CMF (deflate) and the FCHECK of CMF*256+FLG.
        let (cmf, flg) = (raw[16], raw[17]);
        if cmf & 0x0f != 8 || (u16::from(cmf) * 256 + u16::from(flg)) % 31 != 0 {
            return bad("the variables are not a zlib stream".into());
        }
        Ok(UefiData {
            sha256: hex(&Sha256::digest(b64.as_bytes())),
            base64: b64,
            source: source.to_string(),
        })
    }
}

/// SHA-256 (hex) of a base64 UEFI data string, as DescribeImageAttribute answers it.
pub fn digest(base64_text: &str) -> String {
    let b64: String = base64_text.split_whitespace().collect();
    hex(&Sha256::digest(b64.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// CRC-32C (Castagnoli), as the AWS variable store header carries it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A well-formed variable store around `zlib` (a zlib stream), base64: for tests.
pub fn encode_store(zlib: &[u8]) -> String {
    let mut body = 0u32.to_le_bytes().to_vec();
    body.extend_from_slice(zlib);
    let mut raw = MAGIC.to_vec();
    raw.extend_from_slice(&crc32c(&body).to_le_bytes());
    raw.extend_from_slice(&body);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A zlib stream of nothing (header 78 9c, empty final block, adler32 of "").
    const EMPTY_ZLIB: &[u8] = &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn a_good_store_passes_and_bad_ones_are_named() {
        let good = encode_store(EMPTY_ZLIB);
        let u = UefiData::check(&format!("{good}\n"), "vars.b64").unwrap();
        assert_eq!(u.base64, good);
        assert_eq!(u.sha256, digest(&good));
        let err = |t: &str| UefiData::check(t, "f").unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err("not base64 at all!").contains("not base64"));
        assert!(
            err(&base64::engine::general_purpose::STANDARD.encode(b"hello world, no header"))
                .contains("AMZNUEFI")
        );
        // One flipped byte in the body: the CRC says so.
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&good)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(err(&base64::engine::general_purpose::STANDARD.encode(&raw)).contains("CRC32C"));
        let huge = "A".repeat(MAX_CHARS + 4);
        assert!(err(&huge).contains("64000"));
    }
}
