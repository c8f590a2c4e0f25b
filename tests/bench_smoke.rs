//! A smoke run of the benchmark (`python3 bench/bench.py --quick`): tiny sizes and a few
//! iterations against a real sshd target, an OpenSSH jump host and Penstock with and without
//! recording, so the benchmark never rots. The figures are not judged here (timed goals are not
//! asserted in tests); only that every measure was taken for every variant.
//!
//! Needs root (sshd privilege separation and the local target account), like the other
//! end-to-end tests, plus `python3` and the OpenSSH client and server.

use std::process::Command;

use serde_json::Value;

const VARIANTS: [&str; 4] = ["direct", "jump", "penstock", "penstock-norec"];
const GATEWAYS: [&str; 3] = ["jump", "penstock", "penstock-norec"];
const BULK: [&str; 4] = ["ssh_up", "ssh_down", "scp_up", "scp_down"];

#[track_caller]
fn positive(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    let x = cur.as_f64().unwrap_or_else(|| panic!("{} is not a number: {cur}", path.join(".")));
    assert!(x > 0.0 && x.is_finite(), "{} = {x}, expected a positive number", path.join("."));
    x
}

#[test]
fn quick_benchmark_reports_every_measure() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the benchmark starts sshd, which needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let started = std::time::Instant::now();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/bench.py"))
        .arg("--quick")
        .arg("--json")
        .arg(&json)
        .env("PENSTOCK_BIN", env!("CARGO_BIN_EXE_penstock"))
        .output()
        .expect("cannot run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench.py --quick failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    eprintln!("bench.py --quick took {:.1} s", started.elapsed().as_secs_f64());
    let r: Value = serde_json::from_slice(&std::fs::read(&json).expect("the JSON file")).expect("valid JSON");

    // Every leg negotiated the pinned cipher.
    let cipher = r["cipher"].as_str().expect("cipher");
    for v in VARIANTS {
        let legs = r["negotiated"][v]["legs"].as_object().unwrap_or_else(|| panic!("no negotiated legs for {v}"));
        assert!(!legs.is_empty());
        for (leg, ciphers) in legs {
            let ciphers = ciphers.as_array().unwrap_or_else(|| panic!("{v} {leg}"));
            assert!(!ciphers.is_empty() && ciphers.iter().all(|c| c == cipher), "{v} {leg}: {ciphers:?}");
        }
    }

    for v in VARIANTS {
        for k in BULK {
            positive(&r, &["bulk", v, k, "median"]);
            positive(&r, &["bulk", v, k, "min"]);
        }
        positive(&r, &["bulk", v, "target_cpu_s_per_gib"]);
        positive(&r, &["bulk", v, "client_cpu_s_per_gib"]);
        positive(&r, &["setup", v, "median_ms"]);
        positive(&r, &["setup", v, "p90_ms"]);
        positive(&r, &["latency", v, "p50_ms"]);
        positive(&r, &["latency", v, "p99_ms"]);
    }
    // Gateway measures exist for the three ways through a gateway; direct has none.
    assert!(r["bulk"]["direct"]["gateway_cpu_s_per_gib"].is_null());
    for v in GATEWAYS {
        positive(&r, &["bulk", v, "gateway_cpu_s_per_gib"]);
        positive(&r, &["idle", v, "peak_rss_kib"]);
        positive(&r, &["idle", v, "kib_per_session"]);
        positive(&r, &["streaming", v, "peak_rss_kib"]);
        positive(&r, &["streaming", v, "kib_per_session"]);
        positive(&r, &["slow_target", v, "peak_pss_kib"]);
        assert!(r["slow_target"][v]["growth_second_half_kib"].is_i64(), "slow_target.{v}.growth_second_half_kib");
    }

    // The goals are evaluated (met or not) and the table printed.
    let goals = r["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 13, "{goals:?}");
    for g in goals {
        assert!(g["met"].is_boolean() && g["measured"].is_string(), "{g}");
    }
    assert!(stdout.contains("ssh upload MiB/s") && stdout.contains("gateway CPU s/GiB"), "{stdout}");
}
