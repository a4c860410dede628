//! The boot tests' disk images: real bootable Debian images built from the recipe in
//! `testkit/images/` by `scripts/build-test-images` (before the tests' loopback-only
//! namespace, since debootstrap needs the Debian mirror), cached under
//! `.cache/test-images/<recipe-hash>/`. The tests find them here, by the same hash, or
//! at `EC2AMI_TEST_IMAGES`; when they are missing the tests fail saying how to build
//! them.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The images of one recipe.
#[derive(Debug, Clone)]
pub struct TestImages {
    dir: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn files(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = format!("{rel}/{}", e.file_name().to_string_lossy());
        if e.file_type()?.is_dir() {
            files(&e.path(), &name, out)?;
        } else {
            out.push((name, e.path()));
        }
    }
    Ok(())
}

/// The recipe's hash, as `scripts/build-test-images` computes it: `sha256sum` of every
/// file (paths `./...`, sorted bytewise), hashed again; 16 hex digits.
pub fn recipe_hash(recipe: &Path) -> std::io::Result<String> {
    let mut all = Vec::new();
    files(recipe, ".", &mut all)?;
    all.sort();
    let mut listing = String::new();
    for (name, path) in all {
        let data = std::fs::read(path)?;
        listing.push_str(&format!("{}  {name}\n", hex(&Sha256::digest(data))));
    }
    Ok(hex(&Sha256::digest(listing.as_bytes()))[..16].to_string())
}

impl TestImages {
    /// The recipe directory.
    pub fn recipe() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("images")
    }

    /// Find the images of the current recipe, or say how to build them.
    pub fn find() -> Result<TestImages, String> {
        let hint = "build them with `scripts/build-test-images` (needs root and the network \
                    to deb.debian.org; scripts/test does it before the tests)";
        let dir = match std::env::var_os("EC2AMI_TEST_IMAGES") {
            Some(d) => PathBuf::from(d),
            None => {
                let hash = recipe_hash(&Self::recipe())
                    .map_err(|e| format!("cannot read the test image recipe: {e}"))?;
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../.cache/test-images")
                    .join(hash)
            }
        };
        if !dir.join("done").is_file() {
            return Err(format!(
                "the boot tests' images are not built ({} is missing): {hint}",
                dir.display()
            ));
        }
        Ok(TestImages { dir })
    }

    /// Boots by BIOS and by UEFI.
    pub fn polyglot(&self) -> PathBuf {
        self.dir.join("polyglot.raw")
    }

    /// No EFI System Partition.
    pub fn bios_only(&self) -> PathBuf {
        self.dir.join("bios-only.raw")
    }

    /// No BIOS boot code; qcow2.
    pub fn uefi_only(&self) -> PathBuf {
        self.dir.join("uefi-only.qcow2")
    }

    /// ssh.service masked.
    pub fn no_sshd(&self) -> PathBuf {
        self.dir.join("no-sshd.raw")
    }

    /// Booted without its initramfs: the kernel panics.
    pub fn panic(&self) -> PathBuf {
        self.dir.join("panic.raw")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_build_scripts() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-images");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("--print")
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        let hash = recipe_hash(&TestImages::recipe()).unwrap();
        assert!(printed.trim().ends_with(&hash), "{printed} vs {hash}");
    }
}
