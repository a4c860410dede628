//! Which firmware can boot an image, from its partition table: BIOS needs boot code in
//! the MBR (GRUB's boot.img, FreeBSD's pmbr); UEFI needs an EFI System Partition (GPT
//! type C12A7328-..., or MBR type 0xEF). And where the firmware files are: SeaBIOS
//! (QEMU's default BIOS), OVMF for x86_64 and AAVMF for arm64, whose variable store is
//! copied fresh for every boot.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::ami::Arch;
use crate::image::Format;

/// A firmware to boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS).
    Bios,
    /// UEFI (OVMF on x86_64, AAVMF on arm64).
    Uefi,
}

impl Firmware {
    /// `bios` or `uefi`: the history's firmware dimension.
    pub fn key(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "BIOS",
            Firmware::Uefi => "UEFI",
        })
    }
}

/// Which firmwares to boot with (`--firmware`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirmwareChoice {
    /// What the image can boot with: both for a polyglot image.
    #[default]
    Auto,
    /// BIOS only.
    Bios,
    /// UEFI only.
    Uefi,
    /// BIOS, then UEFI.
    Both,
    /// UEFI, then BIOS (what an AMI registered `uefi-preferred` promises, the way
    /// most instance types boot it first).
    UefiThenBios,
}

impl std::str::FromStr for FirmwareChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FirmwareChoice::Auto),
            "bios" => Ok(FirmwareChoice::Bios),
            "uefi" => Ok(FirmwareChoice::Uefi),
            "both" => Ok(FirmwareChoice::Both),
            _ => Err(format!(
                "unknown firmware `{s}` (one of: auto, bios, uefi, both)"
            )),
        }
    }
}

/// The partitioning scheme found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionTable {
    /// GPT (behind a protective MBR).
    Gpt,
    /// MBR partitions.
    Mbr,
    /// Neither.
    None,
}

/// What an image's first sectors say about how it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BootPaths {
    /// The partition table.
    pub table: PartitionTable,
    /// The MBR holds boot code (a BIOS can start it).
    pub bios: bool,
    /// There is an EFI System Partition (a UEFI firmware can find a loader).
    pub esp: bool,
}

/// Bytes of the disk read to find the partition tables.
pub const HEAD_BYTES: usize = 1 << 20;

const ESP_GUID: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Read the boot paths from the first bytes of a disk (at least the MBR; the GPT
/// entries when they are within `head`).
pub fn inspect(head: &[u8]) -> BootPaths {
    let none = BootPaths {
        table: PartitionTable::None,
        bios: false,
        esp: false,
    };
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return none;
    }
    // Boot code: anything in the MBR's code area (bytes 0-439).
    let bios = head[..440].iter().any(|&b| b != 0);
    let parts: Vec<&[u8]> = (0..4).map(|i| &head[446 + 16 * i..462 + 16 * i]).collect();
    let protective = parts.iter().any(|p| p[4] == 0xee);
    if protective && head.len() >= 1024 && &head[512..520] == b"EFI PART" {
        let hdr = &head[512..1024];
        let entries_lba = le64(hdr, 72);
        let count = le32(hdr, 80) as usize;
        let size = le32(hdr, 84) as usize;
        let mut esp = false;
        if (128..=4096).contains(&size) && count <= 4096 {
            let start = entries_lba.saturating_mul(512) as usize;
            for i in 0..count {
                let at = start + i * size;
                let Some(entry) = head.get(at..at + 16) else {
                    break;
                };
                if entry == ESP_GUID {
                    esp = true;
                }
            }
        }
        return BootPaths {
            table: PartitionTable::Gpt,
            bios,
            esp,
        };
    }
    let used = parts.iter().any(|p| p[4] != 0);
    BootPaths {
        table: if used {
            PartitionTable::Mbr
        } else {
            PartitionTable::None
        },
        bios,
        esp: parts.iter().any(|p| p[4] == 0xef),
    }
}

/// The first `len` bytes of the disk an image holds (converted by `qemu-img dd` when
/// it is not raw; the image itself is only read).
pub fn read_head(path: &Path, format: Format, len: usize, scratch: &Path) -> io::Result<Vec<u8>> {
    if format == Format::Raw {
        let f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match f.read_at(&mut buf[done..], done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        return Ok(buf);
    }
    let out = scratch.join("head.raw");
    let res = Command::new("qemu-img")
        .args(["dd", "-f", format.qemu_name(), "-O", "raw", "bs=512"])
        .arg(format!("count={}", len.div_ceil(512)))
        .arg(format!("if={}", path.display()))
        .arg(format!("of={}", out.display()))
        .output()?;
    if !res.status.success() {
        return Err(io::Error::other(format!(
            "qemu-img dd: {}",
            String::from_utf8_lossy(&res.stderr).trim()
        )));
    }
    let data = std::fs::read(&out)?;
    let _ = std::fs::remove_file(&out);
    Ok(data)
}

/// The firmwares to boot with, and a warning when one was asked for that the image
/// shows no sign of supporting.
pub fn choose(
    choice: FirmwareChoice,
    paths: &BootPaths,
    arch: Arch,
) -> Result<(Vec<Firmware>, Vec<String>), String> {
    if arch == Arch::Arm64 {
        return match choice {
            FirmwareChoice::Bios | FirmwareChoice::Both | FirmwareChoice::UefiThenBios => {
                Err("arm64 images boot by UEFI only: --firmware bios is not possible".into())
            }
            _ => Ok((
                vec![Firmware::Uefi],
                if paths.esp {
                    vec![]
                } else {
                    vec![
                        "the image has no EFI System Partition: UEFI will find nothing to boot"
                            .into(),
                    ]
                },
            )),
        };
    }
    let wanted = match choice {
        FirmwareChoice::Auto => match (paths.bios, paths.esp) {
            (true, true) => vec![Firmware::Bios, Firmware::Uefi],
            (true, false) => vec![Firmware::Bios],
            (false, true) => vec![Firmware::Uefi],
            (false, false) => {
                return Err(
                    "the image shows no way to boot: no boot code in its MBR and no EFI System \
                     Partition (--firmware bios|uefi to try anyway)"
                        .into(),
                );
            }
        },
        FirmwareChoice::Bios => vec![Firmware::Bios],
        FirmwareChoice::Uefi => vec![Firmware::Uefi],
        FirmwareChoice::Both => vec![Firmware::Bios, Firmware::Uefi],
        FirmwareChoice::UefiThenBios => vec![Firmware::Uefi, Firmware::Bios],
    };
    let mut warnings = Vec::new();
    if wanted.contains(&Firmware::Bios) && !paths.bios {
        warnings.push("the image has no boot code in its MBR: a BIOS boot will not start".into());
    }
    if wanted.contains(&Firmware::Uefi) && !paths.esp {
        warnings
            .push("the image has no EFI System Partition: UEFI will find nothing to boot".into());
    }
    Ok((wanted, warnings))
}

/// A UEFI firmware: its code (read-only) and the template of its variable store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFiles {
    /// Code.
    pub code: PathBuf,
    /// Variable store template (copied for each boot).
    pub vars: PathBuf,
}

/// The UEFI firmware for `arch`: `EC2AMI_UEFI_CODE` / `EC2AMI_UEFI_VARS`, else the
/// distribution's OVMF (x86_64) or AAVMF (arm64).
pub fn uefi_files(arch: Arch) -> Result<UefiFiles, String> {
    if let (Some(c), Some(v)) = (
        std::env::var_os("EC2AMI_UEFI_CODE"),
        std::env::var_os("EC2AMI_UEFI_VARS"),
    ) {
        return Ok(UefiFiles {
            code: c.into(),
            vars: v.into(),
        });
    }
    let (candidates, hint): (&[(&str, &str)], &str) = match arch {
        Arch::X86_64 => (
            &[
                (
                    "/usr/share/OVMF/OVMF_CODE_4M.fd",
                    "/usr/share/OVMF/OVMF_VARS_4M.fd",
                ),
                (
                    "/usr/share/OVMF/OVMF_CODE.fd",
                    "/usr/share/OVMF/OVMF_VARS.fd",
                ),
                (
                    "/usr/share/edk2/ovmf/OVMF_CODE.fd",
                    "/usr/share/edk2/ovmf/OVMF_VARS.fd",
                ),
            ],
            "UEFI boots of x86_64 images need OVMF (Debian: apt-get install ovmf)",
        ),
        Arch::Arm64 => (
            &[
                (
                    "/usr/share/AAVMF/AAVMF_CODE.fd",
                    "/usr/share/AAVMF/AAVMF_VARS.fd",
                ),
                (
                    "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
                    "/usr/share/edk2/aarch64/vars-template-pflash.raw",
                ),
            ],
            "arm64 images boot with the AAVMF firmware (Debian: apt-get install qemu-efi-aarch64)",
        ),
    };
    candidates
        .iter()
        .find(|(c, v)| Path::new(c).is_file() && Path::new(v).is_file())
        .map(|(c, v)| UefiFiles {
            code: c.into(),
            vars: v.into(),
        })
        .ok_or_else(|| hint.to_string())
}

/// SeaBIOS, which QEMU loads by default: say so clearly when it is missing.
pub fn check_bios() -> Result<(), String> {
    let found = [
        "/usr/share/qemu/bios-256k.bin",
        "/usr/share/seabios/bios-256k.bin",
    ]
    .iter()
    .any(|p| Path::new(p).is_file());
    if found || std::env::var_os("EC2AMI_SKIP_BIOS_CHECK").is_some() {
        Ok(())
    } else {
        Err("BIOS boots need SeaBIOS (Debian: apt-get install seabios)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk head with a protective MBR and a GPT whose entries have these types.
    fn gpt(boot_code: bool, types: &[[u8; 16]]) -> Vec<u8> {
        let mut d = vec![0u8; 34 * 512];
        if boot_code {
            d[0] = 0xeb;
            d[1] = 0x63;
        }
        d[446 + 4] = 0xee;
        d[510] = 0x55;
        d[511] = 0xaa;
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            d[1024 + i * 128..1024 + i * 128 + 16].copy_from_slice(t);
        }
        d
    }

    const BIOS_BOOT: [u8; 16] = *b"Hah!IdontNeedEFI";
    const LINUX: [u8; 16] = [
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ];

    #[test]
    fn polyglot_bios_only_and_uefi_only_gpt() {
        let p = inspect(&gpt(true, &[BIOS_BOOT, ESP_GUID, LINUX]));
        assert_eq!(
            p,
            BootPaths {
                table: PartitionTable::Gpt,
                bios: true,
                esp: true
            }
        );
        let b = inspect(&gpt(true, &[BIOS_BOOT, [0; 16], LINUX]));
        assert!(b.bios && !b.esp);
        let u = inspect(&gpt(false, &[[0; 16], ESP_GUID, LINUX]));
        assert!(!u.bios && u.esp);
    }

    #[test]
    fn mbr_disks_and_garbage() {
        let mut d = vec![0u8; 512];
        d[0] = 0xfa;
        d[446 + 4] = 0x83;
        d[462 + 4] = 0xef;
        d[510] = 0x55;
        d[511] = 0xaa;
        assert_eq!(
            inspect(&d),
            BootPaths {
                table: PartitionTable::Mbr,
                bios: true,
                esp: true
            }
        );
        assert_eq!(inspect(&[0u8; 100]).table, PartitionTable::None);
        assert!(!inspect(&vec![0u8; 4096]).bios);
    }

    #[test]
    fn firmware_choice() {
        let both = BootPaths {
            table: PartitionTable::Gpt,
            bios: true,
            esp: true,
        };
        let bios_only = BootPaths { esp: false, ..both };
        let none = BootPaths {
            bios: false,
            esp: false,
            ..both
        };
        let x86 = Arch::X86_64;
        assert_eq!(
            choose(FirmwareChoice::Auto, &both, x86).unwrap().0,
            [Firmware::Bios, Firmware::Uefi]
        );
        assert_eq!(
            choose(FirmwareChoice::Auto, &bios_only, x86).unwrap().0,
            [Firmware::Bios]
        );
        let (fw, warn) = choose(FirmwareChoice::Both, &bios_only, x86).unwrap();
        assert_eq!(fw, [Firmware::Bios, Firmware::Uefi]);
        assert!(warn[0].contains("no EFI System Partition"), "{warn:?}");
        assert!(choose(FirmwareChoice::Auto, &none, x86).is_err());
        assert!(choose(FirmwareChoice::Bios, &both, Arch::Arm64).is_err());
        assert_eq!(
            choose(FirmwareChoice::Auto, &both, Arch::Arm64).unwrap().0,
            [Firmware::Uefi]
        );
    }
}
