//! KVM only when it really works. `/dev/kvm` can exist without real hardware
//! virtualisation underneath: a nested, emulating KVM (no vmx/svm CPU flags) on which
//! OVMF dies at once and Linux after minutes with "KVM internal error ... emulation
//! failure". So KVM is chosen when the guest's architecture is the host's, /dev/kvm
//! opens and answers KVM's API version, and (on x86_64) the CPU shows vmx or svm;
//! otherwise TCG, and "KVM internal error" on QEMU's stderr is a failure of the
//! accelerator, not of the image.

use serde::Serialize;

use crate::ami::Arch;

/// The accelerator a boot used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

impl Accel {
    /// The instance type the history files local boots under.
    pub fn instance_type(self) -> &'static str {
        match self {
            Accel::Kvm => "qemu-kvm",
            Accel::Tcg => "qemu-tcg",
        }
    }

    /// QEMU's name.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// What `--accel` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM when it works, else TCG (and TCG again if KVM fails mid-boot).
    #[default]
    Auto,
    /// KVM, whatever the checks say.
    Kvm,
    /// TCG.
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            _ => Err(format!(
                "unknown accelerator `{s}` (one of: auto, kvm, tcg)"
            )),
        }
    }
}

/// The accelerator chosen and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccelDecision {
    /// Which.
    pub accel: Accel,
    /// Why, in words.
    pub reason: String,
}

/// What the host offers, gathered by [`probe_host`] (pure input of [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `x86_64`, `aarch64`...
    pub arch: String,
    /// /dev/kvm opened read-write and answered KVM_GET_API_VERSION with 12; or why not.
    pub kvm: Result<(), String>,
    /// The `flags` of /proc/cpuinfo (x86).
    pub cpu_flags: String,
}

/// Look at this host.
pub fn probe_host() -> HostFacts {
    HostFacts {
        arch: std::env::consts::ARCH.to_string(),
        kvm: kvm_api(),
        cpu_flags: std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("flags"))
            .unwrap_or_default()
            .to_string(),
    }
}

fn kvm_api() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    // KVM_GET_API_VERSION = _IO(0xAE, 0x00); every KVM answers 12.
    // SAFETY: an argument-less ioctl on a file descriptor we own.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), 0xAE00, 0) };
    if v == 12 {
        Ok(())
    } else {
        Err(format!("/dev/kvm answers API version {v}, not 12"))
    }
}

/// Choose the accelerator for a guest of `guest` architecture.
pub fn decide(choice: AccelChoice, guest: Arch, host: &HostFacts) -> AccelDecision {
    let tcg = |reason: String| AccelDecision {
        accel: Accel::Tcg,
        reason,
    };
    match choice {
        AccelChoice::Tcg => return tcg("TCG, as asked (--accel tcg)".into()),
        AccelChoice::Kvm => {
            return AccelDecision {
                accel: Accel::Kvm,
                reason: "KVM, as asked (--accel kvm)".into(),
            };
        }
        AccelChoice::Auto => {}
    }
    let guest_arch = match guest {
        Arch::X86_64 => "x86_64",
        Arch::Arm64 => "aarch64",
    };
    if host.arch != guest_arch {
        return tcg(format!(
            "TCG: a {guest_arch} guest on a {} host is emulated",
            host.arch
        ));
    }
    if let Err(e) = &host.kvm {
        return tcg(format!("TCG: KVM is not available ({e})"));
    }
    if host.arch == "x86_64" {
        let flags: Vec<&str> = host.cpu_flags.split_whitespace().collect();
        if !flags.contains(&"vmx") && !flags.contains(&"svm") {
            return tcg(
                "TCG: /dev/kvm exists but the CPU shows no vmx/svm flags (a nested, emulating \
                 KVM, on which OVMF and Linux fail)"
                    .into(),
            );
        }
    }
    AccelDecision {
        accel: Accel::Kvm,
        reason: "KVM: /dev/kvm works and the CPU has hardware virtualisation".into(),
    }
}

/// Whether a line of QEMU's stderr says the accelerator failed (not the guest).
pub fn is_accel_failure(line: &str) -> bool {
    line.contains("KVM internal error")
        || line.contains("kvm run failed")
        || line.contains("KVM: entry failed")
        || line.contains("failed to initialize kvm")
        || line.contains("Could not access KVM kernel module")
        // A nested KVM that refuses the guest's CPU state (QEMU then aborts on an
        // assertion in its KVM code): `failed to set MSR 0x10a ...`, `.../kvm/kvm.c:3849:
        // kvm_buf_set_msrs: Assertion ... failed`.
        || (line.contains("failed to set MSR") && line.contains("qemu"))
        || line.contains("/kvm/kvm.c:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(kvm: bool, flags: &str) -> HostFacts {
        HostFacts {
            arch: "x86_64".into(),
            kvm: if kvm {
                Ok(())
            } else {
                Err("/dev/kvm: No such file or directory".into())
            },
            cpu_flags: format!("flags\t\t: fpu vme de pse {flags}"),
        }
    }

    #[test]
    fn kvm_only_when_it_really_works() {
        let d = decide(AccelChoice::Auto, Arch::X86_64, &host(true, "vmx sse"));
        assert_eq!(d.accel, Accel::Kvm);
        let d = decide(AccelChoice::Auto, Arch::X86_64, &host(true, "svm"));
        assert_eq!(d.accel, Accel::Kvm);
        // These machines: /dev/kvm, no vmx/svm.
        let d = decide(
            AccelChoice::Auto,
            Arch::X86_64,
            &host(true, "sse hypervisor"),
        );
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("no vmx/svm"), "{}", d.reason);
        let d = decide(AccelChoice::Auto, Arch::X86_64, &host(false, "vmx"));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("not available"));
        let d = decide(AccelChoice::Auto, Arch::Arm64, &host(true, "vmx"));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("emulated"));
        assert_eq!(
            decide(AccelChoice::Kvm, Arch::X86_64, &host(false, "")).accel,
            Accel::Kvm
        );
        assert_eq!(
            decide(AccelChoice::Tcg, Arch::X86_64, &host(true, "vmx")).accel,
            Accel::Tcg
        );
        let arm = HostFacts {
            arch: "aarch64".into(),
            kvm: Ok(()),
            cpu_flags: String::new(),
        };
        assert_eq!(
            decide(AccelChoice::Auto, Arch::Arm64, &arm).accel,
            Accel::Kvm
        );
    }

    #[test]
    fn accelerator_failures_on_stderr() {
        assert!(is_accel_failure(
            "KVM internal error. Suberror: 1\nextra data[0]: 0x0000000000000000"
        ));
        assert!(is_accel_failure("error: kvm run failed Bad address"));
        assert!(is_accel_failure(
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0xc000069"
        ));
        assert!(is_accel_failure(
            "qemu-system-x86_64: target/i386/kvm/kvm.c:3849: kvm_buf_set_msrs: Assertion \
             `ret == cpu->kvm_msr_buf->nmsrs' failed."
        ));
        assert!(!is_accel_failure(
            "qemu-system-x86_64: -drive file=x: Could not open 'x'"
        ));
        assert!(!is_accel_failure(
            "qemu-system-x86_64: terminating on signal 15"
        ));
        assert_eq!(Accel::Tcg.instance_type(), "qemu-tcg");
    }
}
