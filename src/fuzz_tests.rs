//! Property tests (proptest) of the parsers that read untrusted bytes: image headers,
//! release files, ec2-boot-bench output, bsdec2-image-upload key files, user data, and
//! the command-line validators. Whatever the bytes, they never panic and their errors
//! are one line without control characters (and a key file's secret never shows).
//! Inputs mix structured pieces of each format with arbitrary bytes and text; a failure
//! is shrunk to a small input and its seed kept under `proptest-regressions/`.
//! `PROPTEST_CASES` sets the number of cases per property (default 256); SECURITY.md
//! has the time-boxed run's figures.

use std::path::Path;

use proptest::prelude::*;

use crate::image::Format;

/// An error message as ec2ami shows it: one line, no raw control character.
fn assert_clean(what: &str, input: &dyn std::fmt::Debug, message: &str) {
    assert!(
        !message.chars().any(char::is_control),
        "{what}: a control character or line break in {message:?}, from {input:?}"
    );
}

/// Printable ASCII with, now and then, a control character or a multi-byte one.
fn text(max: usize) -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        18 => (0x20u8..0x7f).prop_map(char::from),
        1 => prop::sample::select(vec!['\u{1b}', '\u{7}', '\0', '\r', '\t', '\n', '\u{85}']),
        1 => prop::sample::select(vec!['é', '→', '𝄞', '\u{202e}']),
    ];
    prop::collection::vec(ch, 0..=max).prop_map(String::from_iter)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn one_of(items: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(items).prop_map(str::to_string)
}

/// A value that header parsers read as an offset or a length.
fn header_field() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![0u64, 1, 8, 72, 512, u32::MAX as u64, u64::MAX]),
        any::<u64>(),
    ]
}

const MAGICS: [&[u8]; 8] = [
    b"QFI\xfb\0\0\0\x03",
    b"QFI\xfb\0\0\0\x02",
    b"KDMV",
    b"COWD",
    b"# Disk DescriptorFile\n",
    b"vhdxfile",
    b"conectix",
    b"",
];

/// A header: a format's magic, arbitrary bytes, and plausible fields planted at
/// arbitrary places.
fn image_header() -> impl Strategy<Value = Vec<u8>> {
    (
        0..MAGICS.len(),
        bytes(4096),
        prop::collection::vec((any::<prop::sample::Index>(), header_field()), 0..6),
    )
        .prop_map(|(m, rest, fields)| {
            let mut head = MAGICS[m].to_vec();
            head.extend(rest);
            for (at, v) in fields {
                if head.len() >= 8 {
                    let at = at.index(head.len() - 7);
                    head[at..at + 8].copy_from_slice(&v.to_be_bytes());
                }
            }
            head
        })
}

fn vmdk_descriptor() -> impl Strategy<Value = String> {
    let extent = (
        one_of(&["RW", "RDONLY", "NOACCESS", "rw", ""]),
        0u64..1 << 40,
        one_of(&["FLAT", "SPARSE", "VMFS", "ZERO", "VMFSSPARSE", "x"]),
        text(40),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(access, size, kind, file, offset)| {
            let offset = offset.map(|o| format!(" {o}")).unwrap_or_default();
            format!(
                "{access} {size} {kind} \"{}\"{offset}",
                file.replace('"', "")
            )
        });
    let line = prop_oneof![
        2 => extent,
        1 => text(40).prop_map(|t| format!("parentFileNameHint=\"{t}\"")),
        1 => text(20).prop_map(|t| format!("createType=\"{t}\"")),
        1 => text(60),
    ];
    prop::collection::vec(line, 0..20)
        .prop_map(|lines| format!("# Disk DescriptorFile\n{}", lines.join("\n")))
}

fn qemu_img_info() -> impl Strategy<Value = serde_json::Value> {
    (
        text(30),
        any::<u64>(),
        one_of(&["qcow2", "vmdk", "raw", ""]),
        any::<bool>(),
        one_of(&["qcow2", "vmdk"]),
        prop::option::of(any::<u8>()),
        text(8),
    )
        .prop_map(|(name, size, format, backing, kind, data_file, extent)| {
            let backing = if backing {
                serde_json::json!(name)
            } else {
                serde_json::Value::Null
            };
            let data_file = match data_file {
                None => serde_json::json!(name),
                Some(n) => serde_json::json!(n),
            };
            serde_json::json!({
                "virtual-size": size,
                "format": format,
                "backing-filename": backing,
                "format-specific": {
                    "type": kind,
                    "data": {
                        "data-file": data_file,
                        "extents": [{ "filename": name, "format": extent }]
                    }
                }
            })
        })
}

const RELEASE_KEYS: &[&str] = &[
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
    "parent",
];

fn release_file() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        text(30).prop_map(|t| format!("\"{}\"", t.replace(['"', '\\'], ""))),
        any::<i64>().prop_map(|n| n.to_string()),
        one_of(&[
            "true",
            "[\"us-east-1\", \"mars\"]",
            "\"../../etc/passwd\"",
            "\"2001-01-01\"",
            "{ a = 1 }",
            "\"x-{date}\"",
            "\"auto\"",
        ]),
    ];
    let line = prop_oneof![
        1 => Just("[[image]]".to_string()),
        1 => one_of(&["[defaults]", "[announce]", "[tags]", "[ssm]"]),
        1 => text(40),
        3 => (one_of(RELEASE_KEYS), value).prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    prop::collection::vec(line, 0..24).prop_map(|lines| lines.join("\n"))
}

const BENCH_LABELS: [&str; 4] = [
    "RunInstances API call took",
    "Moving from pending to running took",
    "Moving from running to port closed took",
    "Moving from port closed to port open took",
];

/// ec2-boot-bench's output: its four lines, mostly in order, with odd numbers and
/// stray lines.
fn boot_bench_output() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        one_of(&["NaN", "inf", "1e308", "-0", ""]),
        text(12),
        (-20.0f64..180.0).prop_map(|f| format!("{f:.6}")),
    ];
    // None: a stray line; Some((label, number)): a timing line, with the label that
    // comes next in order unless one is drawn.
    let line = prop::option::weighted(
        0.8,
        (prop::option::weighted(0.25, 0..BENCH_LABELS.len()), number),
    );
    prop::collection::vec((line, text(50)), 0..30).prop_map(|lines| {
        lines
            .into_iter()
            .enumerate()
            .map(|(i, (line, stray))| match line {
                None => stray,
                Some((label, n)) => format!("{}: {n} s", BENCH_LABELS[label.unwrap_or(i % 4)]),
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// A bsdec2-image-upload key file holding `secret` (or arbitrary bytes).
fn key_file() -> impl Strategy<Value = (String, Vec<u8>)> {
    let lines = |secret: String| {
        let line = prop_oneof![
            text(20).prop_map(|t| format!("ACCESS_KEY_ID={t}")),
            text(4).prop_map({
                let s = secret.clone();
                move |t| format!("ACCESS_KEY_SECRET={s}{t}")
            }),
            Just(format!("ACCESS_KEY_SECRET={secret}")),
            text(8).prop_map({
                let s = secret.clone();
                move |t| format!("{t}={s}")
            }),
            text(30),
        ];
        (
            prop::collection::vec(line, 0..5),
            one_of(&["\n", "\r\n", "\r"]),
        )
            .prop_map(|(lines, sep)| lines.join(&sep).into_bytes())
    };
    any::<u64>()
        .prop_map(|n| format!("SeCrEt{n}"))
        .prop_flat_map(move |secret| {
            let data = prop_oneof![1 => bytes(300), 3 => lines(secret.clone())];
            (Just(secret), data)
        })
}

fn user_data() -> impl Strategy<Value = Vec<u8>> {
    let script = (
        one_of(&[
            "#!/bin/sh",
            "#cloud-config",
            ">>/etc/rc.conf",
            "/etc/rc.conf:",
            "\u{1f}\u{8b}",
        ]),
        text(300),
    )
        .prop_map(|(head, body)| format!("{head}\n{body}").into_bytes());
    prop_oneof![bytes(2048), script]
}

/// Strings that look like ids, regions, tag keys or parameter names, or nothing.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        text(20).prop_map(|t| format!("ami-{t}")),
        text(20).prop_map(|t| format!("snap-{t}")),
        (text(3), text(8), text(3)).prop_map(|(a, b, c)| format!("{a}-{b}-{c}")),
        text(40),
    ]
}

proptest! {
    #[test]
    fn image_headers_never_panic(head in image_header()) {
        let formats = [Format::Raw, Format::Qcow2, Format::Vmdk, Format::Vhd, Format::Vhdx];
        for format in formats {
            for reference in crate::image::inspect::header_references(format, &head) {
                assert_clean("reference", &head, &reference.to_string());
            }
        }
        let f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &f, &head).unwrap();
        let _ = crate::image::detect_format(&f, head.len() as u64);
    }

    #[test]
    fn vmdk_descriptors_never_panic(desc in vmdk_descriptor()) {
        for reference in crate::image::inspect::header_references(Format::Vmdk, desc.as_bytes()) {
            assert_clean("reference", &desc, &reference.to_string());
        }
    }

    #[test]
    fn qemu_img_info_never_panics(v in qemu_img_info()) {
        for reference in crate::image::inspect::info_references(&v) {
            assert_clean("reference", &v, &reference.to_string());
        }
    }

    #[test]
    fn release_files_never_panic(text in release_file()) {
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

    #[test]
    fn boot_bench_output_never_panics(text in boot_bench_output()) {
        if let Err(e) = crate::history::import::parse(&text) {
            let m = e.to_string();
            assert_clean("ec2-boot-bench parse", &text, &m);
            prop_assert!(!m.contains("line 0"), "{}", m);
        }
    }

    #[test]
    fn key_files_never_panic_nor_show_the_secret((secret, data) in key_file()) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aws.key");
        std::fs::write(&p, &data).unwrap();
        match crate::publish::compat::read_key_file(&p) {
            Err(e) => {
                let m = e.to_string();
                assert_clean("key file", &String::from_utf8_lossy(&data), &m);
                prop_assert!(!m.contains(&secret), "the secret in {}", m);
            }
            Ok(k) => prop_assert!(!format!("{k:?}").contains(&secret), "the secret in Debug"),
        }
    }

    #[test]
    fn user_data_checks_never_panic(data in user_data()) {
        let report = crate::userdata::check(&data, None);
        for f in report.errors.iter().chain(&report.warnings) {
            assert_clean("user-data finding", &String::from_utf8_lossy(&data), &f.to_string());
        }
    }

    #[test]
    fn validators_never_panic(s in id_like()) {
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
