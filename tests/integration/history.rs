//! The boot-time history through the real binary: import of ec2-boot-bench output,
//! list/show, the regression check on a synthetic history, and the report opened in
//! headless Chromium (Debian's chromium package; `scripts/test` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// ec2-boot-bench's output for one run, exactly as its printf writes it.
fn ebb_run(p: [f64; 4]) -> String {
    format!(
        "RunInstances API call took: {:.6} s\n\
         Moving from pending to running took: {:.6} s\n\
         Moving from running to port closed took: {:.6} s\n\
         Moving from port closed to port open took: {:.6} s\n",
        p[0], p[1], p[2], p[3]
    )
}

fn json(run: &Run) -> serde_json::Value {
    run.assert_ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_boot_bench_output_imports() {
    let world = World::offline().await;
    // Three runs appended to one file, as a backfill loop writes them; in the third,
    // sshd never came up and ec2-boot-bench printed its made-up 120 s.
    let a = world.path("c5.xlarge-20241003.txt");
    std::fs::write(
        &a,
        [
            ebb_run([1.543152, 6.918336, 12.170474, 11.620210]),
            ebb_run([1.412305, 6.711023, 11.950112, 11.408861]),
            "ec2-boot-bench: non-blocking connect returned error: No route to host\n".to_string(),
            "RunInstances API call took: 1.498211 s\n\
             Moving from pending to running took: 7.002310 s\n\
             Moving from running to port closed took: 12.331095 s\n\
             Moving from port closed to port open took: 120.000000 s\n"
                .to_string(),
        ]
        .concat(),
    )
    .unwrap();
    // Captured with 2>&1: ec2-boot-bench's warnings sit among the lines.
    let b = world.path("c5.xlarge-20241003-b.txt");
    std::fs::write(
        &b,
        format!(
            "ec2-boot-bench: Received EACCES when attempting to connect\n{}",
            ebb_run([1.601001, 6.800422, 12.002001, 11.550300])
        ),
    )
    .unwrap();
    let name = "FreeBSD 14.1-STABLE-amd64-20241003 UEFI-PREFERRED base UFS";
    let import = |files: Vec<&Path>| {
        let mut args: Vec<String> = [
            "--region",
            "us-east-1",
            "history",
            "import",
            "--ami",
            "ami-0a1b2c3d4e5f60718",
            "--instance-type",
            "c5.xlarge",
            "--image-name",
            name,
            "--discard-first",
        ]
        .map(String::from)
        .to_vec();
        args.extend(files.iter().map(|f| f.display().to_string()));
        args
    };
    let args = import(vec![&a, &b]);
    let run = world
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    run.assert_ok();
    assert!(
        run.stdout
            .contains("c5.xlarge-20241003.txt: 3 run(s) imported as 1"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("-b.txt: 1 run(s) imported as 2"));

    let list = json(&world.run(&["--output", "json", "history", "list"]).await);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let first = &list[0];
    // The build, read from the FreeBSD-style name.
    assert_eq!(first["version"], "14.1");
    assert_eq!(first["branch"], "14-STABLE");
    assert_eq!(first["arch"], "amd64");
    assert_eq!(first["fs"], "ufs");
    assert_eq!(first["flavour"], "base");
    assert_eq!(first["build_date"], "20241003");
    assert_eq!(first["source"], "import");
    assert_eq!(first["tool_version"], "ec2-boot-bench");
    let runs = first["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0]["discarded"], true);
    assert_eq!(runs[0]["run_instances_s"], 1.543152);
    assert_eq!(runs[1]["closed_to_open_s"], 11.408861);
    // The made-up 120 s is a timeout, not a figure.
    assert_eq!(runs[2]["status"], "timed_out");
    assert_eq!(runs[2]["timed_out_phase"], "closed_to_open");
    assert_eq!(runs[2]["closed_to_open_s"], serde_json::Value::Null);
    assert_eq!(runs[2]["running_to_closed_s"], 12.331095);
    // Only run 2 counts: run 1 is discarded, run 3 timed out.
    assert_eq!(first["summary"]["total"]["count"], 1);

    let show = world.run(&["history", "show", "1"]).await;
    show.assert_ok();
    for needle in [
        "benchmark 1: ami-0a1b2c3d4e5f60718",
        "branch 14-STABLE",
        "timed out in port closed -> port open",
        "(discarded)",
        "median s",
    ] {
        assert!(
            show.stdout.contains(needle),
            "`{needle}` in\n{}",
            show.stdout
        );
    }

    // Importing the same file again stores nothing twice.
    let args = import(vec![&a]);
    let again = world
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    again.assert_ok();
    assert!(
        again.stdout.contains("already imported as 1"),
        "{}",
        again.stdout
    );

    // A truncated file is refused with its line, and nothing of the batch is stored.
    let c = world.path("cut.txt");
    let cut: String = ebb_run([1.0, 2.0, 3.0, 4.0])
        .lines()
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&c, cut).unwrap();
    let d = world.path("fine.txt");
    std::fs::write(&d, ebb_run([1.0, 2.0, 3.0, 4.0])).unwrap();
    let args = import(vec![&d, &c]);
    let bad = world
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    bad.assert_failed_with("cut.txt: line 1: incomplete run: 2 of 4 lines");
    let list = json(&world.run(&["--output", "json", "history", "list"]).await);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(world.proxy.requests().is_empty(), "history made AWS calls");
}

/// Deterministic noise in [1 - amp, 1 + amp].
fn factor(rng: &mut fastrand::Rng, amp: f64) -> f64 {
    1.0 + amp * (2.0 * rng.f64() - 1.0)
}

/// Import a weekly build of a series: `runs` runs around `total` seconds (±10 %).
async fn import_build(
    world: &World,
    week: usize,
    total: f64,
    arch: &str,
    instance_type: &str,
    rng: &mut fastrand::Rng,
) -> String {
    let date = format!("2024{:02}{:02}", 1 + week / 4, 1 + 7 * (week % 4));
    let name = format!("FreeBSD 14.1-STABLE-{arch}-{date} UEFI-PREFERRED base UFS");
    let text: String = (0..5)
        .map(|_| {
            let t = total * factor(rng, 0.10);
            ebb_run([0.06 * t, 0.27 * t, 0.45 * t, 0.22 * t])
        })
        .collect();
    let file = world.path(&format!("{instance_type}-{date}.txt"));
    std::fs::write(&file, text).unwrap();
    world
        .run(&[
            "--region",
            "us-east-1",
            "history",
            "import",
            file.to_str().unwrap(),
            "--ami",
            &format!("ami-{arch}{date}"),
            "--instance-type",
            instance_type,
            "--image-name",
            &name,
        ])
        .await
        .assert_ok();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_catches_a_threefold_regression_and_not_noise() {
    let world = World::offline().await;
    let mut rng = fastrand::Rng::with_seed(4);
    let mut names = Vec::new();
    for week in 0..8 {
        names.push(
            import_build(
                &world,
                week,
                25.0 * factor(&mut rng, 0.10),
                "amd64",
                "c5.xlarge",
                &mut rng,
            )
            .await,
        );
    }
    let ok = world.run(&["history", "check"]).await;
    ok.assert_ok();
    assert!(
        ok.stdout
            .starts_with("ok          14-STABLE base ufs amd64 on c5.xlarge"),
        "{}",
        ok.stdout
    );

    // The root disk grew from 5 GB to 6 GB: boot became three times slower.
    let bad_name = import_build(&world, 8, 75.0, "amd64", "c5.xlarge", &mut rng).await;
    let caught = world.run(&["history", "check"]).await;
    caught.assert_failed_with("boot-time regression in 14-STABLE base ufs amd64 on c5.xlarge");
    let line = caught.stdout.trim();
    assert!(
        line.starts_with("REGRESSION  14-STABLE base ufs amd64 on c5.xlarge"),
        "{line}"
    );
    assert!(
        line.contains(&format!("last good build {}", names[7])),
        "{line}"
    );
    assert!(
        line.contains(&format!("first bad build {bad_name}")),
        "{line}"
    );

    let checks = serde_json::from_str::<serde_json::Value>(
        &world
            .run(&["--output", "json", "history", "check"])
            .await
            .stdout,
    )
    .unwrap();
    let c = &checks[0];
    assert_eq!(c["verdict"], "regression");
    assert_eq!(c["first_bad"], bad_name.as_str());
    assert_eq!(c["last_good"], names[7].as_str());
    assert!(c["ratio"].as_f64().unwrap() > 2.5, "{c}");
    // A stricter threshold than the jump is quiet; a window of 1 still sees it.
    world
        .run(&["history", "check", "--threshold", "4"])
        .await
        .assert_ok();
    world
        .run(&["history", "check", "--window", "1"])
        .await
        .assert_failed_with("regression");
    // Another series is checked on its own and is fine.
    for week in 0..3 {
        import_build(&world, week, 9.0, "arm64", "m7g.large", &mut rng).await;
    }
    let two = world
        .run(&["history", "check", "--instance-type", "m7g.large"])
        .await;
    two.assert_ok();
    assert!(two.stdout.contains("arm64 on m7g.large"), "{}", two.stdout);
}

/// Debian's chromium, which `scripts/test` installs.
fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("chromium is not installed: apt-get install chromium (scripts/test does this)");
}

/// Headless Chromium with nothing that reaches the network, on `page`.
fn chromium_run(page: &Path, profile: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs")
}

/// The `data-plots-loaded` and `data-plots-failed` the page's script set.
fn plots_loaded(dom: &str) -> (u64, u64) {
    let attr = |name: &str| {
        let start = dom
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("no {name} in {dom}"));
        let rest = &dom[start + name.len() + 2..];
        rest[..rest.find('"').unwrap()].parse::<u64>().unwrap()
    };
    (attr("data-plots-loaded"), attr("data-plots-failed"))
}

fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_plots_decode_parse_and_render_in_chromium() {
    let world = World::offline().await;
    let mut rng = fastrand::Rng::with_seed(9);
    for week in 0..6 {
        import_build(
            &world,
            week,
            25.0 * factor(&mut rng, 0.1),
            "amd64",
            "c5.xlarge",
            &mut rng,
        )
        .await;
    }
    import_build(&world, 6, 75.0, "amd64", "c5.xlarge", &mut rng).await;
    for week in 0..4 {
        import_build(&world, week, 9.0, "arm64", "m7g.large", &mut rng).await;
    }
    let out = world.path("report");
    let run = world
        .run(&["--output", "json", "report", "--out", out.to_str().unwrap()])
        .await;
    let summary = json(&run);
    let series = summary["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    for s in series {
        let png = PathBuf::from(s["png"].as_str().unwrap());
        let (w, h, pixels) = decode_png(&png);
        assert_eq!((w, h), (1000, 520));
        let mut colours: Vec<&[u8]> = pixels.chunks(3).collect();
        colours.sort();
        colours.dedup();
        assert!(colours.len() > 20, "{}: a blank plot?", png.display());
        let svg_text = std::fs::read_to_string(s["svg"].as_str().unwrap()).unwrap();
        let svg = roxmltree::Document::parse(&svg_text).expect("the SVG parses");
        assert_eq!(svg.root_element().tag_name().name(), "svg");
        let texts: String = svg
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        assert!(texts.contains(s["series"].as_str().unwrap()), "{texts}");
        assert!(texts.contains("running -> port closed"), "{texts}");
        assert!(texts.contains("phase medians, stacked:"), "{texts}");
    }
    let index = out.join("index.html");
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(html.contains("REGRESSION"), "the table flags the 3x build");
    assert!(
        !html.contains("http:") && !html.contains("https:"),
        "no network in the page"
    );

    let profile = tempfile::tempdir().unwrap();
    let dom = chromium_run(&index, profile.path(), &["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(
        plots_loaded(&dom_text),
        (2, 0),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = world.path("report-screenshot.png");
    let done = chromium_run(
        &index,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600",
        ],
    );
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let (w, _, pixels) = decode_png(&shot);
    assert_eq!(w, 1280);
    assert!(pixels.iter().any(|&b| b < 128), "the screenshot is blank");
    eprintln!("screenshot of the report: {}", shot.display());
    if let Ok(dir) = std::env::var("EC2AMI_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, Path::new(&dir).join("report-screenshot.png")).unwrap();
    }

    // The check in the page can fail: without one of the plots it says so.
    std::fs::remove_file(series[1]["svg"].as_str().unwrap()).unwrap();
    let dom = chromium_run(&index, profile.path(), &["--dump-dom"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(plots_loaded(&dom_text), (1, 1));
    assert!(dom_text.contains("plot missing: "), "{dom_text}");
}
