//! QEMU's command line for a boot check (pure, so it can be read and tested) and where
//! the QEMU binaries are.
//!
//! The guest gets: the image read-only (`snapshot=on`: writes go to a throw-away
//! overlay in the boot's temporary directory), a fresh copy of the UEFI variable store,
//! the serial console (and on x86 the firmware's debug port, where SeaBIOS talks) on
//! Unix sockets ec2ami listens on, and user networking only, isolated from the host
//! (`restrict=on`), placed at 169.254.169.0/24 so that 169.254.169.254:80 can be
//! forwarded to the local metadata service, with the guest's port 22 forwarded from
//! one 127.0.0.1 port. Only the disk is a boot device (`-boot strict=on`), so a
//! firmware with nothing to boot says so instead of trying the network.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::accel::Accel;
use super::firmware::{Firmware, UefiFiles};
use crate::ami::Arch;
use crate::image::Format;

/// The guest network (EC2's link-local metadata address must be inside it).
pub const GUEST_NET: &str = "169.254.169.0/24";
/// The guest's MAC address (what the metadata service reports).
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// Everything a QEMU command line needs.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    /// Guest architecture.
    pub arch: Arch,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// KVM or TCG.
    pub accel: Accel,
    /// The image (opened read-only).
    pub image: PathBuf,
    /// Its format.
    pub format: Format,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// The serial console's Unix socket (ec2ami listens).
    pub console: PathBuf,
    /// The firmware debug port's Unix socket (x86 only).
    pub firmware_log: Option<PathBuf>,
    /// UEFI code and this boot's copy of the variable store.
    pub uefi: Option<UefiFiles>,
    /// The program QEMU runs per guest connection to 169.254.169.254:80.
    pub metadata_relay: PathBuf,
    /// The 127.0.0.1 port forwarded to the guest's port 22.
    pub ssh_port: u16,
}

/// A path inside a QEMU option value: commas are doubled.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Whether QEMU's option parser takes `p` where it cannot be escaped (the `cmd:` of a
/// guest forward): no spaces, commas, quotes or control characters.
pub fn plain_path(p: &Path) -> bool {
    p.to_str().is_some_and(|s| {
        !s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || ",'\"\\".contains(c))
    })
}

/// The arguments (after the program name).
pub fn args(s: &QemuSpec) -> Vec<OsString> {
    let mut a: Vec<String> = vec![
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-name".into(),
        "ec2ami-boot".into(),
    ];
    let cpu = match s.accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    match s.arch {
        Arch::X86_64 => a.extend([
            "-machine".into(),
            format!("q35,accel={}", s.accel.qemu_name()),
        ]),
        Arch::Arm64 => a.extend([
            "-machine".into(),
            format!("virt,gic-version=max,accel={}", s.accel.qemu_name()),
        ]),
    }
    a.extend([
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        s.memory_mib.to_string(),
        "-smp".into(),
        s.cpus.to_string(),
        "-chardev".into(),
        format!("socket,id=console,path={}", opt_path(&s.console)),
        "-serial".into(),
        "chardev:console".into(),
    ]);
    if let Some(fw) = &s.firmware_log {
        a.extend([
            "-chardev".into(),
            format!("socket,id=fwlog,path={}", opt_path(fw)),
            "-device".into(),
            "isa-debugcon,iobase=0x402,chardev=fwlog".into(),
        ]);
    }
    if let (Firmware::Uefi, Some(u)) = (s.firmware, &s.uefi) {
        a.extend([
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                opt_path(&u.code)
            ),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", opt_path(&u.vars)),
        ]);
    }
    a.extend([
        "-boot".into(),
        "strict=on".into(),
        "-drive".into(),
        format!(
            "if=none,id=disk0,file={},format={},snapshot=on,cache=unsafe",
            opt_path(&s.image),
            s.format.qemu_name()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=disk0,bootindex=1".into(),
        "-netdev".into(),
        format!(
            "user,id=net0,restrict=on,net={GUEST_NET},host=169.254.169.1,dhcpstart=169.254.169.15,\
             guestfwd=tcp:169.254.169.254:80-cmd:{},hostfwd=tcp:127.0.0.1:{}-:22",
            s.metadata_relay.display(),
            s.ssh_port
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={GUEST_MAC},romfile="),
    ]);
    a.into_iter().map(OsString::from).collect()
}

/// The QEMU system emulator for `arch`, from the PATH.
pub fn binary(arch: Arch) -> Result<PathBuf, String> {
    let (name, pkg) = match arch {
        Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
        Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
    };
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.ok_or_else(|| match arch {
        Arch::X86_64 => format!(
            "{name} is not installed (Debian: apt-get install {pkg} ovmf seabios; on bookworm \
             take it from bookworm-backports if qemu-utils comes from there)"
        ),
        Arch::Arm64 => format!(
            "arm64 images boot with {name} and the AAVMF firmware, which are not installed \
             (Debian: apt-get install {pkg} qemu-efi-aarch64)"
        ),
    })
}

/// Whether QEMU (x86_64) is installed: `publish` pre-flights by default then.
pub fn installed() -> bool {
    binary(Arch::X86_64).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(firmware: Firmware) -> QemuSpec {
        QemuSpec {
            arch: Arch::X86_64,
            firmware,
            accel: Accel::Tcg,
            image: "/images/a,b.raw".into(),
            format: Format::Qcow2,
            memory_mib: 1024,
            cpus: 1,
            console: "/tmp/ec2ami-boot-x/console.sock".into(),
            firmware_log: Some("/tmp/ec2ami-boot-x/firmware.sock".into()),
            uefi: Some(UefiFiles {
                code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                vars: "/tmp/ec2ami-boot-x/vars.fd".into(),
            }),
            metadata_relay: "/tmp/ec2ami-boot-x/imds-relay".into(),
            ssh_port: 40022,
        }
    }

    fn joined(s: &QemuSpec) -> String {
        args(s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn uefi_command_line() {
        let line = joined(&spec(Firmware::Uefi));
        for want in [
            "-machine q35,accel=tcg -cpu max",
            "file=/images/a,,b.raw,format=qcow2,snapshot=on",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "unit=1,file=/tmp/ec2ami-boot-x/vars.fd",
            "restrict=on,net=169.254.169.0/24",
            "guestfwd=tcp:169.254.169.254:80-cmd:/tmp/ec2ami-boot-x/imds-relay",
            "hostfwd=tcp:127.0.0.1:40022-:22",
            "-boot strict=on",
            "romfile=",
            "-no-reboot",
            "isa-debugcon,iobase=0x402,chardev=fwlog",
        ] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
    }

    #[test]
    fn bios_has_no_pflash_and_kvm_uses_the_host_cpu() {
        let mut s = spec(Firmware::Bios);
        s.accel = Accel::Kvm;
        let line = joined(&s);
        assert!(!line.contains("pflash"), "{line}");
        assert!(line.contains("accel=kvm -cpu host"), "{line}");
    }

    #[test]
    fn arm64_uses_the_virt_machine() {
        let mut s = spec(Firmware::Uefi);
        s.arch = Arch::Arm64;
        s.firmware_log = None;
        let line = joined(&s);
        assert!(line.contains("virt,gic-version=max,accel=tcg"), "{line}");
        assert!(!line.contains("debugcon"));
    }

    #[test]
    fn paths_qemu_cannot_take() {
        assert!(plain_path(Path::new("/tmp/ec2ami-boot-abc/imds-relay")));
        assert!(!plain_path(Path::new("/tmp/my dir/imds-relay")));
        assert!(!plain_path(Path::new("/tmp/a,b/imds-relay")));
    }
}
