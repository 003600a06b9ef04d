//! Hostile inputs at every entry point: each gets a result or an error that names the file and
//! the problem — never a panic, never an unbounded allocation, never executed code.

mod common;

use std::io::Cursor;
use std::panic::catch_unwind;
use std::path::Path;
use std::process::Command;

use candle_core::Device;
use common::*;
use image::{DynamicImage, ImageFormat, RgbImage};
use vit_workbench::model::{Model, ModelFiles};
use vit_workbench::preprocess::{MAX_IMAGE_SIDE, decode_image};

fn png_chunk(t: &[u8], d: &[u8]) -> Vec<u8> {
    let mut c = (d.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(t);
    c.extend_from_slice(d);
    let mut crc = 0xffff_ffffu32;
    for &b in t.iter().chain(d) {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    c.extend_from_slice(&(!crc).to_be_bytes());
    c
}

#[test]
fn a_decompression_bomb_header_is_refused_before_allocating() {
    // A 100000 x 100000 RGB PNG header (30 GB of pixels) with a tiny body.
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(png_chunk(b"IEND", &[]));
    let start = std::time::Instant::now();
    let err = format!("{:#}", decode_image(&png).unwrap_err());
    assert!(err.to_lowercase().contains("limit") || err.contains("dimension"), "{err}");
    assert!(start.elapsed().as_secs() < 2, "took too long: it allocated");
    // The limit still admits wide panoramas up to the stated side.
    let wide = DynamicImage::ImageRgb8(RgbImage::new(MAX_IMAGE_SIDE, 2));
    assert_eq!(decode_image(&encode(&wide, ImageFormat::Png)).unwrap().dimensions(), (MAX_IMAGE_SIDE, 2));
    let too_wide = DynamicImage::ImageRgb8(RgbImage::new(MAX_IMAGE_SIDE + 1, 2));
    assert!(decode_image(&encode(&too_wide, ImageFormat::Png)).is_err());
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

#[test]
fn truncated_and_corrupt_files_of_every_format_never_panic() {
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 77])));
    let formats =
        [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Bmp, ImageFormat::Gif, ImageFormat::Tiff];
    let mut outcomes = Vec::new();
    for format in formats {
        let bytes = encode(&img, format);
        for cut in [0usize, 8, 16, 64, bytes.len() / 2, bytes.len() - 1] {
            let data = bytes[..cut].to_vec();
            let r = catch_unwind(|| decode_image(&data).map(|i| i.dimensions()).map_err(|e| format!("{e:#}")));
            let r = r.unwrap_or_else(|_| panic!("{format:?} cut at {cut} panicked"));
            if let Err(e) = &r {
                assert!(!e.is_empty());
            }
            outcomes.push((format, cut, r.is_ok()));
        }
        // Flipped bytes in the body.
        let mut flipped = bytes.clone();
        for i in (bytes.len() / 3..bytes.len()).step_by(7) {
            flipped[i] ^= 0x5a;
        }
        let r = catch_unwind(|| decode_image(&flipped).map(|i| i.dimensions()).map_err(|e| format!("{e:#}")));
        assert!(r.is_ok(), "{format:?} with flipped bytes panicked");
    }
    // The empty and header-only cuts are always errors.
    assert!(outcomes.iter().filter(|o| o.1 <= 8).all(|o| !o.2));
}

fn load_err(dir: &Path) -> String {
    let files = ModelFiles::from_dir(dir).unwrap();
    format!("{:#}", Model::load("hostile", &files, None, &Device::Cpu).unwrap_err())
}

/// A safetensors file from (name, dtype, shape, bytes) entries, with a header we control.
fn safetensors(entries: &[(&str, &str, Vec<usize>, usize, usize)], data: &[u8]) -> Vec<u8> {
    let header: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(n, dt, shape, a, b)| {
            (n.to_string(), serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [a, b]}))
        })
        .collect();
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

#[test]
fn checkpoints_that_lie_are_refused_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("timm_vit", &m);
    let w = m.join("model.safetensors");
    // A header whose offsets point past the end of the file.
    std::fs::write(&w, safetensors(&[("cls_token", "F32", vec![1, 1, 32], 0, 4_000_000)], &[0u8; 128])).unwrap();
    let e = load_err(&m);
    assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{e}");
    // A header claiming an absurd length.
    let mut absurd = (u64::MAX / 2).to_le_bytes().to_vec();
    absurd.extend_from_slice(b"{}");
    std::fs::write(&w, absurd).unwrap();
    assert!(load_err(&m).contains("model.safetensors"));
    // Integer weights where floats belong.
    std::fs::write(&w, safetensors(&[("cls_token", "I64", vec![1, 1, 32], 0, 256)], &[0u8; 256])).unwrap();
    let e = load_err(&m);
    assert!(e.contains("cls_token") && e.contains("dtype"), "{e}");
    // A plausible file with one tensor only: the rest are named as missing.
    std::fs::write(&w, safetensors(&[("cls_token", "F32", vec![1, 1, 32], 0, 128)], &[0u8; 128])).unwrap();
    let e = load_err(&m);
    assert!(e.contains("missing tensor"), "{e}");
}

#[test]
fn extra_tensors_are_refused_and_missing_ones_named() {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("timm_vit", &m);
    let w = m.join("model.safetensors");
    let mut t: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    t.insert(
        "blocks.0.ls1.gamma".into(),
        candle_core::Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, &w).unwrap();
    let e = load_err(&m);
    assert!(e.contains("unexpected tensor") && e.contains("blocks.0.ls1.gamma"), "{e}");
    t.remove("blocks.0.ls1.gamma");
    t.remove("blocks.1.mlp.fc2.bias");
    candle_core::safetensors::save(&t, &w).unwrap();
    let e = load_err(&m);
    assert!(e.contains("missing tensor `blocks.1.mlp.fc2.bias`"), "{e}");
}

#[test]
fn nan_weights_load_with_a_warning() {
    let Some(_) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("timm_vit", &m);
    let w = m.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let nan = candle_core::Tensor::new(&[f32::NAN; 64 * 32], &Device::Cpu).unwrap().reshape((64, 32)).unwrap();
    t.insert("blocks.0.mlp.fc1.weight".into(), nan);
    candle_core::safetensors::save(&t, &w).unwrap();
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let out =
        Command::new(bin()).args(["classify", img.to_str().unwrap(), "--model", m.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("non-finite") && stderr.contains("blocks.0.fc1.weight"),
        "{stderr}"
    );
}

#[test]
fn absurd_configs_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("hf_vit", &m);
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    for (from, to, needle) in [
        ("\"hidden_size\": 32", "\"hidden_size\": 1000000000", "hidden size"),
        ("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 100000", "number of layers"),
        ("\"num_attention_heads\": 2", "\"num_attention_heads\": 3", "not divisible"),
        ("\"patch_size\": 8", "\"patch_size\": 7", "multiple of patch size"),
        ("\"hidden_size\": 32", "\"hidden_size\": -5", "hidden_size"),
    ] {
        assert!(cfg.contains(from), "{from}");
        std::fs::write(m.join("config.json"), cfg.replace(from, to)).unwrap();
        let start = std::time::Instant::now();
        let e = load_err(&m);
        assert!(e.contains("config.json") && e.contains(needle), "{to}: {e}");
        assert!(start.elapsed().as_millis() < 500);
    }
}

#[test]
fn a_pickle_that_would_run_code_is_refused_and_runs_nothing() {
    let marker = Path::new("/tmp/vit-workbench-pwned");
    let _ = std::fs::remove_file(marker);
    let e = load_err(&fixture("hostile/evil_pickle"));
    assert!(e.contains("pytorch_model.bin"), "{e}");
    assert!(!marker.exists(), "the pickle was executed");
}

#[test]
fn an_unwritable_cache_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let hub = vit_workbench::hub::Hub {
        cache_dir: file.join("hub"),
        offline: false,
        endpoint: Some("http://127.0.0.1:9".into()),
        revision: None,
        token: None,
    };
    let e = format!("{:#}", hub.fetch_model("acme/tiny", None, &mut |_| {}).unwrap_err());
    assert!(e.contains("acme/tiny") && e.contains("config.json"), "{e}");
}

#[test]
fn a_cmyk_jpeg_decodes_to_its_colours() {
    // 24x16: left half red, right half blue, saved by PIL as a CMYK JPEG.
    let img = vit_workbench::preprocess::load_image(&fixture("hostile/cmyk.jpg")).unwrap();
    assert_eq!(img.dimensions(), (24, 16));
    let (left, right) = (img.get_pixel(2, 8).0, img.get_pixel(20, 8).0);
    assert!(left[0] > 150 && left[2] < 90, "left should be red: {left:?}");
    assert!(right[2] > 150 && right[0] < 90, "right should be blue: {right:?}");
}

// ---- hardening round 2 (issue 13) ----------------------------------------------------------

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Output, Stdio};

fn run_bin(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One non-empty line on stderr, a failure exit (not a signal), no panic.
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    let e = stderr_of(o);
    assert!(o.status.code().is_some_and(|c| c != 0 && c != 101), "status {:?}: {e}", o.status);
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "`{n}` not in: {e}");
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

/// A `bench` of the tiny fixture that measures as little as possible.
fn quick_bench(extra: &[&str]) -> Output {
    quick_bench_of(&fixture("timm_vit"), extra)
}

fn quick_bench_of(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["bench", "--models", model.to_str().unwrap(), "--variants", "fp32", "--runs", "1"];
    args.extend(["--warmup", "0", "--min-seconds", "0"]);
    args.extend(extra);
    run_bin(&args)
}

#[test]
fn outputs_that_are_not_regular_files_are_left_exactly_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("timm_vit");
    let fifo = dir.path().join("fifo.csv");
    mkfifo(&fifo);
    // A device node (as root, mknod makes a /dev/full twin; otherwise a link to /dev/null, which
    // resolves to a device just the same).
    let device = dir.path().join("full.csv");
    let c = std::ffi::CString::new(device.to_str().unwrap()).unwrap();
    let made_node = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 7)) } == 0;
    if !made_node {
        std::os::unix::fs::symlink("/dev/null", &device).unwrap();
    }
    for target in [&fifo, &device] {
        for (what, out) in [
            ("bench --csv", quick_bench(&["--csv", target.to_str().unwrap()])),
            (
                "export --out",
                run_bin(&[
                    "export",
                    "--model",
                    model.to_str().unwrap(),
                    "--variant",
                    "int8",
                    "--out",
                    target.to_str().unwrap(),
                ]),
            ),
        ] {
            assert_one_line_error(&out, &[target.to_str().unwrap(), "not a regular file"]);
            let ft = std::fs::metadata(target).unwrap().file_type();
            assert!(ft.is_fifo() || ft.is_char_device(), "{what} replaced {}", target.display());
        }
    }
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    if made_node {
        assert!(std::fs::symlink_metadata(&device).unwrap().file_type().is_char_device());
    }
    // Nothing else was left in the folder (no temporaries).
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn a_symlinked_output_is_written_through_and_permissions_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.csv");
    std::fs::write(&real, "old").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink("real.csv", &link).unwrap();
    let out = quick_bench(&["--csv", link.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert!(std::fs::read_to_string(&real).unwrap().starts_with("model,variant,"), "the target was not written");
    assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o600);
    // A read-only report is refused, not silently replaced (as root too).
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::write(dir.path().join("ro.csv"), "keep").unwrap();
    let ro = dir.path().join("ro.csv");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = quick_bench(&["--csv", ro.to_str().unwrap()]);
    assert_one_line_error(&out, &["ro.csv", "read-only"]);
    assert_eq!(std::fs::read_to_string(&ro).unwrap(), "keep");
    assert_eq!(std::fs::metadata(&ro).unwrap().permissions().mode() & 0o777, 0o444);
}

#[test]
fn an_output_that_is_an_input_or_named_twice_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("timm_vit", &m);
    let weights = m.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let out = quick_bench_of(&m, &["--csv", weights.to_str().unwrap()]);
    assert_one_line_error(&out, &["model.safetensors", "input"]);
    let out =
        run_bin(&["export", "--model", m.to_str().unwrap(), "--variant", "fp32", "--out", weights.to_str().unwrap()]);
    assert_one_line_error(&out, &["model.safetensors", "input"]);
    assert_eq!(std::fs::read(&weights).unwrap(), before, "the model was overwritten");
    // An image given to bench is an input too.
    let img = dir.path().join("img.png");
    std::fs::write(&img, encode(&DynamicImage::ImageRgb8(RgbImage::new(40, 40)), ImageFormat::Png)).unwrap();
    let out = quick_bench(&["--images", img.to_str().unwrap(), "--raw", img.to_str().unwrap()]);
    assert_one_line_error(&out, &["img.png", "input"]);
    // The same file for two reports.
    let f = dir.path().join("r.out");
    let out = quick_bench(&["--csv", f.to_str().unwrap(), "--json", f.to_str().unwrap()]);
    assert_one_line_error(&out, &["--json", "--csv", "same file"]);
    assert!(!f.exists());
    // A missing output folder is noticed before the model is even looked for.
    let out = Command::new(bin())
        .args(["export", "--offline", "--model", "acme/not-cached", "--out", "/nonexistent-dir/x.safetensors"])
        .env("HF_HUB_CACHE", dir.path().join("empty-cache"))
        .output()
        .unwrap();
    assert_one_line_error(&out, &["/nonexistent-dir", "does not exist"]);
}

#[test]
fn stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("report.csv");
    // A pid that is not running (pid_max is below 2^22 on Linux) and one that is (ours).
    let dead = dir.path().join(".report.csv.tmp-4194303");
    let alive = dir.path().join(format!(".report.csv.tmp-{}", std::process::id()));
    std::fs::write(&dead, "half an export").unwrap();
    std::fs::write(&alive, "being written").unwrap();
    vit_workbench::fsutil::write_atomic(&target, b"new").unwrap();
    assert!(!dead.exists(), "the stale temporary was left");
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    let _ = alive;
}

/// Run by the test below in a child process (it is killed with SIGINT midway).
#[test]
#[ignore = "helper: run by an_interrupted_write_removes_its_temporary"]
fn helper_slow_atomic_write() {
    let target = std::path::PathBuf::from(std::env::var("VITWB_SLOW_TARGET").unwrap());
    let _ = vit_workbench::fsutil::write_atomic_with(&target, |f| {
        use std::io::Write;
        f.write_all(b"partial")?;
        std::thread::sleep(std::time::Duration::from_secs(30));
        Ok(())
    });
}

#[test]
fn an_interrupted_write_removes_its_temporary() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.bin");
    std::fs::write(&target, "old").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_slow_atomic_write", "--nocapture"])
        .env("VITWB_SLOW_TARGET", &target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = dir.path().join(format!(".out.bin.tmp-{}", child.id()));
    let start = std::time::Instant::now();
    while !tmp.exists() {
        assert!(start.elapsed().as_secs() < 20, "the helper never started writing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(!tmp.exists(), "the temporary survived SIGINT");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
}

/// `sh -c 'ulimit -v 2000000; exec vit-workbench ARGS'`: a 2 GB address-space limit.
fn run_limited(args: &[&str]) -> (Output, std::time::Duration) {
    let start = std::time::Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2000000 && exec \"$0\" \"$@\"")
        .arg(bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    (out, start.elapsed())
}

/// The timm fixture with a recipe resizing the shorter side to 248 (crop_pct 32/248).
fn fixture_resizing_to_248(to: &Path) {
    copy_fixture("timm_vit", to);
    let cfg = std::fs::read_to_string(to.join("config.json")).unwrap();
    assert!(cfg.contains("\"crop_pct\": 0.875"));
    std::fs::write(to.join("config.json"), cfg.replace("\"crop_pct\": 0.875", "\"crop_pct\": 0.129")).unwrap();
}

fn png_header_only(w: u32, h: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &[0x78, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

#[test]
fn memory_bombs_end_with_a_one_line_error_within_5_s_under_a_2_gb_limit() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    fixture_resizing_to_248(&m);
    let ms = m.to_str().unwrap();
    // A 1x16384 strip: resizing its shorter side to 248 would make a 248x4063232 image (3 GB).
    let strip = dir.path().join("strip.png");
    let img = RgbImage::from_fn(1, 16384, |_, y| image::Rgb([(y % 251) as u8, 90, 200]));
    std::fs::write(&strip, encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png)).unwrap();
    let (out, took) = run_limited(&["classify", strip.to_str().unwrap(), "--model", ms, "--top", "1"]);
    assert!(out.status.success(), "the strip is a valid image: {}", stderr_of(&out));
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
    // A 16384x16384 RGBA16 PNG header (2 GiB of pixels), and 16000x16000 RGBA8 (977 MiB).
    for (name, png) in
        [("rgba16.png", png_header_only(16384, 16384, 16, 6)), ("rgba8.png", png_header_only(16000, 16000, 8, 6))]
    {
        let p = dir.path().join(name);
        std::fs::write(&p, png).unwrap();
        let (out, took) = run_limited(&["classify", p.to_str().unwrap(), "--model", ms]);
        assert_one_line_error(&out, &[name, "512 MiB limit"]);
        assert!(took.as_secs_f64() < 5.0, "{name} took {took:?}");
    }
    // A pickle declaring classifier.weight as [10^9, 192] (768 GB).
    let huge = fixture("hostile/huge_pickle");
    let (out, took) = run_limited(&["classify", strip.to_str().unwrap(), "--model", huge.to_str().unwrap()]);
    assert_one_line_error(&out, &["pytorch_model.bin", "classifier.weight", "[1000000000, 192]"]);
    assert!(took.as_secs_f64() < 5.0, "took {took:?}");
    // /dev/zero (endless) and a FIFO (would block forever) are not image files.
    let fifo = dir.path().join("pipe.jpg");
    mkfifo(&fifo);
    for (p, kind) in [(Path::new("/dev/zero"), "device"), (fifo.as_path(), "FIFO")] {
        let (out, took) = run_limited(&["classify", p.to_str().unwrap(), "--model", ms]);
        assert_one_line_error(&out, &[p.to_str().unwrap(), kind]);
        assert!(took.as_secs_f64() < 5.0, "{} took {took:?}", p.display());
    }
}

#[test]
fn cropping_before_resizing_gives_the_same_pixels_as_resizing_then_cropping() {
    use vit_workbench::preprocess::{Crop, CropRounding, Filter, Recipe, Resize, pil_resize};
    let img = RgbImage::from_fn(97, 61, |x, y| image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (x ^ y) as u8 * 4]));
    for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
        for (resize, (nw, nh)) in [(Resize::ShorterSide(50), (79, 50)), (Resize::ShorterSide(130), (206, 130))] {
            for rounding in [CropRounding::HalfEven, CropRounding::Floor] {
                let crop = Crop { width: 33, height: 27, rounding };
                let recipe = Recipe { resize, filter, crop: Some(crop), mean: [0.5; 3], std: [0.5; 3] };
                let got = recipe.resize_and_crop(&img).unwrap();
                let full = pil_resize(&img, nw, nh, filter);
                let off = |outer: u32, inner: u32| {
                    let (m, half) = (outer - inner, (outer - inner) / 2);
                    match rounding {
                        CropRounding::Floor => half,
                        CropRounding::HalfEven if m % 2 == 1 && half % 2 == 1 => half + 1,
                        CropRounding::HalfEven => half,
                    }
                };
                let want = image::imageops::crop_imm(&full, off(nw, 33), off(nh, 27), 33, 27).to_image();
                assert_eq!(got, want, "{filter:?} {resize:?} {rounding:?}");
            }
        }
    }
}

#[test]
fn recipe_numbers_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    copy_fixture("timm_vit", &m);
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    let std_block = "\"std\": [\n      0.229,\n      0.224,\n      0.225\n    ]";
    assert!(cfg.contains(std_block));
    for (from, to, needle) in [
        (std_block, "\"std\": [0.229, 0, 0.225]", "std[1] = 0"),
        ("\"crop_pct\": 0.875", "\"crop_pct\": 1e-9", "crop_pct"),
        ("\"crop_pct\": 0.875", "\"crop_pct\": 0.01", "crop_pct"),
        ("\"crop_pct\": 0.875", "\"crop_pct\": \"wide\"", "`crop_pct` must be a number"),
    ] {
        std::fs::write(m.join("config.json"), cfg.replace(from, to)).unwrap();
        let e = load_err(&m);
        assert!(e.contains("config.json") && e.contains(needle), "{to}: {e}");
    }
}

/// A JPEG of a textured 256x192 image, and the same file cut to `keep` of its bytes.
fn jpeg_and_cut(keep: f64) -> (Vec<u8>, Vec<u8>) {
    let img = RgbImage::from_fn(256, 192, |x, y| image::Rgb([(x ^ y) as u8, (x * 3 + y) as u8, (y * 5) as u8]));
    let full = encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
    let cut = full[..(full.len() as f64 * keep) as usize].to_vec();
    (full, cut)
}

#[test]
fn a_truncated_jpeg_is_an_error_unless_allowed_and_then_marked() {
    let (full, cut) = jpeg_and_cut(0.3);
    assert!(decode_image(&full).is_ok());
    let e = format!("{:#}", decode_image(&cut).unwrap_err());
    assert!(e.contains("image file is truncated") && e.contains("did not decode"), "{e}");
    let loaded = vit_workbench::preprocess::decode_image_with(&cut, true).unwrap();
    assert!(loaded.truncated.is_some());
    // Formats whose decoders fail on a cut-off file say so too (BMP: how many bytes are missing).
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 77])));
    for (format, needle) in
        [(ImageFormat::Png, "PNG data stops"), (ImageFormat::Bmp, "bytes ("), (ImageFormat::Tiff, "TIFF")]
    {
        let bytes = encode(&img, format);
        let e = format!("{:#}", decode_image(&bytes[..bytes.len() / 2]).unwrap_err());
        assert!(e.contains("image file is truncated") && e.contains(needle), "{format:?}: {e}");
    }
    // A JPEG with bytes after its end marker is complete.
    let mut trailing = full.clone();
    trailing.extend_from_slice(b"camera maker notes");
    assert!(decode_image(&trailing).is_ok());

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.jpg");
    std::fs::write(&p, &cut).unwrap();
    let model = fixture("timm_vit");
    let (ps, ms) = (p.to_str().unwrap(), model.to_str().unwrap());
    let out = run_bin(&["classify", ps, "--model", ms]);
    assert_one_line_error(&out, &["r.jpg", "image file is truncated", "bytes", "rows"]);
    for cmd in [vec!["compare", ps, "--model", ms, "--variants", "int8"], {
        let mut v = vec!["bench", "--images", ps, "--models", ms, "--variants", "fp32", "--runs", "1"];
        v.extend(["--warmup", "0", "--min-seconds", "0"]);
        v
    }] {
        assert_one_line_error(&Command::new(bin()).args(&cmd).output().unwrap(), &["r.jpg", "truncated"]);
    }
    let out = run_bin(&["classify", ps, "--model", ms, "--allow-truncated", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["truncated"].as_str().is_some_and(|t| t.contains("did not decode")), "{v}");
    assert!(stderr_of(&out).contains("warning") && stderr_of(&out).contains("truncated"));
}

#[test]
fn a_closed_stdout_ends_quietly_and_a_full_disk_is_one_line() {
    // `vit-workbench models | head -0`: the reader is gone before anything is written.
    let mut child = Command::new(bin()).arg("models").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, stderr_of(&out));
    assert!(out.stderr.is_empty(), "{}", stderr_of(&out));
    // Through a shell pipe as a user types it.
    let out = Command::new("sh").arg("-c").arg("\"$0\" models | head -1").arg(bin()).output().unwrap();
    assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    // stdout on /dev/full.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(bin()).arg("models").stdout(full).output().unwrap();
    assert_one_line_error(&out, &["No space left on device"]);
}

/// The timm fixture with `tensor` replaced by one full of `value`.
fn fixture_with(to: &Path, tensor: &str, value: f32) {
    copy_fixture("timm_vit", to);
    let w = to.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let shape = t[tensor].dims().to_vec();
    let n: usize = shape.iter().product();
    t.insert(tensor.into(), candle_core::Tensor::new(vec![value; n], &Device::Cpu).unwrap().reshape(shape).unwrap());
    candle_core::safetensors::save(&t, &w).unwrap();
}

#[test]
fn non_finite_weights_are_refused_for_quantizing_exporting_and_as_logits() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    fixture_with(&m, "blocks.1.mlp.fc1.weight", f32::NAN);
    let ms = m.to_str().unwrap();
    let img = fixture("preprocess/hf_vit__chelsea.png");
    // fp32 classify: NaN logits are an error naming where they appear (and the load warns).
    let out = run_bin(&["classify", img.to_str().unwrap(), "--model", ms]);
    let e = stderr_of(&out);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("warning") && e.contains("blocks.1.fc1.weight"), "{e}");
    assert!(e.contains("NaN/Inf") && e.contains("block 1 of 2"), "{e}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("NaN"));
    // Quantizing and exporting name the tensor.
    for variant in ["fp32", "int8", "mobile"] {
        let out_file = dir.path().join(format!("{variant}.safetensors"));
        let out = run_bin(&["export", "--model", ms, "--variant", variant, "--out", out_file.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(stderr_of(&out).contains("blocks.1.fc1.weight"), "{variant}: {}", stderr_of(&out));
        assert!(!out_file.exists());
    }
    // Inf in a bias (the case whose mobile export used to be written and then not load).
    let inf = dir.path().join("inf");
    fixture_with(&inf, "head.bias", f32::INFINITY);
    let out_file = dir.path().join("inf.safetensors");
    let out = run_bin(&[
        "export",
        "--model",
        inf.to_str().unwrap(),
        "--variant",
        "mobile",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(stderr_of(&out).contains("heads.0.bias"), "{}", stderr_of(&out));
    assert!(!out_file.exists());
}

/// (name, data range) of every tensor of a safetensors file.
fn tensor_ranges(bytes: &[u8]) -> Vec<(String, std::ops::Range<usize>)> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            (k.clone(), 8 + n + o[0].as_u64().unwrap() as usize..8 + n + o[1].as_u64().unwrap() as usize)
        })
        .collect()
}

#[test]
fn a_flipped_byte_in_any_exported_tensor_is_refused_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let files = ModelFiles::from_dir(&fixture("timm_vit")).unwrap();
    let fp32 = Model::load("fixture", &files, None, &Device::Cpu).unwrap();
    for variant in [
        vit_workbench::quant::Variant::Fp32,
        vit_workbench::quant::Variant::Int8,
        vit_workbench::quant::Variant::Mobile,
    ] {
        let m = fp32.to_variant(variant, Default::default()).unwrap();
        let path = dir.path().join(format!("{variant}.safetensors"));
        vit_workbench::quant::export::export(&m, &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        vit_workbench::quant::export::load(&path, &Device::Cpu).unwrap();
        let ranges = tensor_ranges(&good);
        assert!(ranges.len() > 20);
        for (name, range) in ranges {
            let mut bad = good.clone();
            bad[range.start + range.len() / 2] ^= 0x10;
            let p = dir.path().join("flipped.safetensors");
            std::fs::write(&p, &bad).unwrap();
            let e = format!("{:#}", vit_workbench::quant::export::load(&p, &Device::Cpu).unwrap_err());
            assert!(e.contains(&format!("tensor `{name}` is corrupt")), "{variant} {name}: {e}");
        }
    }
}

#[test]
fn flags_out_of_range_are_refused_by_the_parser() {
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let i = img.to_str().unwrap();
    for args in [
        vec!["classify", i, "--threads", "100000"],
        vec!["classify", i, "--threads", "0"],
        vec!["classify", i, "--top", "0"],
        vec!["bench", "--runs", "0"],
        vec!["bench", "--max-runs", "0"],
        vec!["bench", "--min-seconds=-1"],
        vec!["bench", "--min-seconds", "nan"],
        vec!["bench", "--min-seconds", "inf"],
        vec!["classify", i, "--device", "tpu"],
        vec!["classify", i, "--variant", "int4"],
    ] {
        let out = run_bin(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains("invalid value"), "{args:?}: {}", stderr_of(&out));
    }
    let model = fixture("timm_vit");
    let out = run_bin(&["bench", "--models", model.to_str().unwrap(), "--warmup", "1000000", "--max-runs", "2"]);
    assert_one_line_error(&out, &["--warmup 1000000", "--max-runs 2"]);
    let help = String::from_utf8_lossy(&run_bin(&["classify", "--help"]).stdout).into_owned();
    assert!(help.contains("fp32, int8, mobile") && help.contains("cpu, cuda"), "{help}");
}

#[test]
fn logging_follows_rust_log_and_verbosity_flags() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    fixture_with(&m, "blocks.0.mlp.fc2.weight", f32::INFINITY);
    let ms = m.to_str().unwrap();
    let exported = dir.path().join("fp32.safetensors");
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let classify = |extra: &[&str], env: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["classify", img.to_str().unwrap(), "--model", ms]).args(extra).env_remove("RUST_LOG");
        if let Some(spec) = env {
            c.env("RUST_LOG", spec);
        }
        stderr_of(&c.output().unwrap())
    };
    // Warnings by default; -q leaves only the error.
    assert!(classify(&[], None).contains("warning: "));
    let quiet = classify(&["-q"], None);
    assert!(!quiet.contains("warning") && quiet.contains("error: "), "{quiet}");
    // Debug records (ours: checksum verification) with -vv or RUST_LOG, not by default.
    let good = fixture("timm_vit");
    let out = run_bin(&[
        "export",
        "--model",
        good.to_str().unwrap(),
        "--variant",
        "fp32",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let run = |extra: &[&str], env: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["classify", img.to_str().unwrap(), "--model", exported.to_str().unwrap()])
            .args(extra)
            .env_remove("RUST_LOG");
        if let Some(spec) = env {
            c.env("RUST_LOG", spec);
        }
        stderr_of(&c.output().unwrap())
    };
    assert!(!run(&[], None).contains("checksums"));
    assert!(run(&["-vv"], None).contains("tensor checksums"));
    assert!(run(&[], Some("vit_workbench=debug")).contains("tensor checksums"));
}

/// The exported file with its metadata edited by `edit` (tensor data untouched).
fn with_metadata(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header["__metadata__"].as_object_mut().unwrap());
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

#[test]
fn version_1_exports_without_checksums_load_with_a_warning_and_version_2_ones_need_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("int8.safetensors");
    let out = run_bin(&["export", "--model", fixture("timm_vit").to_str().unwrap(), "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let good = std::fs::read(&path).unwrap();
    let v1 = dir.path().join("v1.safetensors");
    std::fs::write(
        &v1,
        with_metadata(&good, |m| {
            m.remove("tensor_xxh3");
            m.insert("format_version".into(), "1".into());
        }),
    )
    .unwrap();
    let img = fixture("preprocess/hf_vit__chelsea.png");
    let out = run_bin(&["classify", img.to_str().unwrap(), "--variant", "int8", "--model", v1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("warning") && stderr_of(&out).contains("no checksums"), "{}", stderr_of(&out));
    let v2 = dir.path().join("v2.safetensors");
    std::fs::write(&v2, with_metadata(&good, |m| drop(m.remove("tensor_xxh3")))).unwrap();
    let out = run_bin(&["classify", img.to_str().unwrap(), "--variant", "int8", "--model", v2.to_str().unwrap()]);
    assert_one_line_error(&out, &["v2.safetensors", "checksums", "missing"]);
}
