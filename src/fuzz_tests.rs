//! Property tests of the parsers that read untrusted bytes: image headers, release
//! files, ec2-boot-bench output, bsdec2-image-upload key files, user data, and the
//! command-line validators. Whatever the bytes, they never panic and their errors are
//! one line without control characters. Inputs are generated from a seeded generator
//! (structured pieces of each format mixed with random bytes); `EC2AMI_FUZZ_CASES`
//! sets the number of cases per parser (default 300), `EC2AMI_FUZZ_SEED` the seed
//! (SECURITY.md has the time-boxed run's figures).

use std::path::Path;

use crate::image::Format;

fn cases() -> usize {
    std::env::var("EC2AMI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn rng() -> fastrand::Rng {
    let seed = std::env::var("EC2AMI_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("EC2AMI_FUZZ_SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

/// An error message as ec2ami shows it: one line, no raw control character.
fn assert_clean(what: &str, input: &dyn std::fmt::Debug, message: &str) {
    assert!(
        !message.chars().any(char::is_control),
        "{what}: a control character or line break in {message:?}, from {input:?}"
    );
}

fn bytes(r: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    let n = r.usize(0..=max);
    (0..n).map(|_| r.u8(..)).collect()
}

/// Printable ASCII with, now and then, a control character or a multi-byte one.
fn text(r: &mut fastrand::Rng, max: usize) -> String {
    let n = r.usize(0..=max);
    (0..n)
        .map(|_| match r.u8(0..20) {
            0 => ['\u{1b}', '\u{7}', '\0', '\r', '\t', '\u{85}'][r.usize(0..6)],
            1 => ['é', '→', '𝄞', '\u{202e}'][r.usize(0..4)],
            _ => r.u8(0x20..0x7f) as char,
        })
        .collect()
}

fn pick<'a>(r: &mut fastrand::Rng, items: &[&'a str]) -> &'a str {
    items[r.usize(0..items.len())]
}

#[test]
fn image_headers_never_panic() {
    let mut r = rng();
    let magics: [&[u8]; 8] = [
        b"QFI\xfb\0\0\0\x03",
        b"QFI\xfb\0\0\0\x02",
        b"KDMV",
        b"COWD",
        b"# Disk DescriptorFile\n",
        b"vhdxfile",
        b"conectix",
        b"",
    ];
    let formats = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
    ];
    for _ in 0..cases() {
        let mut head = magics[r.usize(0..magics.len())].to_vec();
        head.extend(bytes(&mut r, 4096));
        // Plant plausible header fields (offsets and lengths) at random places.
        for _ in 0..r.usize(0..6) {
            if head.len() >= 8 {
                let at = r.usize(0..head.len() - 8);
                let v: u64 =
                    [0, 1, 8, 72, 512, u32::MAX as u64, u64::MAX, r.u64(..)][r.usize(0..8)];
                head[at..at + 8].copy_from_slice(&v.to_be_bytes());
            }
        }
        for format in formats {
            for reference in crate::image::inspect::header_references(format, &head) {
                assert_clean("reference", &head, &reference.to_string());
            }
        }
        let f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &f, &head).unwrap();
        let _ = crate::image::detect_format(&f, head.len() as u64);
    }
}

#[test]
fn vmdk_descriptors_never_panic() {
    let mut r = rng();
    for _ in 0..cases() {
        let mut lines = vec!["# Disk DescriptorFile".to_string()];
        for _ in 0..r.usize(0..20) {
            lines.push(match r.u8(0..5) {
                0 => format!(
                    "{} {} {} \"{}\"{}",
                    pick(&mut r, &["RW", "RDONLY", "NOACCESS", "rw", ""]),
                    r.u64(0..1 << 40),
                    pick(
                        &mut r,
                        &["FLAT", "SPARSE", "VMFS", "ZERO", "VMFSSPARSE", "x"]
                    ),
                    text(&mut r, 40).replace('"', ""),
                    if r.bool() {
                        format!(" {}", r.u32(..))
                    } else {
                        String::new()
                    }
                ),
                1 => format!("parentFileNameHint=\"{}\"", text(&mut r, 40)),
                2 => format!("createType=\"{}\"", text(&mut r, 20)),
                _ => text(&mut r, 60),
            });
        }
        let desc = lines.join("\n");
        for reference in crate::image::inspect::header_references(Format::Vmdk, desc.as_bytes()) {
            assert_clean("reference", &desc, &reference.to_string());
        }
    }
}

#[test]
fn qemu_img_info_never_panics() {
    let mut r = rng();
    for _ in 0..cases() {
        let name = text(&mut r, 30);
        let v = serde_json::json!({
            "virtual-size": r.u64(..),
            "format": pick(&mut r, &["qcow2", "vmdk", "raw", ""]),
            "backing-filename": if r.bool() { serde_json::json!(name) } else { serde_json::Value::Null },
            "format-specific": {
                "type": pick(&mut r, &["qcow2", "vmdk"]),
                "data": {
                    "data-file": if r.bool() { serde_json::json!(name) } else { serde_json::json!(r.u8(..)) },
                    "extents": [{ "filename": name, "format": text(&mut r, 8) }]
                }
            }
        });
        for reference in crate::image::inspect::info_references(&v) {
            assert_clean("reference", &v, &reference.to_string());
        }
    }
}

#[test]
fn release_files_never_panic() {
    let mut r = rng();
    let keys = [
        "path",
        "name",
        "arch",
        "regions",
        "public",
        "deprecate_at",
        "deprecate_in",
        "boot_mode",
        "ssm",
        "tags",
        "protect",
        "allow_paths_outside",
        "copy_completion",
        "best_effort",
    ];
    for _ in 0..cases() {
        let mut lines = Vec::new();
        for _ in 0..r.usize(0..24) {
            lines.push(match r.u8(0..6) {
                0 => "[[image]]".to_string(),
                1 => pick(&mut r, &["[defaults]", "[announce]", "[tags]", "[ssm]"]).to_string(),
                2 => text(&mut r, 40),
                _ => {
                    let value = match r.u8(0..8) {
                        0 => format!("\"{}\"", text(&mut r, 30).replace(['"', '\\'], "")),
                        1 => r.i64(..).to_string(),
                        2 => "true".into(),
                        3 => "[\"us-east-1\", \"mars\"]".into(),
                        4 => "\"../../etc/passwd\"".into(),
                        5 => "\"2001-01-01\"".into(),
                        6 => "{ a = 1 }".into(),
                        _ => "\"x-{date}\"".into(),
                    };
                    format!("{} = {value}", pick(&mut r, &keys))
                }
            });
        }
        let text = lines.join("\n");
        let path = Path::new("/nonexistent/release.toml");
        match crate::publish::ReleaseFile::parse(path, &text) {
            Err(e) => assert_clean("release parse", &text, &e.to_string()),
            Ok(f) => {
                if let Err(e) = f.resolve("20261124", false) {
                    assert_clean("release resolve", &text, &e.to_string());
                }
            }
        }
    }
}

#[test]
fn boot_bench_output_never_panics() {
    let mut r = rng();
    let labels = [
        "RunInstances API call took",
        "Moving from pending to running took",
        "Moving from running to port closed took",
        "Moving from port closed to port open took",
    ];
    for _ in 0..cases() {
        let mut lines = Vec::new();
        for i in 0..r.usize(0..30) {
            lines.push(if r.u8(0..5) == 0 {
                text(&mut r, 50)
            } else {
                let label = if r.u8(0..4) == 0 {
                    pick(&mut r, &labels)
                } else {
                    labels[i % 4]
                };
                let number = match r.u8(0..6) {
                    0 => "NaN".to_string(),
                    1 => "inf".to_string(),
                    2 => "1e308".to_string(),
                    3 => text(&mut r, 12),
                    _ => format!("{:.6}", r.f64() * 200.0 - 20.0),
                };
                format!("{label}: {number} s")
            });
        }
        let text = lines.join("\n");
        if let Err(e) = crate::history::import::parse(&text) {
            let m = e.to_string();
            assert_clean("ec2-boot-bench parse", &text, &m);
            assert!(!m.contains("line 0"), "{m}");
        }
    }
}

#[test]
fn key_files_never_panic_nor_show_the_secret() {
    let mut r = rng();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("aws.key");
    for _ in 0..cases() {
        let secret = format!("SeCrEt{}", r.u64(..));
        let data: Vec<u8> = if r.u8(0..4) == 0 {
            bytes(&mut r, 300)
        } else {
            let mut lines = Vec::new();
            for _ in 0..r.usize(0..5) {
                lines.push(match r.u8(0..5) {
                    0 => format!("ACCESS_KEY_ID={}", text(&mut r, 20)),
                    1 => format!("ACCESS_KEY_SECRET={secret}{}", text(&mut r, 4)),
                    2 => format!("ACCESS_KEY_SECRET={secret}"),
                    3 => format!("{}={secret}", text(&mut r, 8)),
                    _ => text(&mut r, 30),
                });
            }
            let sep = pick(&mut r, &["\n", "\r\n", "\r"]);
            lines.join(sep).into_bytes()
        };
        std::fs::write(&p, &data).unwrap();
        match crate::publish::compat::read_key_file(&p) {
            Err(e) => {
                let m = e.to_string();
                assert_clean("key file", &String::from_utf8_lossy(&data), &m);
                assert!(!m.contains(&secret), "the secret in {m}");
            }
            Ok(k) => assert!(!format!("{k:?}").contains(&secret), "the secret in Debug"),
        }
    }
}

#[test]
fn user_data_checks_never_panic() {
    let mut r = rng();
    for _ in 0..cases() {
        let data = if r.bool() {
            bytes(&mut r, 2048)
        } else {
            let head = pick(
                &mut r,
                &[
                    "#!/bin/sh",
                    "#cloud-config",
                    ">>/etc/rc.conf",
                    "/etc/rc.conf:",
                    "\u{1f}\u{8b}",
                ],
            );
            format!("{head}\n{}", text(&mut r, 300).replace('\u{1b}', "\n")).into_bytes()
        };
        let report = crate::userdata::check(&data, None);
        for f in report.errors.iter().chain(&report.warnings) {
            assert_clean(
                "user-data finding",
                &String::from_utf8_lossy(&data),
                &f.to_string(),
            );
        }
    }
}

#[test]
fn validators_never_panic() {
    let mut r = rng();
    for _ in 0..cases() {
        let s = match r.u8(0..4) {
            0 => format!("ami-{}", text(&mut r, 20)),
            1 => format!("snap-{}", text(&mut r, 20)),
            2 => format!(
                "{}-{}-{}",
                text(&mut r, 3),
                text(&mut r, 8),
                text(&mut r, 3)
            ),
            _ => text(&mut r, 40),
        };
        for result in [
            crate::validate_input::ami_id(&s),
            crate::validate_input::snapshot_id(&s),
            crate::validate_input::region(&s),
            crate::validate_input::region_or_all(&s),
        ] {
            if let Err(e) = result {
                assert_clean("validator", &s, &e);
            }
        }
        if let Err(e) = crate::validate_input::user_tag_key(&s) {
            assert_clean("tag key", &s, &e);
        }
        if let Err(e) = crate::params::check_name(&s, false) {
            assert_clean("parameter name", &s, &e);
        }
        let _ = crate::units::parse_duration(&s);
        let _ = crate::units::parse_date(&s);
    }
}
