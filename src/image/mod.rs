//! Disk images in: open and check a raw image or block device, detect other formats by
//! their magic and convert them to a temporary sparse raw file with `qemu-img`.

pub(crate) mod extents;
pub(crate) mod inspect;
pub(crate) mod partitions;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use extents::{BlockPlan, Extent, Extents, PlannedBlock};
pub use inspect::{ImageOptions, Reference};

/// Largest EBS snapshot: 64 TiB.
pub const MAX_IMAGE_SIZE: u64 = 64 << 40;

/// Disk image formats recognised by their magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw blocks, used as is.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware (sparse extent or descriptor).
    Vmdk,
    /// Microsoft Virtual Hard Disk (fixed or dynamic).
    Vhd,
    /// Microsoft VHDX.
    Vhdx,
}

impl Format {
    /// The name `qemu-img -f` takes.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "VMDK",
            Format::Vhd => "VHD",
            Format::Vhdx => "VHDX",
        })
    }
}

/// Why an image cannot be used. Every one of these is found before any AWS call.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Missing or unreadable.
    #[error("cannot open {shown}: {source}", shown = crate::image::shown_path(path))]
    Open {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A directory, socket, FIFO...
    #[error("{shown} is not a regular file or block device", shown = crate::image::shown_path(path))]
    NotAFile {
        /// The image path.
        path: PathBuf,
    },
    /// Zero bytes.
    #[error("{shown} is empty: there is nothing to upload", shown = crate::image::shown_path(path))]
    Empty {
        /// The image path.
        path: PathBuf,
    },
    /// Larger than EBS allows.
    #[error("{shown} is {size} bytes, more than the 64 TiB EBS snapshot limit", shown = crate::image::shown_path(path))]
    TooLarge {
        /// The image path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not raw and qemu-img is not there to convert it.
    #[error(
        "{shown} is a {format} image and qemu-img is not installed to convert it; install \
         qemu-utils, or convert it yourself: qemu-img convert -f {qemu} -O raw {shown} image.raw", shown = crate::image::shown_path(path))]
    NeedsConversion {
        /// The image path.
        path: PathBuf,
        /// Its format.
        format: Format,
        /// The qemu-img name of the format.
        qemu: &'static str,
    },
    /// qemu-img failed.
    #[error("converting {shown} ({format}) to raw with qemu-img failed: {detail}", shown = crate::image::shown_path(path))]
    Conversion {
        /// The image path.
        path: PathBuf,
        /// Its format.
        format: Format,
        /// What qemu-img said.
        detail: String,
    },
    /// The image refers to another file, which a conversion would read into the snapshot.
    #[error(
        "{shown} is a {format} image with a {found}: its content would be read into the \
         snapshot; refused (pass --allow-backing-file if you mean to publish it)", shown = crate::image::shown_path(path))]
    Reference {
        /// The image path.
        path: PathBuf,
        /// Its format.
        format: Format,
        /// The first reference found.
        found: Reference,
    },
    /// qemu-img finds the image truncated or corrupt.
    #[error("{shown} is a damaged {format} image: {detail}", shown = crate::image::shown_path(path))]
    Corrupt {
        /// The image path.
        path: PathBuf,
        /// Its format.
        format: Format,
        /// What qemu-img found.
        detail: String,
    },
    /// The converted raw file is not the size the image declares.
    #[error(
        "converting {shown} ({format}) gave {got} bytes where the image declares {want}: \
         the image is truncated or corrupt", shown = crate::image::shown_path(path))]
    ShortConversion {
        /// The image path.
        path: PathBuf,
        /// Its format.
        format: Format,
        /// The declared virtual size.
        want: u64,
        /// The converted size.
        got: u64,
    },
    /// The file changed while it was read: the snapshot would match neither version.
    #[error(
        "{shown} changed while it was being uploaded ({what}): the snapshot would match \
         neither version; upload it again once nothing writes to it", shown = crate::image::shown_path(path))]
    Changed {
        /// The image path.
        path: PathBuf,
        /// What differs (size, modification time, file).
        what: String,
    },
    /// Finding the data extents (SEEK_DATA/SEEK_HOLE) failed.
    #[error("cannot map the data extents of {shown}: {source}", shown = crate::image::shown_path(path))]
    Extents {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading failed.
    #[error("reading {shown} at offset {offset}: {source}", shown = crate::image::shown_path(path))]
    Read {
        /// The image path.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// The OS error.
        source: io::Error,
    },
}

/// An opened, checked disk image ready to be read block by block.
#[derive(Debug)]
pub struct DiskImage {
    path: PathBuf,
    file: File,
    size: u64,
    format: Format,
    block_device: bool,
    identity: FileIdentity,
    bytes_read: AtomicU64,
}

impl DiskImage {
    /// Open and check `path`, converting non-raw formats to a temporary raw file
    /// (in `$TMPDIR`) with qemu-img.
    pub fn open(path: &Path) -> Result<Arc<DiskImage>, ImageError> {
        Self::open_with(path, ImageOptions::default())
    }

    /// [`DiskImage::open`] with what the operator allows (backing files...).
    pub fn open_with(path: &Path, opts: ImageOptions) -> Result<Arc<DiskImage>, ImageError> {
        let (file, size, block_device) = open_checked(path)?;
        let identity = FileIdentity::of(path)?;
        let format = detect_format(&file, size).map_err(|source| ImageError::Read {
            path: path.to_owned(),
            offset: 0,
            source,
        })?;
        if format == Format::Raw {
            return Ok(Arc::new(DiskImage {
                path: path.to_owned(),
                file,
                size,
                format,
                block_device,
                identity,
                bytes_read: AtomicU64::new(0),
            }));
        }
        drop(file);
        let (file, size) = convert_to_raw(path, format, opts)?;
        let image = DiskImage {
            path: path.to_owned(),
            file,
            size,
            format,
            block_device: false,
            identity,
            bytes_read: AtomicU64::new(0),
        };
        // The source was read by the conversion: it must not have changed meanwhile.
        image.check_unchanged()?;
        Ok(Arc::new(image))
    }

    /// What identifies the file as it was opened (size, modification time, inode).
    pub fn identity(&self) -> &FileIdentity {
        &self.identity
    }

    /// Fail with [`ImageError::Changed`] when the file is no longer the one opened.
    pub fn check_unchanged(&self) -> Result<(), ImageError> {
        if self.block_device {
            return Ok(());
        }
        let now = FileIdentity::of(&self.path)?;
        match self.identity.difference(&now) {
            None => Ok(()),
            Some(what) => Err(ImageError::Changed {
                path: self.path.clone(),
                what,
            }),
        }
    }

    /// Check `path` as [`DiskImage::open`] does, without converting it: what a plan or
    /// a pre-flight check needs. Returns the file's size and format.
    pub fn check(path: &Path) -> Result<(u64, Format), ImageError> {
        Self::check_with(path, ImageOptions::default())
    }

    /// The size and format of `path`, checked as a file but not inspected (for a plan
    /// of images already checked).
    pub fn probe(path: &Path) -> Result<(u64, Format), ImageError> {
        let (file, size, _) = open_checked(path)?;
        let format = detect_format(&file, size).map_err(|source| ImageError::Read {
            path: path.to_owned(),
            offset: 0,
            source,
        })?;
        Ok((size, format))
    }

    /// [`DiskImage::check`] with what the operator allows. A non-raw image is
    /// inspected: references refused unless allowed, `qemu-img check` run.
    pub fn check_with(path: &Path, opts: ImageOptions) -> Result<(u64, Format), ImageError> {
        let (file, size, _) = open_checked(path)?;
        let format = detect_format(&file, size).map_err(|source| ImageError::Read {
            path: path.to_owned(),
            offset: 0,
            source,
        })?;
        if format != Format::Raw {
            let Some(qemu) = qemu_img() else {
                return Err(ImageError::NeedsConversion {
                    path: path.to_owned(),
                    format,
                    qemu: format.qemu_name(),
                });
            };
            inspect::inspect(path, format, &qemu, opts)?;
        }
        Ok((size, format))
    }

    /// The path given by the user.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes of the raw image.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The format it came in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes read so far (holes are never read; tests check it).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Data extents (the whole image for a block device).
    pub fn extents(&self) -> Extents<'_> {
        Extents::new(&self.file, self.size, !self.block_device)
    }

    /// The blocks to process for a volume of `total_blocks` blocks of `block_size` bytes.
    pub fn plan(
        &self,
        block_size: u64,
        total_blocks: u64,
        every_block: bool,
    ) -> BlockPlan<Extents<'_>> {
        BlockPlan::new(self.extents(), block_size, total_blocks, every_block)
    }

    /// Fill `buf` from `offset`: bytes past the end of the image read as zeros.
    pub fn read_block(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let avail = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, tail) = buf.split_at_mut(avail);
        self.file
            .read_exact_at(data, offset)
            .map_err(|source| ImageError::Read {
                path: self.path.clone(),
                offset,
                source,
            })?;
        tail.fill(0);
        self.bytes_read.fetch_add(avail as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn open_checked(path: &Path) -> Result<(File, u64, bool), ImageError> {
    let open_err = |source| ImageError::Open {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(open_err)?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(ImageError::NotAFile {
            path: path.to_owned(),
        });
    }
    let file = OpenOptions::new().read(true).open(path).map_err(open_err)?;
    let size = if ft.is_block_device() {
        use std::io::Seek;
        (&file).seek(io::SeekFrom::End(0)).map_err(open_err)?
    } else {
        meta.len()
    };
    if size == 0 {
        return Err(ImageError::Empty {
            path: path.to_owned(),
        });
    }
    if size > MAX_IMAGE_SIZE {
        return Err(ImageError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    Ok((file, size, ft.is_block_device()))
}

/// Detect the image format from its first and last 512 bytes.
pub fn detect_format(file: &File, size: u64) -> io::Result<Format> {
    let mut head = [0u8; 512];
    let n = read_up_to(file, &mut head, 0)?;
    let head = &head[..n];
    if head.starts_with(b"QFI\xfb") {
        return Ok(Format::Qcow2);
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"COWD") {
        return Ok(Format::Vmdk);
    }
    if head.starts_with(b"# Disk DescriptorFile") {
        return Ok(Format::Vmdk);
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(Format::Vhdx);
    }
    // Dynamic VHDs start with a copy of the footer; fixed ones only end with it.
    if head.starts_with(b"conectix") {
        return Ok(Format::Vhd);
    }
    if size >= 512 {
        let mut tail = [0u8; 512];
        let n = read_up_to(file, &mut tail, size - 512)?;
        if n == 512 && tail.starts_with(b"conectix") {
            return Ok(Format::Vhd);
        }
    }
    Ok(Format::Raw)
}

fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The qemu-img to use: `EC2AMI_QEMU_IMG` or `qemu-img` on the PATH.
fn qemu_img() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EC2AMI_QEMU_IMG") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-img"))
        .find(|p| p.is_file())
}

/// What identifies a file's content cheaply: size, modification time and inode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileIdentity {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Device and inode numbers.
    pub dev_ino: (u64, u64),
}

impl FileIdentity {
    /// The identity of the file at `path` now.
    pub fn of(path: &Path) -> Result<FileIdentity, ImageError> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|source| ImageError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(FileIdentity {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            dev_ino: (m.dev(), m.ino()),
        })
    }

    /// What differs from `other`, in words, or `None`.
    pub fn difference(&self, other: &FileIdentity) -> Option<String> {
        if self.dev_ino != other.dev_ino {
            Some("it was replaced by another file".into())
        } else if self.size != other.size {
            Some(format!("size {} then {} bytes", self.size, other.size))
        } else if self.mtime_ns != other.mtime_ns {
            Some("its modification time changed".into())
        } else {
            None
        }
    }
}

/// `s` with control characters escaped (`\n`, `\u{1b}`), for printing names and paths.
pub fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A path as messages show it: control characters escaped (a name holding a terminal
/// escape or a line break must not reach the terminal as such).
pub fn shown_path(path: &Path) -> String {
    escaped(&path.to_string_lossy())
}

/// The qemu-img conversions running now (their process ids).
fn running_conversions() -> std::sync::MutexGuard<'static, Vec<u32>> {
    static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stop every running qemu-img conversion (on Ctrl-C or SIGTERM): each fails as
/// interrupted and its temporary raw file goes with it.
pub fn stop_conversions() {
    for pid in running_conversions().iter() {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child, not yet
        // reaped (it is removed from the list once waited for).
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

fn convert_to_raw(
    path: &Path,
    format: Format,
    opts: ImageOptions,
) -> Result<(File, u64), ImageError> {
    let Some(qemu) = qemu_img() else {
        return Err(ImageError::NeedsConversion {
            path: path.to_owned(),
            format,
            qemu: format.qemu_name(),
        });
    };
    let conv_err = |detail: String| ImageError::Conversion {
        path: path.to_owned(),
        format,
        detail,
    };
    // References refused (unless allowed) and qemu-img check passed, before any copy.
    let inspection = inspect::inspect(path, format, &qemu, opts)?;
    let size = inspection.virtual_size;
    if size == 0 {
        return Err(ImageError::Empty {
            path: path.to_owned(),
        });
    }
    if size > MAX_IMAGE_SIZE {
        return Err(ImageError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    // An unnamed temporary file (in $TMPDIR): nothing is left on disk however ec2ami
    // ends. qemu-img writes it through /dev/fd/3; it is already the right (sparse) size
    // and all zeros, so qemu-img writes only data.
    let tmp = tempfile::tempfile()
        .map_err(|e| conv_err(format!("cannot create a temporary file: {e}")))?;
    tmp.set_len(size)
        .map_err(|e| conv_err(format!("cannot size the temporary file: {e}")))?;
    tracing::info!(
        "converting {} ({format}) to a temporary raw file with qemu-img",
        path.display()
    );
    // The source is a json: specification: a plain file (never a protocol), its format
    // given, and no backing file opened unless allowed.
    let spec = inspect::qemu_spec(path, format, opts.allow_backing_file);
    let mut cmd = Command::new(&qemu);
    cmd.args(["convert", "-q", "-n", "--target-is-zero", "-O", "raw"])
        .arg(&spec)
        .arg("/dev/fd/3")
        .stdin(std::process::Stdio::null());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tmp);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // qemu-img dies with ec2ami (SIGKILL when the spawning thread ends).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| conv_err(format!("cannot run {}: {e}", qemu.display())))?;
    let pid = child.id();
    running_conversions().push(pid);
    let out = child.wait_with_output();
    running_conversions().retain(|p| *p != pid);
    let out = out.map_err(|e| conv_err(format!("waiting for qemu-img: {e}")))?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        if out.status.signal() == Some(libc::SIGKILL) {
            return Err(conv_err("qemu-img was stopped (interrupted)".into()));
        }
        return Err(conv_err(inspect::qemu_message(&out.stderr, &spec, path)));
    }
    let got = tmp
        .metadata()
        .map_err(|e| conv_err(format!("cannot read the converted file: {e}")))?
        .len();
    if got != size {
        return Err(ImageError::ShortConversion {
            path: path.to_owned(),
            format,
            want: size,
            got,
        });
    }
    Ok((tmp, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn detects_formats_by_magic() {
        let cases: &[(&[u8], Format)] = &[
            (b"QFI\xfb\0\0\0\x03", Format::Qcow2),
            (b"KDMV\x01\0\0\0", Format::Vmdk),
            (b"# Disk DescriptorFile\n", Format::Vmdk),
            (b"vhdxfile", Format::Vhdx),
            (b"conectix", Format::Vhd),
            (b"\xebX\x90FreeBSD", Format::Raw),
        ];
        for (bytes, want) in cases {
            let mut data = bytes.to_vec();
            data.resize(4096, 0);
            let f = file_with(&data);
            let got = detect_format(f.as_file(), 4096).unwrap();
            assert_eq!(got, *want, "{bytes:?}");
        }
    }

    #[test]
    fn fixed_vhd_is_found_by_its_footer() {
        let mut data = vec![0u8; 8192];
        data[8192 - 512..8192 - 504].copy_from_slice(b"conectix");
        let f = file_with(&data);
        assert_eq!(detect_format(f.as_file(), 8192).unwrap(), Format::Vhd);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            DiskImage::open(dir.path()).unwrap_err(),
            ImageError::NotAFile { .. }
        ));
        let empty = file_with(b"");
        assert!(matches!(
            DiskImage::open(empty.path()).unwrap_err(),
            ImageError::Empty { .. }
        ));
        assert!(matches!(
            DiskImage::open(&dir.path().join("missing")).unwrap_err(),
            ImageError::Open { .. }
        ));
        // ext4 caps files at 16 TiB; tmpfs takes a sparse 64 TiB + 1 file.
        let huge = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        huge.as_file().set_len(MAX_IMAGE_SIZE + 1).unwrap();
        let err = DiskImage::open(huge.path()).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn read_block_pads_past_the_end_and_counts() {
        let f = file_with(&[7u8; 1000]);
        let img = DiskImage::open(f.path()).unwrap();
        let mut buf = vec![9u8; 512];
        img.read_block(768, &mut buf).unwrap();
        assert!(buf[..232].iter().all(|&b| b == 7));
        assert!(buf[232..].iter().all(|&b| b == 0));
        assert_eq!(img.bytes_read(), 232);
    }
}
