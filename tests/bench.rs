//! The benchmark engine and its reports: CSV schema and round trip, the real `bench` command,
//! and report paths that cannot be written.

mod common;

use std::process::Command;

use common::*;
use vit_workbench::bench::{BenchResult, Environment, Stats, stats};
use vit_workbench::quant::Variant;
use vit_workbench::quant::metrics::AgreementSummary;
use vit_workbench::report::{self, COLUMNS};

const CORE_SCHEMA: &str = "model,variant,device,threads,batch,runs,load_ms,first_ms,mean_ms,std_ms,min_ms,p50_ms,p90_ms,p99_ms,max_ms,throughput_ips,file_bytes,weight_bytes,peak_rss_bytes,top1_agreement,top5_overlap,kl_div,max_abs_dlogit,cpu,simd,os,app_version,git_rev,candle_version,timestamp";

#[test]
fn csv_header_starts_with_the_documented_schema_in_order() {
    let header = COLUMNS.join(",");
    assert!(header.starts_with(CORE_SCHEMA), "{header}");
    assert_eq!(
        header,
        format!(
            "{CORE_SCHEMA},warmup,measured_s,speedup_vs_fp32,size_vs_fp32,min_cosine,agreement_images,int8_kernel,gpu,kept_fp32,scheme"
        )
    );
    // The README documents every column.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for c in COLUMNS {
        assert!(readme.contains(&format!("`{c}`")), "README does not document column `{c}`");
    }
}

fn fake(variant: Variant, p50: f64, file_bytes: u64, accuracy: Option<AgreementSummary>) -> BenchResult {
    let samples = vec![p50 - 1.0, p50, p50 + 2.5];
    BenchResult {
        model: "m, with \"quotes\"".to_string(),
        variant,
        batch: 2,
        warmup: 3,
        load_ms: 12.5,
        first_ms: 40.25,
        stats: stats(&samples),
        measured_seconds: samples.iter().sum::<f64>() / 1000.0,
        throughput_ips: 2000.0 / p50,
        file_bytes,
        weight_bytes: 1234,
        peak_rss_bytes: 99_000_000,
        accuracy,
        int8_kernel: (variant != Variant::Fp32).then(|| "cpu-per-channel-rowwise".to_string()),
        kept_fp32: Vec::new(),
        scheme: if variant == Variant::Fp32 { String::new() } else { "default".into() },
        samples_ms: samples,
        env: Environment {
            cpu: "Test CPU".into(),
            simd: "int8 kernel: portable; cpu: avx2".into(),
            threads: 2,
            device: "cpu".into(),
            gpu: String::new(),
            os: "TestOS".into(),
            app_version: "0.1.0".into(),
            git_rev: "abc".into(),
            candle_version: "0.11.1".into(),
            timestamp: "2026-11-29T00:00:00Z".into(),
        },
    }
}

#[test]
fn csv_values_round_trip_through_a_csv_parser() {
    let acc = AgreementSummary {
        images: 4,
        top1_agreement: 0.75,
        top5_overlap: 0.95,
        min_top5_overlap: 4,
        mean_kl_div: 0.004663,
        max_abs_dlogit: 0.5,
        min_cosine: 0.998,
    };
    let results = vec![fake(Variant::Fp32, 40.0, 1000, None), fake(Variant::Int8, 10.0, 250, Some(acc))];
    let bytes = report::to_csv(&results).unwrap();
    let mut rd = csv::Reader::from_reader(bytes.as_slice());
    let header: Vec<String> = rd.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, COLUMNS);
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2);
    let get =
        |r: &csv::StringRecord, c: &str| r.get(COLUMNS.iter().position(|x| *x == c).unwrap()).unwrap().to_string();
    let f = |r: &csv::StringRecord, c: &str| get(r, c).parse::<f64>().unwrap();
    let int8 = &rows[1];
    assert_eq!(get(int8, "model"), "m, with \"quotes\"");
    assert_eq!(get(int8, "variant"), "int8");
    assert_eq!(get(int8, "batch"), "2");
    assert_eq!(get(int8, "runs"), "3");
    assert_eq!(f(int8, "p50_ms"), 10.0);
    assert_eq!(f(int8, "max_ms"), 12.5);
    assert_eq!(f(int8, "min_ms"), 9.0);
    assert_eq!(f(int8, "first_ms"), 40.25);
    assert_eq!(f(int8, "throughput_ips"), 200.0);
    assert_eq!(f(int8, "top1_agreement"), 0.75);
    assert_eq!(f(int8, "kl_div"), 0.004663);
    assert_eq!(f(int8, "speedup_vs_fp32"), 4.0);
    assert_eq!(f(int8, "size_vs_fp32"), 0.25);
    assert_eq!(get(int8, "agreement_images"), "4");
    assert_eq!(get(int8, "timestamp"), "2026-11-29T00:00:00Z");
    assert_eq!(get(int8, "int8_kernel"), "cpu-per-channel-rowwise");
    assert_eq!(get(&rows[0], "int8_kernel"), "", "fp32 uses no int8 kernel");
    assert_eq!(get(int8, "gpu"), "");
    assert_eq!(get(int8, "scheme"), "default");
    assert_eq!(get(&rows[0], "scheme"), "", "fp32 has no quantization scheme");
    // fp32 has no comparison of its own: agreement cells are empty, not invented.
    assert_eq!(get(&rows[0], "top1_agreement"), "");
    assert_eq!(f(&rows[0], "speedup_vs_fp32"), 1.0);
    // Raw samples: one row per run.
    let raw = report::raw_to_csv(&results).unwrap();
    let mut rd = csv::Reader::from_reader(raw.as_slice());
    assert_eq!(rd.headers().unwrap().iter().collect::<Vec<_>>(), report::RAW_COLUMNS);
    let ms: Vec<f64> = rd.records().map(|r| r.unwrap()[6].parse().unwrap()).collect();
    assert_eq!(ms, vec![39.0, 40.0, 42.5, 9.0, 10.0, 12.5]);
}

#[test]
fn stats_are_consistent() {
    let s: Stats = stats(&[5.0, 1.0, 3.0, 2.0, 4.0, 100.0]);
    assert!(s.min <= s.p50 && s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max);
}

#[test]
fn bench_command_on_real_vit_tiny_writes_consistent_reports() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (csv_path, raw_path, json_path) =
        (dir.path().join("r.csv"), dir.path().join("raw.csv"), dir.path().join("r.json"));
    let out = Command::new(bin())
        .args(["bench", "--threads", "2", "--warmup", "1", "--runs", "3", "--min-seconds", "0", "--models"])
        .arg(timm_tiny(&shared))
        .arg("--images")
        .arg(shared.join("images"))
        .args([
            "--csv",
            csv_path.to_str().unwrap(),
            "--raw",
            raw_path.to_str().unwrap(),
            "--json",
            json_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("threads: 2") && stdout.contains("p50 ms"), "{stdout}");
    let mut rd = csv::Reader::from_path(&csv_path).unwrap();
    assert_eq!(rd.headers().unwrap().iter().collect::<Vec<_>>(), COLUMNS);
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    let col = |c: &str| COLUMNS.iter().position(|x| *x == c).unwrap();
    let num =
        |r: &csv::StringRecord, c: &str| r[col(c)].parse::<f64>().unwrap_or_else(|_| panic!("{c}: `{}`", &r[col(c)]));
    let variants: Vec<&str> = rows.iter().map(|r| &r[col("variant")]).collect();
    assert_eq!(variants, ["fp32", "int8", "mobile"]);
    // Which int8 a row used: none for fp32, our per-channel kernel on the CPU; no GPU named.
    let kernels: Vec<&str> = rows.iter().map(|r| &r[col("int8_kernel")]).collect();
    assert_eq!(kernels, ["", "cpu-per-channel-rowwise", "cpu-per-channel-rowwise"]);
    for r in &rows {
        assert_eq!(&r[col("gpu")], "");
        assert_eq!(&r[col("threads")], "2");
        assert_eq!(&r[col("device")], "cpu");
        assert!(num(r, "runs") >= 3.0);
        for c in [
            "load_ms",
            "first_ms",
            "mean_ms",
            "min_ms",
            "p50_ms",
            "throughput_ips",
            "file_bytes",
            "weight_bytes",
            "peak_rss_bytes",
        ] {
            assert!(num(r, c) > 0.0, "{c} = {}", &r[col(c)]);
        }
        let (mn, p50, p90, p99, mx) =
            (num(r, "min_ms"), num(r, "p50_ms"), num(r, "p90_ms"), num(r, "p99_ms"), num(r, "max_ms"));
        assert!(mn <= p50 && p50 <= p90 && p90 <= p99 && p99 <= mx, "{mn} {p50} {p90} {p99} {mx}");
        assert!(num(r, "min_ms") <= num(r, "mean_ms") && num(r, "mean_ms") <= num(r, "max_ms"));
        // Agreement over the 4 photos is filled for every variant (fp32 against itself: 1).
        assert_eq!(num(r, "agreement_images"), 4.0);
        assert!(num(r, "top1_agreement") == 1.0, "{}", &r[col("top1_agreement")]);
        assert!(num(r, "top5_overlap") >= 0.8);
        assert!(num(r, "kl_div") >= 0.0 && num(r, "kl_div") < 0.05);
        for c in ["cpu", "simd", "os", "app_version", "git_rev", "candle_version", "timestamp"] {
            assert!(!r[col(c)].is_empty(), "{c} empty");
        }
    }
    assert_eq!(num(&rows[0], "kl_div"), 0.0);
    assert!(num(&rows[1], "file_bytes") < num(&rows[0], "file_bytes") * 0.3);
    assert!(num(&rows[2], "file_bytes") < num(&rows[0], "file_bytes") * 0.3);
    // Raw samples: as many per variant as its `runs`.
    let mut rd = csv::Reader::from_path(&raw_path).unwrap();
    let raw: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    for r in &rows {
        let v = &r[col("variant")];
        assert_eq!(raw.iter().filter(|x| &x[1] == v).count() as f64, num(r, "runs"));
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert!(json[1]["samples_ms"].as_array().unwrap().len() >= 3);
}

#[test]
fn bench_with_a_report_path_that_cannot_be_written_fails_first_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("missing-folder").join("r.csv");
    let out = Command::new(bin())
        .args(["bench", "--models"])
        .arg(fixture("timm_vit"))
        .args(["--runs", "1", "--warmup", "0", "--min-seconds", "0", "--csv", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("r.csv") && err.contains("does not exist"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "it measured before checking the path");
    assert!(!bad.exists());
    // A folder where the file should go.
    let as_dir = dir.path().join("taken");
    std::fs::create_dir(&as_dir).unwrap();
    let out = Command::new(bin())
        .args(["bench", "--models"])
        .arg(fixture("timm_vit"))
        .args(["--runs", "1", "--warmup", "0", "--min-seconds", "0", "--csv", as_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a folder"));
    // Only what the test made is there: no temporary or partial files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn writing_a_report_never_leaves_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.csv");
    let results = vec![fake(Variant::Fp32, 40.0, 1000, None)];
    report::write_csv(&path, &results).unwrap();
    let old = std::fs::read(&path).unwrap();
    // A failure while writing (disk full, say) keeps the old report and leaves no temp file.
    let r = vit_workbench::fsutil::write_atomic_with(&path, |f| {
        use std::io::Write;
        f.write_all(b"model,variant\npartial")?;
        anyhow::bail!("No space left on device")
    });
    assert!(format!("{:#}", r.unwrap_err()).contains("report.csv"));
    assert_eq!(std::fs::read(&path).unwrap(), old);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_batch_sweep_measures_every_combination_into_one_csv() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("sweep.csv");
    let models = format!("{},{}", fixture("hf_vit").display(), fixture("timm_vit").display());
    let out = Command::new(bin())
        .args(["bench", "--warmup", "0", "--runs", "2", "--min-seconds", "0", "--variants", "fp32,int8"])
        .args(["--models", &models, "--batch", "1,3", "--csv", csv_path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("batch 1,3") && stdout.contains("(batch 3)"), "{stdout}");
    let mut rd = csv::Reader::from_path(&csv_path).unwrap();
    let mut combos: Vec<(String, String, String)> = rd
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[1].to_string(), r[4].to_string())
        })
        .collect();
    combos.sort();
    let mut expected = Vec::new();
    for m in models.split(',') {
        for v in ["fp32", "int8"] {
            for b in ["1", "3"] {
                expected.push((m.to_string(), v.to_string(), b.to_string()));
            }
        }
    }
    expected.sort();
    assert_eq!(combos, expected);
    // A bad list fails before anything is measured or written.
    let out = Command::new(bin())
        .args(["bench", "--models", &models, "--batch", "1,0", "--csv", csv_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`0` is not a batch size"));
}

#[test]
fn a_threads_sweep_measures_every_thread_and_batch_combination() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("threads.csv");
    let model = fixture("timm_vit");
    let out = Command::new(bin())
        .args(["bench", "--warmup", "0", "--runs", "2", "--min-seconds", "0", "--variants", "fp32,int8"])
        .args(["--models", model.to_str().unwrap(), "--threads", "1,2", "--batch", "1,2"])
        .args(["--csv", csv_path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("threads: 1,2") && stdout.contains("(batch 2, 1 thr)"), "{stdout}");
    let mut rows: Vec<(String, String, String)> = csv_columns(&csv_path, &["variant", "threads", "batch", "runs"])
        .into_iter()
        .map(|r| {
            assert_eq!(r[3], "2");
            (r[0].clone(), r[1].clone(), r[2].clone())
        })
        .collect();
    rows.sort();
    let mut expected = Vec::new();
    for v in ["fp32", "int8"] {
        for t in ["1", "2"] {
            for b in ["1", "2"] {
                expected.push((v.to_string(), t.to_string(), b.to_string()));
            }
        }
    }
    assert_eq!(rows, expected, "4 rows per variant, one per (threads, batch)");

    // A list is for bench only; a count listed twice is refused by the parser.
    let (code, _, stderr) = run(&["classify", "x.png", "--threads", "1,2"]);
    assert_eq!(code, 1);
    assert_one_line_error(&stderr, &["--threads", "bench"]);
    let (code, _, stderr) = run(&["bench", "--threads", "2,2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("listed twice"), "{stderr}");
    let (code, _, stderr) = run(&["bench", "--threads", "1,,2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("empty item"), "{stderr}");
}

#[test]
fn a_non_default_scheme_row_names_its_int8_numerics_apart() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("schemes.csv");
    let model = fixture("timm_vit");
    let (code, _, err) = common::run(&[
        "bench",
        "--models",
        model.to_str().unwrap(),
        "--variants",
        "int8",
        "--scheme",
        "default",
        "--scheme",
        "torch",
        "--warmup",
        "1",
        "--runs",
        "2",
        "--max-runs",
        "2",
        "--min-seconds",
        "0",
        "--csv",
        csv_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<(String, String)> =
        csv_columns(&csv_path, &["scheme", "int8_kernel"]).into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let expected = [("default", "cpu-per-channel-rowwise"), ("torch", "cpu-scheme")];
    assert_eq!(rows, expected.map(|(a, b)| (a.to_string(), b.to_string())));
}

/// Runs the binary with stderr on a pseudo-terminal (indicatif draws its bars only on a
/// terminal): its exit status and everything drawn there.
fn stderr_on_a_terminal(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // Wide enough that the bar's message is not cut at the terminal's edge.
    let size = libc::winsize { ws_row: 40, ws_col: 300, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two descriptors into the ints given; no name, default termios.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    let (mut master, slave) = unsafe { (std::fs::File::from_raw_fd(master), std::fs::File::from_raw_fd(slave)) };
    let child = {
        let mut cmd = Command::new(bin());
        cmd.args(args).env("TERM", "xterm").stdout(std::process::Stdio::piped()).stderr(slave);
        cmd.spawn().unwrap()
        // `cmd`, and with it this process's copy of the terminal's slave end, is dropped here,
        // so reading the master ends (EIO) when the child exits.
    };
    let reader = std::thread::spawn(move || {
        let mut drawn = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => drawn.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&drawn).into_owned()
    });
    let out = child.wait_with_output().unwrap();
    (out.status, reader.join().unwrap())
}

/// `pos/len` of every frame of an indicatif bar drawn in `text`.
fn bar_positions(text: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices('/') {
        let before = text[..i].rsplit(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
        let after = text[i + 1..].split(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
        if let (Ok(pos), Ok(len)) = (before.parse(), after.parse()) {
            out.push((pos, len));
        }
    }
    out
}

#[test]
fn the_bench_progress_bar_names_samples_as_the_result_rows_do() {
    let Some(shared) = shared() else { return };
    let model = timm_tiny(&shared);
    let (status, drawn) = stderr_on_a_terminal(&[
        "bench",
        "--models",
        model.to_str().unwrap(),
        "--variants",
        "int8",
        "--scheme",
        "torch",
        "--keep-fp32",
        "blocks.11.fc2",
        "--warmup",
        "2",
        "--runs",
        "5",
        // Long enough for several frames while measuring (indicatif draws at most 20 a second).
        "--min-seconds",
        "0.5",
    ]);
    assert!(status.success(), "{drawn}");
    // int8[torch] and the mixed int8[torch]+fp32[1] beside it, as the rows name them.
    let named = |label: &str| {
        drawn.match_indices(&format!("{label} ")).any(|(i, m)| {
            let rest = &drawn[i + m.len()..];
            let number = rest.split(' ').next().unwrap_or("");
            number.parse::<f64>().is_ok() && rest[number.len()..].starts_with(" ms")
        })
    };
    assert!(named("int8[torch]+fp32[1]"), "no sample of int8[torch]+fp32[1] in the progress bar: {drawn}");
    // Both runners are counted from the start: 2 x (2 warm-up + 5 runs).
    let frames = bar_positions(&drawn);
    assert_eq!(frames.first().map(|f| f.1), Some(14), "frames (pos, len): {frames:?}");
}
