//! Accuracy of the boot benchmark's TCP probe: 50 scripted transitions on loopback.
//!
//! The boot fixture (its own thread, blocking sockets, the OS's sleep) goes silent ->
//! refusing -> accepting on a random schedule; the probe watches it from the moment
//! the fixture starts, as `bench` does from the moment the instance is running. For
//! each transition the error is the probe's stamp minus the moment the fixture
//! switched (and, apart, minus the scheduled moment). The same probes also give
//! ec2-boot-bench's stamp (the arrival of the first answer of the new kind) for
//! comparison. Prints a Markdown table; targets: median <= 5 ms, max <= 15 ms.
//!
//! `cargo bench --bench probe_accuracy [-- CYCLES]` (25 cycles = 50 transitions).

use std::time::{Duration, Instant};

use ec2ami::bench::{ProbeOptions, Summary, watch_port};
use ec2ami_testkit::{BootFixture, BootSchedule, PortState};

/// Signed milliseconds from `truth` to `measured`.
fn ms(measured: Instant, truth: Instant) -> f64 {
    if measured >= truth {
        (measured - truth).as_secs_f64() * 1e3
    } else {
        -((truth - measured).as_secs_f64() * 1e3)
    }
}

fn row(name: &str, errors: &[f64]) -> String {
    let abs = Summary::of(errors.iter().map(|e| e.abs())).expect("some transitions");
    let signed = Summary::of(errors.iter().copied()).unwrap();
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:+.2} | {:+.2} .. {:+.2} |",
        errors.len(),
        abs.median,
        abs.max,
        mean,
        signed.min,
        signed.max
    )
}

fn main() {
    let cycles: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(25);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = ProbeOptions::default();
    let mut rng = fastrand::Rng::with_seed(2024);
    let (mut ours, mut ebb, mut vs_schedule, mut lateness) = (vec![], vec![], vec![], vec![]);
    for _ in 0..cycles {
        // Phases of 150-350 ms: long enough for the 1 s connect timeout not to matter,
        // random so the transitions fall anywhere between two probes.
        let silent = Duration::from_millis(rng.u64(150..350));
        let refusing = Duration::from_millis(rng.u64(150..350));
        let fixture = BootFixture::start(BootSchedule::boot(silent, refusing)).unwrap();
        let start = tokio::time::Instant::from_std(fixture.started());
        let watch = rt.block_on(watch_port(
            fixture.addr(),
            start,
            &opts,
            Duration::from_secs(5),
        ));
        assert_eq!(watch.timed_out, None, "the fixture always opens");
        let switched = [
            fixture.entered(PortState::Refusing).unwrap(),
            fixture.entered(PortState::Accepting).unwrap(),
        ];
        let scheduled = [
            fixture.started() + silent,
            fixture.started() + silent + refusing,
        ];
        let stamps = [watch.closed.unwrap(), watch.open.unwrap()];
        let arrivals = [watch.closed_answered.unwrap(), watch.open_answered.unwrap()];
        for i in 0..2 {
            ours.push(ms(stamps[i].into_std(), switched[i]));
            ebb.push(ms(arrivals[i].into_std(), switched[i]));
            vs_schedule.push(ms(stamps[i].into_std(), scheduled[i]));
            lateness.push(ms(switched[i], scheduled[i]));
        }
        drop(fixture);
    }
    println!(
        "Probe accuracy over {} transitions (silent -> refusing, refusing -> accepting), \
         cadence {} ms, connect timeout {} s\n",
        ours.len(),
        opts.cadence.as_millis(),
        opts.connect_timeout.as_secs()
    );
    println!("| stamp vs. moment | n | median abs ms | max abs ms | mean ms | range ms |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    println!("{}", row("ec2ami (mid-interval) vs. switch", &ours));
    println!("{}", row("ec2-boot-bench (first answer) vs. switch", &ebb));
    println!("{}", row("ec2ami vs. schedule", &vs_schedule));
    println!("{}", row("fixture: switch vs. schedule", &lateness));
    let abs = Summary::of(ours.iter().map(|e| e.abs())).unwrap();
    let ok = abs.median <= 5.0 && abs.max <= 15.0;
    println!(
        "\ntarget median <= 5 ms, max <= 15 ms: {} (median {:.2} ms, max {:.2} ms)",
        if ok { "met" } else { "NOT met" },
        abs.median,
        abs.max
    );
}
