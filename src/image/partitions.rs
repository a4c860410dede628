//! Partition tables: GPT (behind its protective MBR) and MBR (primary partitions and
//! the logical ones of an extended partition), read from a disk's first bytes, as
//! partitions with their index, name, type and byte range. 512-byte sectors.

use serde::Serialize;

/// Which kind of table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// MBR (DOS) partition table.
    Mbr,
    /// Neither was found.
    None,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Gpt => "GPT",
            TableKind::Mbr => "MBR",
            TableKind::None => "no partition table",
        })
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Its number as the OS counts it (1-based: GPT entry number; MBR 1-4 primary, 5+
    /// logical).
    pub index: u32,
    /// GPT partition name (UTF-16 in the table), empty for MBR.
    pub name: String,
    /// Type: the GPT type GUID, or the MBR type byte as `0x83`.
    pub type_id: String,
    /// What the type is, for the types this table knows.
    pub type_name: Option<&'static str>,
    /// First byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Partition {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionTable {
    /// GPT, MBR or none.
    pub kind: TableKind,
    /// Partitions in index order.
    pub partitions: Vec<Partition>,
}

/// Bytes of a disk that hold its partition tables in the usual layouts (MBR, GPT header
/// and 128 entries, and room for logical MBR partitions near the start).
pub const HEAD_BYTES: usize = 1 << 20;

const SECTOR: u64 = 512;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Read the partition table from `read(offset, len)`, which answers the disk's bytes
/// (zeros past its end). `disk_size` bounds the partitions (those past it are kept but
/// clipped to it).
pub fn read_table(
    mut read: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
    disk_size: u64,
) -> std::io::Result<PartitionTable> {
    let none = PartitionTable {
        kind: TableKind::None,
        partitions: Vec::new(),
    };
    let mbr = read(0, 2 * SECTOR as usize)?;
    if mbr.len() < 512 || mbr[510..512] != [0x55, 0xaa] {
        return Ok(none);
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    let protective = entries.iter().any(|e| e[4] == 0xee);
    if protective && mbr.len() >= 1024 && &mbr[512..520] == b"EFI PART" {
        return gpt(&mbr[512..1024], &mut read, disk_size);
    }
    let mut partitions = Vec::new();
    let mut extended = None;
    for (i, e) in entries.iter().enumerate() {
        let kind = e[4];
        let (lba, sectors) = (u64::from(le32(e, 8)), u64::from(le32(e, 12)));
        if kind == 0 || sectors == 0 {
            continue;
        }
        if matches!(kind, 0x05 | 0x0f | 0x85) {
            extended.get_or_insert(lba);
        }
        partitions.push(mbr_partition(
            i as u32 + 1,
            kind,
            lba * SECTOR,
            sectors * SECTOR,
        ));
    }
    if partitions.is_empty() {
        return Ok(none);
    }
    // Logical partitions: a chain of EBRs, each relative to the extended partition.
    if let Some(ext) = extended {
        let (mut ebr, mut index, mut seen) = (ext, 5u32, 0);
        while seen < 128 && ebr * SECTOR < disk_size {
            seen += 1;
            let b = read(ebr * SECTOR, SECTOR as usize)?;
            if b.len() < 512 || b[510..512] != [0x55, 0xaa] {
                break;
            }
            let (this, next) = (&b[446..462], &b[462..478]);
            let (lba, sectors) = (u64::from(le32(this, 8)), u64::from(le32(this, 12)));
            if this[4] != 0 && sectors > 0 {
                let start = (ebr + lba) * SECTOR;
                partitions.push(mbr_partition(index, this[4], start, sectors * SECTOR));
                index += 1;
            }
            let next_lba = u64::from(le32(next, 8));
            if next[4] == 0 || next_lba == 0 {
                break;
            }
            ebr = ext + next_lba;
        }
    }
    for p in &mut partitions {
        clip(p, disk_size);
    }
    Ok(PartitionTable {
        kind: TableKind::Mbr,
        partitions,
    })
}

fn clip(p: &mut Partition, disk_size: u64) {
    p.start = p.start.min(disk_size);
    p.size = p.size.min(disk_size - p.start);
}

fn mbr_partition(index: u32, kind: u8, start: u64, size: u64) -> Partition {
    Partition {
        index,
        name: String::new(),
        type_id: format!("{kind:#04x}"),
        type_name: mbr_type_name(kind),
        start,
        size,
    }
}

fn gpt(
    header: &[u8],
    read: &mut impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
    disk_size: u64,
) -> std::io::Result<PartitionTable> {
    let entries_lba = le64(header, 72);
    let count = le32(header, 80) as usize;
    let size = le32(header, 84) as usize;
    let mut partitions = Vec::new();
    if (128..=4096).contains(&size) && count <= 4096 {
        let table = read(entries_lba.saturating_mul(SECTOR), count * size)?;
        for i in 0..count {
            let Some(e) = table.get(i * size..(i + 1) * size) else {
                break;
            };
            let type_guid: [u8; 16] = e[..16].try_into().expect("16 bytes");
            if type_guid == [0; 16] {
                continue;
            }
            let (first, last) = (le64(e, 32), le64(e, 40));
            if last < first {
                continue;
            }
            let name: Vec<u16> = (0..36)
                .map(|k| le16(e, 56 + 2 * k))
                .take_while(|&c| c != 0)
                .collect();
            let mut p = Partition {
                index: i as u32 + 1,
                name: String::from_utf16_lossy(&name),
                type_id: guid(&type_guid),
                type_name: gpt_type_name(&guid(&type_guid)),
                start: first.saturating_mul(SECTOR),
                size: (last - first + 1).saturating_mul(SECTOR),
            };
            clip(&mut p, disk_size);
            partitions.push(p);
        }
    }
    Ok(PartitionTable {
        kind: TableKind::Gpt,
        partitions,
    })
}

/// A GUID as text (its first three fields are little-endian on disk).
fn guid(b: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10..]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

fn gpt_type_name(g: &str) -> Option<&'static str> {
    Some(match g {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (ARM64)",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "83BD6B9D-7F41-11DC-BE0B-001560B84F0F" => "FreeBSD boot",
        "516E7CB4-6ECF-11D6-8FF8-00022D09712B" => "FreeBSD data",
        "516E7CB5-6ECF-11D6-8FF8-00022D09712B" => "FreeBSD swap",
        "516E7CB6-6ECF-11D6-8FF8-00022D09712B" => "FreeBSD UFS",
        "516E7CBA-6ECF-11D6-8FF8-00022D09712B" => "FreeBSD ZFS",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        _ => return None,
    })
}

fn mbr_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 | 0x04 | 0x06 | 0x0e => "FAT",
        0x0b | 0x0c => "FAT32",
        0x07 => "NTFS/exFAT",
        0x05 | 0x0f | 0x85 => "Extended",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xa6 => "OpenBSD",
        0xa9 => "NetBSD",
        0xee => "GPT protective",
        0xef => "EFI System",
        0xfd => "Linux RAID",
        _ => return None,
    })
}

/// Test disks: a GPT or an MBR head built byte by byte.
#[cfg(test)]
pub mod build {
    /// A protective MBR, GPT header (LBA 1) and 128 entries (LBA 2..34) for partitions
    /// `(type GUID bytes, first LBA, last LBA, name)`.
    pub fn gpt_head(parts: &[([u8; 16], u64, u64, &str)]) -> Vec<u8> {
        let mut d = vec![0u8; 34 * 512];
        d[446 + 4] = 0xee;
        d[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[446 + 12..446 + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xaa;
        let h = &mut d[512..1024];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        for (i, (t, first, last, name)) in parts.iter().enumerate() {
            let e = &mut d[1024 + 128 * i..1024 + 128 * (i + 1)];
            e[..16].copy_from_slice(t);
            e[16] = i as u8 + 1; // a unique partition GUID
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (k, c) in name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&c.to_le_bytes());
            }
        }
        d
    }

    /// An MBR with primary partitions `(type, first LBA, sectors)`.
    pub fn mbr_head(parts: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 512];
        for (i, (t, lba, n)) in parts.iter().enumerate() {
            let e = &mut d[446 + 16 * i..462 + 16 * i];
            e[4] = *t;
            e[8..12].copy_from_slice(&lba.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xaa;
        d
    }

    /// The Linux filesystem type GUID as stored on disk.
    pub const LINUX_FS: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];
    /// The EFI System type GUID as stored on disk.
    pub const ESP: [u8; 16] = [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn reader(disk: Vec<u8>) -> impl FnMut(u64, usize) -> std::io::Result<Vec<u8>> {
        move |off, len| {
            let mut v = vec![0u8; len];
            let off = off as usize;
            if off < disk.len() {
                let n = len.min(disk.len() - off);
                v[..n].copy_from_slice(&disk[off..off + n]);
            }
            Ok(v)
        }
    }

    #[test]
    fn gpt_partitions_with_names_types_and_ranges() {
        let head = gpt_head(&[(ESP, 2048, 4095, "efi"), (LINUX_FS, 4096, 20479, "rootfs")]);
        let t = read_table(reader(head), 16 << 20).unwrap();
        assert_eq!(t.kind, TableKind::Gpt);
        assert_eq!(t.partitions.len(), 2);
        let p = &t.partitions[1];
        assert_eq!(p.index, 2);
        assert_eq!(p.name, "rootfs");
        assert_eq!(p.type_id, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        assert_eq!(p.type_name, Some("Linux filesystem"));
        assert_eq!((p.start, p.size), (4096 * 512, 16384 * 512));
        assert_eq!(t.partitions[0].type_name, Some("EFI System"));
        // A partition past the end of a smaller disk is clipped to it.
        let t = read_table(reader(gpt_head(&[(LINUX_FS, 4096, 20479, "r")])), 3 << 20).unwrap();
        assert_eq!(t.partitions[0].end(), 3 << 20);
    }

    #[test]
    fn mbr_primary_and_logical_partitions() {
        let mut disk = mbr_head(&[(0x83, 2048, 2048), (0x05, 8192, 8192)]);
        disk.resize(16 << 20, 0);
        // EBR at LBA 8192: a logical partition at +63, 1000 sectors, and a next EBR at +4096.
        let ebr = |d: &mut Vec<u8>, at: usize, lba: u32, n: u32, next: u32| {
            let e = &mut d[at + 446..at + 462];
            e[4] = 0x82;
            e[8..12].copy_from_slice(&lba.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
            if next > 0 {
                let e = &mut d[at + 462..at + 478];
                e[4] = 0x05;
                e[8..12].copy_from_slice(&next.to_le_bytes());
                e[12..16].copy_from_slice(&100u32.to_le_bytes());
            }
            d[at + 510] = 0x55;
            d[at + 511] = 0xaa;
        };
        ebr(&mut disk, 8192 * 512, 63, 1000, 4096);
        ebr(&mut disk, (8192 + 4096) * 512, 63, 500, 0);
        let t = read_table(reader(disk), 16 << 20).unwrap();
        assert_eq!(t.kind, TableKind::Mbr);
        let got: Vec<(u32, &str, u64, u64)> = t
            .partitions
            .iter()
            .map(|p| (p.index, p.type_id.as_str(), p.start / 512, p.size / 512))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "0x83", 2048, 2048),
                (2, "0x05", 8192, 8192),
                (5, "0x82", 8192 + 63, 1000),
                (6, "0x82", 8192 + 4096 + 63, 500),
            ]
        );
    }

    #[test]
    fn no_table() {
        assert_eq!(
            read_table(reader(vec![0u8; 4096]), 4096).unwrap().kind,
            TableKind::None
        );
        // A boot signature but no partitions.
        assert_eq!(
            read_table(reader(mbr_head(&[])), 4096).unwrap().kind,
            TableKind::None
        );
    }
}
