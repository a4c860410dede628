//! The tar archives configinit extracts (with FreeBSD's `tar`, libarchive's bsdtar):
//! written as plain ustar, byte for byte reproducible (owner 0, time 0, no padding to a
//! 10 KiB record), and read back for `--check` (ustar, pax and GNU long names).

use std::fmt;

const BLOCK: usize = 512;

/// One member to write.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Its name inside the archive.
    pub name: &'a str,
    /// Permission bits.
    pub mode: u32,
    /// Its content.
    pub data: &'a [u8],
}

/// An archive of `entries`, in that order, as ustar. Names must fit in 100 bytes.
pub fn write(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        assert!(e.name.len() < 100, "member names are short");
        let mut h = [0u8; BLOCK];
        h[..e.name.len()].copy_from_slice(e.name.as_bytes());
        octal(&mut h[100..108], e.mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], e.data.len() as u64);
        octal(&mut h[136..148], 0);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], 0);
        octal(&mut h[337..345], 0);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let digits = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(digits.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(e.data);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

/// Zero-padded octal digits and a NUL, filling `field`.
fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// What kind of member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: configinit processes it.
    File,
    /// A directory.
    Directory,
    /// A symbolic or hard link, a device, a FIFO: configinit's `find -type f` skips it.
    Other,
}

/// One member read back.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its path inside the archive.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Its content (files only).
    pub data: Vec<u8>,
}

/// Why an archive could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarError {
    /// A header's checksum does not match.
    Checksum {
        /// Byte offset of the header.
        offset: usize,
    },
    /// The data ends inside a member.
    Truncated {
        /// The member.
        name: String,
    },
    /// A size field is not octal.
    BadSize {
        /// Byte offset of the header.
        offset: usize,
    },
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TarError::Checksum { offset } => {
                write!(f, "tar header at byte {offset}: bad checksum")
            }
            TarError::Truncated { name } => {
                write!(f, "tar member {name}: the archive ends inside it")
            }
            TarError::BadSize { offset } => write!(f, "tar header at byte {offset}: bad size"),
        }
    }
}

/// Whether `data` starts with a tar header (a valid header checksum).
pub fn looks_like_tar(data: &[u8]) -> bool {
    data.len() >= BLOCK && checksum_ok(&data[..BLOCK])
}

fn checksum_ok(h: &[u8]) -> bool {
    let Some(stored) = parse_octal(&h[148..156]) else {
        return false;
    };
    let unsigned: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u64
            }
        })
        .sum();
    let signed: i64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as i8 as i64
            }
        })
        .sum();
    stored == unsigned || stored as i64 == signed
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let s = std::str::from_utf8(&s).ok()?;
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Every member of the archive `data`, in archive order.
pub fn read(data: &[u8]) -> Result<Vec<Member>, TarError> {
    let mut members = Vec::new();
    let mut off = 0;
    let mut long_name: Option<String> = None;
    while off + BLOCK <= data.len() {
        let h = &data[off..off + BLOCK];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        if !checksum_ok(h) {
            return Err(TarError::Checksum { offset: off });
        }
        let size = parse_octal(&h[124..136]).ok_or(TarError::BadSize { offset: off })? as usize;
        let mut name = cstr(&h[..100]);
        if &h[257..262] == b"ustar" {
            let prefix = cstr(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let start = off + BLOCK;
        let end = start.checked_add(size).filter(|&e| e <= data.len());
        let Some(end) = end else {
            return Err(TarError::Truncated { name });
        };
        let body = &data[start..end];
        off = start + size.next_multiple_of(BLOCK);
        match h[156] {
            b'L' => {
                long_name = Some(cstr(body));
                continue;
            }
            b'x' => {
                if let Some(p) = pax_path(body) {
                    long_name = Some(p);
                }
                continue;
            }
            b'g' => continue,
            _ => {}
        }
        if let Some(n) = long_name.take() {
            name = n;
        }
        let kind = match h[156] {
            b'0' | 0 | b'7' => {
                if name.ends_with('/') {
                    Kind::Directory
                } else {
                    Kind::File
                }
            }
            b'5' => Kind::Directory,
            _ => Kind::Other,
        };
        members.push(Member {
            name,
            kind,
            data: if kind == Kind::File {
                body.to_vec()
            } else {
                Vec::new()
            },
        });
    }
    Ok(members)
}

/// The `path` record of a pax extended header.
fn pax_path(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let mut rest: &str = &text;
    while !rest.is_empty() {
        let (len, _) = rest.split_once(' ')?;
        let n: usize = len.parse().ok()?;
        let record = rest.get(..n)?;
        rest = &rest[n..];
        let kv = record.split_once(' ')?.1.trim_end_matches('\n');
        if let Some(p) = kv.strip_prefix("path=") {
            return Some(p.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let a = b"#!/bin/sh\necho hi\n".to_vec();
        let b = vec![7u8; 1000];
        let tar = write(&[
            Entry {
                name: "01-script",
                mode: 0o755,
                data: &a,
            },
            Entry {
                name: "02-file",
                mode: 0o644,
                data: &b,
            },
        ]);
        // Header, one data block; header, two data blocks; two zero blocks.
        assert_eq!(tar.len(), 512 * (2 + 3 + 2));
        assert!(looks_like_tar(&tar));
        assert_eq!(&tar[257..263], b"ustar\0");
        assert_eq!(&tar[100..108], b"0000755\0");
        assert_eq!(&tar[124..136], b"00000000022\0");
        let m = read(&tar).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "01-script");
        assert_eq!(m[0].data, a);
        assert_eq!(m[1].data, b);
        assert_eq!(m[1].kind, Kind::File);
        // Reproducible.
        assert_eq!(
            tar,
            write(&[
                Entry {
                    name: "01-script",
                    mode: 0o755,
                    data: &a
                },
                Entry {
                    name: "02-file",
                    mode: 0o644,
                    data: &b
                }
            ])
        );
    }

    #[test]
    fn damage_is_reported() {
        let mut tar = write(&[Entry {
            name: "x",
            mode: 0o644,
            data: b"hello",
        }]);
        // No end-of-archive blocks: bsdtar still reads the member, so do we.
        assert_eq!(read(&tar[..600]).unwrap().len(), 1);
        assert_eq!(
            read(&tar[..512]).unwrap_err(),
            TarError::Truncated { name: "x".into() }
        );
        tar[0] = b'y';
        assert_eq!(read(&tar).unwrap_err(), TarError::Checksum { offset: 0 });
        assert!(!looks_like_tar(b"#!/bin/sh\n"));
    }

    #[test]
    fn long_names_and_kinds() {
        // A GNU long-name header, then the file it names; a directory; a symlink.
        let long = "d/".to_string() + &"n".repeat(120);
        let mut tar = Vec::new();
        let mut hdr = |name: &str, flag: u8, data: &[u8]| {
            let mut t = write(&[Entry {
                name,
                mode: 0o644,
                data,
            }]);
            t.truncate(t.len() - 1024);
            t[156] = flag;
            t[148..156].copy_from_slice(b"        ");
            let sum: u32 = t[..512].iter().map(|&b| b as u32).sum();
            t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            tar.extend_from_slice(&t);
        };
        hdr("././@LongLink", b'L', long.as_bytes());
        hdr("short", b'0', b"data");
        hdr("d/", b'5', b"");
        hdr("link", b'2', b"");
        tar.extend_from_slice(&[0; 1024]);
        let m = read(&tar).unwrap();
        assert_eq!(m[0].name, long);
        assert_eq!(m[0].data, b"data");
        assert_eq!(m[1].kind, Kind::Directory);
        assert_eq!(m[2].kind, Kind::Other);
    }
}
