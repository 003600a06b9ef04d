//! The command line: `classify`, `models`, `download`. Every failure is one line on stderr that
//! names the file and the problem, and a non-zero exit; nothing panics on bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::hub::{DownloadEvent, Hub};
use candle_core::Device;

use crate::model::{Prediction, device_from_name};
use crate::preprocess::{LoadedImage, load_image_with};
use crate::quant::metrics::compare_variants;
use crate::quant::sensitivity::KeepFp32;
use crate::quant::{QuantOptions, Scheme, Variant, export, parse_variants};
use crate::zoo::{DEFAULT_MODEL, ModelSource, ZOO, load_model_as_is};

#[derive(Parser, Debug)]
#[command(
    name = "vit-workbench",
    version,
    about = "Classify images with ViT/DeiT and measure what quantization costs and loses.",
    long_about = "Without a command, opens the workbench window (on IMAGE, if given).",
    // Not `args_conflicts_with_subcommands`: with it, a global flag before the command
    // (`--threads 2 bench ...`) made clap read the command's name as the window's IMAGE.
    // Window-only options given with a command are refused in `run` instead.
    subcommand_precedence_over_arg = true
)]
pub struct Cli {
    /// Image to open in the window.
    pub image: Option<PathBuf>,
    /// Model for the window: hub id, folder or exported file.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Variant for the window.
    #[arg(long, value_parser = variant_parser())]
    pub variant: Option<Variant>,
    /// Second variant of the window's compare view (fp32, int8, mobile, or none).
    #[arg(long)]
    pub compare: Option<String>,
    /// Save a PNG of the window once the first result is shown, then exit.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Run a benchmark in the window once the first result is shown.
    #[arg(long)]
    pub benchmark: bool,
    /// Rank the layers by sensitivity in the window once the first result is shown (the
    /// Sensitivity view), and keep the K most sensitive fp32 (0: none). With --benchmark, the
    /// benchmark follows (mixed variants beside the plain ones) and the Frontier view is shown.
    #[arg(long, value_name = "K")]
    pub sensitivity: Option<usize>,
    /// Use only the local Hugging Face cache (same as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    pub offline: bool,
    /// Branch, tag or commit of hub models (default: main). Private and gated repos need a
    /// token: HF_TOKEN, or the token file `huggingface-cli login` writes.
    #[arg(long, global = true)]
    pub revision: Option<String>,
    /// Threads for every kernel (default: physical cores; at most 4x the logical cores). `bench`
    /// also takes a list (`1,2`): each count measured into its own rows.
    #[arg(long, global = true, value_parser = parse_thread_counts)]
    pub threads: Option<ThreadCounts>,
    /// More log output on stderr: -v info (and dependencies' warnings), -vv debug (dependencies'
    /// too), -vvv trace.
    /// RUST_LOG, when set, overrides this (env_logger syntax, e.g. RUST_LOG=hf_hub=debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors on stderr (no warnings).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the top-K labels of each image.
    Classify {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Hub id, local folder or exported file.
        #[arg(long, short, default_value = DEFAULT_MODEL)]
        model: String,
        /// Labels to print per image (at least 1; more than the model's classes prints them all).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        top: u64,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// Device to run on (cuda:N picks a GPU).
        #[arg(long, default_value = "cpu", value_parser = device_parser())]
        device: String,
        /// Weights to classify with (default: fp32, or the variant an exported file holds).
        #[arg(long, value_parser = variant_parser())]
        variant: Option<Variant>,
        /// Classify truncated image files from what decoded (marked truncated) instead of refusing them.
        #[arg(long)]
        allow_truncated: bool,
        /// Layers left fp32 in the int8/mobile variant (mixed precision): names like
        /// blocks.0.fc2,heads.0, `all`, `none`, `auto:K` (the K most sensitive on these images) or
        /// `auto:kl=X` (the most sensitive until the mean KL vs fp32 is at most X).
        #[arg(long, value_name = "LAYERS")]
        keep_fp32: Option<String>,
        /// Quantization scheme of int8/mobile: default, torch (PyTorch quantize_dynamic, x86), or
        /// a list like weights=per-tensor,acts=per-tensor,bits=7,acts=asym (README: Schemes).
        #[arg(long, value_parser = parse_scheme)]
        scheme: Option<Scheme>,
    },
    /// Write a variant of a model as one self-contained file (safetensors + metadata).
    Export {
        /// Hub id, local folder or fp32 export to convert.
        #[arg(long, short, default_value = DEFAULT_MODEL)]
        model: String,
        /// Variant to write.
        #[arg(long, default_value = "int8", value_parser = variant_parser())]
        variant: Variant,
        /// File to write (replaced atomically; never a device, FIFO or one of the inputs).
        #[arg(long)]
        out: PathBuf,
        /// Layers left fp32 (mixed precision; recorded in the file): names like
        /// blocks.0.fc2,heads.0, `all`, `none`, `auto:K` or `auto:kl=X` (ranked on the built-in
        /// sample photo).
        #[arg(long, value_name = "LAYERS")]
        keep_fp32: Option<String>,
        /// Quantization scheme of int8/mobile: default, torch (PyTorch quantize_dynamic, x86), or
        /// a list like weights=per-tensor,acts=per-tensor,bits=7,acts=asym (README: Schemes).
        #[arg(long, value_parser = parse_scheme)]
        scheme: Option<Scheme>,
    },
    /// What each variant loses against fp32 on the same images: agreement, KL, per-layer error.
    Compare {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Hub id, local folder or fp32 export.
        #[arg(long, short, default_value = DEFAULT_MODEL)]
        model: String,
        /// Comma-separated from fp32, int8, mobile; fp32 is always the reference.
        #[arg(long, default_value = "fp32,int8,mobile")]
        variants: String,
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
        /// Use truncated image files from what decoded instead of refusing them.
        #[arg(long)]
        allow_truncated: bool,
        /// Also compare each quantized variant with these layers left fp32 (mixed precision):
        /// names like blocks.0.fc2,heads.0, `all`, `none`, `auto:K`, `auto:kl=X` (ranked on these images).
        #[arg(long, value_name = "LAYERS")]
        keep_fp32: Option<String>,
        /// Quantization scheme of int8/mobile; repeat it to compare schemes side by side: default, torch (PyTorch quantize_dynamic, x86), or
        /// a list like weights=per-tensor,acts=per-tensor,bits=7,acts=asym (README: Schemes).
        #[arg(long = "scheme", value_parser = parse_scheme)]
        schemes: Vec<Scheme>,
    },
    /// Rank every linear layer by what quantizing it costs: each quantized alone (the rest fp32)
    /// and kept fp32 alone (the rest quantized), scored against fp32 on the images.
    Sensitivity(SensitivityArgs),
    /// Measure latency, size and accuracy of variants; print a table, write CSV/JSON reports.
    Bench(BenchArgs),
    /// Accuracy of each variant on labelled images: a folder of class folders or a CSV `file,label`.
    Eval(EvalArgs),
    /// Where a forward's time goes: every stage of every block, per variant; a Chrome trace.
    Profile(ProfileArgs),
    /// Write each image with the explanation overlay drawn over the part the model saw, as the
    /// window draws it, at the image's own size.
    Explain(ExplainArgs),
    /// Measure each CPU kernel (int8 per SIMD path, f32 per SIMD path, attention, elementwise)
    /// on ViT-B/16 shapes against each path's measured register-only peak.
    Kernels {
        /// Minimum seconds of timed calls per kernel.
        #[arg(long, default_value_t = 1.0, value_parser = parse_seconds)]
        min_seconds: f64,
        /// Print the int8 kernel paths this CPU can run (values for VITWB_ISA), one a line, and exit.
        #[arg(long)]
        list_paths: bool,
    },
    /// Run a model on the CPU and on DEVICE over the same images: fp32 logit parity, int8/mobile
    /// top-1 agreement (exit status 1 when a bound is exceeded). Used by tools/gpu-check.sh.
    DeviceCheck(DeviceCheckArgs),
    /// Write random-weight checkpoints with real shapes (ViT-B/16, DeiT-Ti), for speed only.
    RandomModels {
        /// Folder to write `<name>/{config.json,model.safetensors}` into.
        #[arg(long, default_value = "target/bench-models")]
        out: PathBuf,
        /// Comma-separated: vit-base-patch16-224-random, deit-tiny-patch16-224-random, tiny-random.
        #[arg(long, default_value = "vit-base-patch16-224-random,deit-tiny-patch16-224-random")]
        presets: String,
    },
    /// List the model zoo and what is already cached.
    Models,
    /// Download a model into the Hugging Face cache.
    Download {
        /// Hub id (owner/name).
        model: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated hub ids, folders or exported files.
    #[arg(long, default_value = DEFAULT_MODEL)]
    models: String,
    /// Comma-separated from fp32, int8, mobile (default: all three; for an exported file, the
    /// variant it holds).
    #[arg(long)]
    variants: Option<String>,
    /// Image files or folders: timed on the first (batch) image(s); agreement over all of them.
    /// Without images a synthetic input is timed.
    #[arg(long, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Images per forward pass (1..=256); a comma-separated list (`1,8`) measures each into
    /// its own rows.
    #[arg(long, default_value = "1")]
    batch: String,
    /// Untimed warm-up runs per variant [default: 10, or --max-runs if lower; more than
    /// --max-runs is refused].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    warmup: Option<u64>,
    /// Minimum timed runs per variant (at least 1; --max-runs caps them).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    runs: u64,
    /// Minimum seconds of timed runs per variant (finite, >= 0).
    #[arg(long, default_value_t = 3.0, value_parser = parse_seconds)]
    min_seconds: f64,
    /// Maximum timed runs per variant (at least 1).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_runs: u64,
    /// Device to run on (cuda:N picks a GPU).
    #[arg(long, default_value = "cpu", value_parser = device_parser())]
    device: String,
    /// Write the report as CSV (schema in the README).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write every result, samples included, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the per-run samples as CSV.
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Use truncated image files from what decoded instead of refusing them.
    #[arg(long)]
    allow_truncated: bool,
    /// Also measure each quantized variant with these layers left fp32 (mixed precision; rows
    /// labelled e.g. int8+fp32[3], CSV column kept_fp32): names like blocks.0.fc2,heads.0, `all`,
    /// `auto:K`, `auto:kl=X` (ranked on --images, else on the built-in sample photo).
    #[arg(long, value_name = "LAYERS")]
    keep_fp32: Option<String>,
    /// Quantization scheme of int8/mobile; repeat it to measure several: default, torch (PyTorch quantize_dynamic, x86), or
    /// a list like weights=per-tensor,acts=per-tensor,bits=7,acts=asym (README: Schemes).
    #[arg(long = "scheme", value_parser = parse_scheme)]
    schemes: Vec<Scheme>,
}

#[derive(clap::Args, Debug)]
pub struct SensitivityArgs {
    /// Image files or folders to score on.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Hub id, local folder or fp32 export.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// The quantized variant whose layers are ranked.
    #[arg(long, default_value = "int8", value_parser = variant_parser())]
    variant: Variant,
    /// Write one row per layer as CSV (columns in the README).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Use truncated image files from what decoded instead of refusing them.
    #[arg(long)]
    allow_truncated: bool,
    /// Quantization scheme of the ranked variant: default, torch, or a list (README: Schemes).
    #[arg(long, value_parser = parse_scheme)]
    scheme: Option<Scheme>,
}

/// `--threads`: 1 up to 4x the logical cores (more only oversubscribes: a classify with 1000
/// threads took 14 s).
fn parse_threads(s: &str) -> std::result::Result<usize, String> {
    let max = 4 * num_cpus::get();
    let n: usize = s.trim().parse().map_err(|_| format!("`{s}` is not a whole number"))?;
    if n == 0 || n > max {
        return Err(format!("{n} is outside 1..={max} (4x this machine's {} logical cores)", num_cpus::get()));
    }
    Ok(n)
}

/// `--threads`: one count, or (for `bench`) a list of counts to sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadCounts(pub Vec<usize>);

impl ThreadCounts {
    /// The count the process's pools start with: the largest, so no sweep point lacks threads.
    pub fn largest(&self) -> usize {
        self.0.iter().copied().max().unwrap_or(1)
    }
}

/// `2` or `1,2`: each count as `--threads` takes it, none twice.
fn parse_thread_counts(s: &str) -> std::result::Result<ThreadCounts, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("`{s}` has an empty item"));
        }
        let n = parse_threads(item)?;
        if out.contains(&n) {
            return Err(format!("{n} is listed twice"));
        }
        out.push(n);
    }
    if out.is_empty() {
        return Err("no thread count given".into());
    }
    Ok(ThreadCounts(out))
}

/// A duration in seconds: finite and >= 0.
fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{v} is not a finite number of seconds >= 0"));
    }
    Ok(v)
}

/// `--scheme`: a preset or a list; a bad value names the valid ones.
fn parse_scheme(s: &str) -> std::result::Result<Scheme, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

/// fp32, int8 or mobile, listed in --help.
fn variant_parser() -> impl clap::builder::TypedValueParser<Value = Variant> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["fp32", "int8", "mobile"])
        .map(|s| s.parse::<Variant>().unwrap_or(Variant::Fp32))
}

/// cpu, cuda or cuda:N; cpu and cuda listed in --help.
fn device_parser() -> impl clap::builder::TypedValueParser<Value = String> {
    #[derive(Clone)]
    struct DeviceParser;
    impl clap::builder::TypedValueParser for DeviceParser {
        type Value = String;
        fn parse_ref(
            &self,
            cmd: &clap::Command,
            arg: Option<&clap::Arg>,
            value: &std::ffi::OsStr,
        ) -> std::result::Result<String, clap::Error> {
            let v = value.to_string_lossy();
            let ok = v == "cpu" || v == "cuda" || v.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
            if ok {
                return Ok(v.into_owned());
            }
            let mut e = clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd);
            e.insert(
                clap::error::ContextKind::InvalidArg,
                clap::error::ContextValue::String(arg.map(|a| a.to_string()).unwrap_or_default()),
            );
            e.insert(clap::error::ContextKind::InvalidValue, clap::error::ContextValue::String(v.into_owned()));
            e.insert(
                clap::error::ContextKind::ValidValue,
                clap::error::ContextValue::Strings(vec!["cpu".into(), "cuda".into(), "cuda:N".into()]),
            );
            Err(e)
        }
        fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
            Some(Box::new(["cpu", "cuda", "cuda:N"].into_iter().map(clap::builder::PossibleValue::new)))
        }
    }
    DeviceParser
}

/// `println!` that returns the write error (closed pipe, full disk) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).context("cannot write to stdout")?
    }};
}

/// `print!` that returns the write error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).context("cannot write to stdout")?
    }};
}

/// The log on stderr: warnings by default, `-v`/`-q` or `RUST_LOG` otherwise. Our warnings read
/// `warning: ...` as before; with -vv, dependencies' records (hf-hub, wgpu, eframe) show too.
fn init_logging(verbose: u8, quiet: bool) {
    use std::io::Write as _;
    let level = match (quiet, verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Warn,
        (false, 1) => log::LevelFilter::Info,
        (false, 2) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    // Dependencies (winit, wgpu, eframe, hf-hub) are one level quieter than ours until -vv:
    // their warnings about the X server or a software renderer are noise to a user.
    let dependencies = match (quiet, verbose) {
        (false, 0) => log::LevelFilter::Error,
        (false, 1) => log::LevelFilter::Warn,
        _ => level,
    };
    let mut builder = env_logger::Builder::new();
    builder.filter_level(dependencies);
    builder.filter_module("vit_workbench", level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(|buf, record| {
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        if record.target().starts_with("vit_workbench") && record.level() <= log::Level::Info {
            writeln!(buf, "{level}: {}", record.args())
        } else {
            writeln!(buf, "{level} [{}]: {}", record.target(), record.args())
        }
    });
    let _ = builder.try_init();
}

/// Whether `e` comes from writing to a closed pipe (`vit-workbench models | head -1`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

#[derive(clap::Args, Debug)]
pub struct DeviceCheckArgs {
    /// Image files or folders.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// An fp32 checkpoint: hub id or folder.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// The device compared with the CPU (cpu compares the CPU with itself: a test of the tool).
    #[arg(long, default_value = "cuda")]
    device: String,
    #[arg(long, default_value = "fp32,int8,mobile")]
    variants: String,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A folder with one sub-folder per class (named by synset id, label or class index), or a
    /// CSV list with the columns `file,label` (paths relative to the CSV).
    source: PathBuf,
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// Comma-separated; fp32 is the reference for the changes and flips.
    #[arg(long, default_value = "fp32,int8,mobile")]
    variants: String,
    /// Top-k accuracy besides top-1.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Evaluate at most N images, taken round-robin over the classes.
    #[arg(long)]
    limit: Option<usize>,
    /// Write one row per (model, variant) as CSV (columns in the README).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write everything, per-image predictions included, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    #[arg(long, default_value = "fp32,int8,mobile")]
    variants: String,
    /// Profiled (and un-profiled) runs per variant, after the warm-up.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed runs per variant first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Write a Chrome trace (chrome://tracing, ui.perfetto.dev): one event per stage per run.
    #[arg(long)]
    trace: Option<PathBuf>,
}

/// How `explain` computes its map.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExplainMethod {
    /// Class-specific gradient-weighted attention relevance (Chefer et al. 2021).
    Attribution,
    /// Attention rollout (class-agnostic).
    Rollout,
    /// One layer's class-token attention (class-agnostic).
    Raw,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionArg {
    Mean,
    Max,
    Min,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColormapArg {
    Inferno,
    Viridis,
}

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Hub id, folder or exported file.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// fp32, int8 or mobile (default: fp32, or the variant an exported file holds).
    #[arg(long)]
    variant: Option<Variant>,
    #[arg(long, value_enum, default_value = "attribution")]
    method: ExplainMethod,
    /// Class index to explain (attribution; default: the top-1 class).
    #[arg(long)]
    class: Option<usize>,
    /// Layer of the raw attention map (default: the last).
    #[arg(long)]
    layer: Option<usize>,
    /// Head of the raw attention map (default: the mean of the heads).
    #[arg(long)]
    head: Option<usize>,
    /// Rollout's head fusion.
    #[arg(long, value_enum, default_value = "max")]
    fusion: FusionArg,
    /// Rollout's share of the weakest attention weights dropped per layer, 0..0.99.
    #[arg(long, default_value_t = 0.9)]
    discard: f32,
    /// Opacity of the map, 0..1.
    #[arg(long, default_value_t = crate::explain::DEFAULT_OPACITY)]
    opacity: f32,
    #[arg(long, value_enum, default_value = "inferno")]
    colormap: ColormapArg,
    /// A .png file (one image), or a folder (created if missing) for `<stem>.<method>.png` files.
    #[arg(long, required = true)]
    out: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    init_logging(cli.verbose, cli.quiet);
    crate::kernels::init_threads(cli.threads.as_ref().map(ThreadCounts::largest));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away: nothing is wrong and nobody is left to tell (as ripgrep does).
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(problem) = crate::kernels::forced_path_problem() {
        anyhow::bail!(problem);
    }
    let mut hub = Hub::from_env(cli.offline);
    hub.revision = cli.revision.clone();
    // A bad screenshot path is said before a window opens and a model loads.
    if cli.command.is_none()
        && let Some(p) = &cli.screenshot
    {
        crate::fsutil::check_writable(p)?;
    }
    if cli.command.is_some() {
        let window_only = [
            ("IMAGE", cli.image.is_some()),
            ("--model", cli.model.is_some()),
            ("--variant", cli.variant.is_some()),
            ("--compare", cli.compare.is_some()),
            ("--screenshot", cli.screenshot.is_some()),
            ("--benchmark", cli.benchmark),
        ];
        if let Some((name, _)) = window_only.iter().find(|(_, given)| *given) {
            anyhow::bail!(
                "{name} before the command is an option of the window: put the command first (`vit-workbench COMMAND {name} ...`)"
            );
        }
    }
    let sweep = cli.threads.clone().filter(|t| t.0.len() > 1);
    if sweep.is_some() && !matches!(cli.command, Some(Command::Bench(_))) {
        anyhow::bail!("--threads: a list of counts is for `bench` (a sweep); this command takes one count");
    }
    match cli.command {
        None => crate::app::run(crate::app::GuiOptions {
            image: cli.image,
            model: cli.model,
            variant: cli.variant,
            compare: match cli.compare.as_deref() {
                None => None,
                Some("none") => Some(None),
                Some(v) => Some(Some(v.parse()?)),
            },
            screenshot: cli.screenshot,
            benchmark: cli.benchmark,
            sensitivity: cli.sensitivity,
            offline: cli.offline,
            hub: cli.revision.is_some().then(|| hub.clone()),
        }),
        Some(Command::Models) => list_models(&hub),
        Some(Command::DeviceCheck(args)) => device_check(&hub, &args),
        Some(Command::RandomModels { out, presets }) => {
            for name in presets.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let dir = crate::bench_models::preset(name)?.write(&out, 0)?;
                outln!("wrote {}", dir.display());
            }
            Ok(())
        }
        Some(Command::Kernels { list_paths: true, .. }) => {
            for isa in crate::kernels::available_isas() {
                outln!("{}", isa.name());
            }
            Ok(())
        }
        Some(Command::Kernels { min_seconds, .. }) => {
            // On a pool worker, as the model's forward runs.
            let report = rayon::scope(|_| crate::kernels::bench::run(min_seconds));
            out!("{}", crate::kernels::bench::table(&report));
            Ok(())
        }
        Some(Command::Bench(args)) => bench(&hub, &args, sweep.map(|t| t.0)),
        Some(Command::Eval(args)) => eval(&hub, &args),
        Some(Command::Sensitivity(args)) => sensitivity(&hub, &args),
        Some(Command::Profile(args)) => profile(&hub, &args),
        Some(Command::Explain(args)) => explain(&hub, &args),
        Some(Command::Download { model }) => {
            let source = ModelSource::parse(&model)?;
            let (files, _) = source.resolve(&hub, &mut download_bar())?;
            outln!("{model}: {} and {}", files.config.display(), files.weights.display());
            Ok(())
        }
        Some(Command::Classify { images, model, top, json, device, variant, allow_truncated, keep_fp32, scheme }) => {
            let k = usize::try_from(top).unwrap_or(usize::MAX);
            let keep = parse_keep_for(keep_fp32.as_deref(), variant)?;
            classify(&hub, &images, &model, k, json, &device, (variant, scheme), allow_truncated, keep.as_ref())
        }
        Some(Command::Export { model, variant, out, keep_fp32, scheme }) => {
            let keep = parse_keep_for(keep_fp32.as_deref(), Some(variant))?;
            // Before minutes of loading and quantizing: the output must be writable and must
            // not be the model being read.
            crate::fsutil::check_writable(&out)?;
            crate::fsutil::check_outputs_distinct(&[("--out", &out)], &[std::path::Path::new(&model)])?;
            let m = match &keep {
                None => load_model_default(&model, Some(variant), scheme, &hub, &Device::Cpu)?,
                Some(keep) => {
                    let fp32 = load_model_as_is(&model, &hub, &Device::Cpu, &mut download_bar())?;
                    let sample = if keep.needs_images() {
                        eprintln!("note: --keep-fp32 ranks the layers on the built-in sample photo");
                        vec![crate::quant::sensitivity::sample_image()?]
                    } else {
                        Vec::new()
                    };
                    mixed_variant(&fp32, variant, keep, scheme.unwrap_or_default(), &sample)?
                }
            };
            crate::fsutil::check_outputs_distinct(&[("--out", &out)], &[&m.files.config, &m.files.weights])?;
            let bytes = export::export(&m, &out)?;
            outln!("{} ({}): wrote {} ({})", m.id, m.label(), out.display(), human_bytes(bytes));
            Ok(())
        }
        Some(Command::Compare { images, model, variants, json, allow_truncated, keep_fp32, schemes }) => {
            let keep = parse_keep(keep_fp32.as_deref())?;
            compare(&hub, &images, &model, (&variants, &schemes), json, allow_truncated, keep.as_ref())
        }
    }
}

/// A progress bar on stderr fed by download events.
pub fn download_bar() -> impl FnMut(DownloadEvent) {
    let mut bar: Option<ProgressBar> = None;
    move |ev| match ev {
        DownloadEvent::Started { file, total_bytes } => {
            let b = ProgressBar::new(total_bytes);
            b.set_style(
                ProgressStyle::with_template("{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_message(file);
            bar = Some(b);
        }
        DownloadEvent::Progress { bytes, .. } => {
            if let Some(b) = &bar {
                b.set_position(bytes);
            }
        }
        DownloadEvent::Finished { .. } => {
            if let Some(b) = bar.take() {
                b.finish();
            }
        }
    }
}

fn list_models(hub: &Hub) -> Result<()> {
    outln!("Hugging Face cache: {}{}", hub.cache_dir.display(), if hub.offline { " (offline)" } else { "" });
    outln!("{:<48} {:<24} {:>7}  {:<8} preprocessing", "model", "family", "params", "cached");
    for e in ZOO {
        let cached = if hub.is_cached(e.id, Some(e.weights)) { "yes" } else { "no" };
        let recipe = match e.recipe {
            Some(r) => r().describe(),
            None => e.note.to_string(),
        };
        outln!("{:<48} {:<24} {:>6.1}M  {:<8} {}", e.id, e.family, e.params_millions, cached, recipe);
    }
    outln!(
        "\nAny local folder with config.json + model.safetensors or pytorch_model.bin (transformers or timm layout) works too."
    );
    Ok(())
}

#[derive(Serialize)]
struct ImageResult<'a> {
    image: String,
    model: &'a str,
    variant: &'a str,
    /// The quantization scheme of an int8/mobile variant other than the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    top: Vec<Prediction>,
    /// The file was cut off and `--allow-truncated` let it through: what was missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated: Option<String>,
}

/// Loads images, warning about each truncated one that `allow_truncated` lets through.
fn load_images(paths: &[PathBuf], allow_truncated: bool) -> Result<Vec<LoadedImage>> {
    paths
        .iter()
        .map(|p| {
            let img = load_image_with(p, allow_truncated)?;
            if let Some(what) = &img.truncated {
                log::warn!("{} is truncated ({what}); using what decoded", p.display());
            }
            Ok(img)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn classify(
    hub: &Hub,
    images: &[PathBuf],
    model_spec: &str,
    k: usize,
    json: bool,
    device: &str,
    (variant, scheme): (Option<Variant>, Option<Scheme>),
    allow_truncated: bool,
    keep: Option<&KeepFp32>,
) -> Result<()> {
    let images = &expand_images(images)?;
    let device = device_from_name(device)?;
    let model = match (keep, variant) {
        (Some(keep), Some(v)) => {
            let fp32 = load_model_as_is(model_spec, hub, &device, &mut download_bar())?;
            let ranked_on = if keep.needs_images() {
                load_images(images, allow_truncated)?.into_iter().map(|i| i.image).collect()
            } else {
                Vec::new()
            };
            mixed_variant(&fp32, v, keep, scheme.unwrap_or_default(), &ranked_on)?
        }
        _ => load_model_default(model_spec, variant, scheme, hub, &device)?,
    };
    let variant_label = model.label();
    let variant_name = variant_label.as_str();
    let scheme_name = model.scheme().filter(|s| !s.is_default()).map(|s| s.name());
    let k = k.min(model.config.num_classes());
    let mut results = Vec::new();
    for path in images {
        let img = load_images(std::slice::from_ref(path), allow_truncated)?.remove(0);
        let top = model.classify(&img.image, k).with_context(|| format!("cannot classify {}", path.display()))?;
        results.push(ImageResult {
            image: path.display().to_string(),
            model: model_spec,
            variant: variant_name,
            scheme: scheme_name.clone(),
            top,
            truncated: img.truncated,
        });
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            let mark = if r.truncated.is_some() { "  [TRUNCATED image: part of it did not decode]" } else { "" };
            outln!("{}  ({}, {}, {}){mark}", r.image, r.model, r.variant, crate::device::describe(&device));
            for (i, p) in r.top.iter().enumerate() {
                outln!("  {:>2}. {:<40} {:>7.3}%  [{}]", i + 1, p.label, p.probability * 100.0, p.index);
            }
        }
    }
    Ok(())
}

/// Loads `spec` as `variant` (quantized with `scheme`, default if none), or as it is stored when
/// no variant is asked for (an exported file holds one variant; a checkpoint is fp32).
fn load_model_default(
    spec: &str,
    variant: Option<Variant>,
    scheme: Option<Scheme>,
    hub: &Hub,
    device: &Device,
) -> Result<crate::model::Model> {
    if variant == Some(Variant::Fp32) && scheme.is_some() {
        anyhow::bail!("--scheme applies to the int8 and mobile variants, not fp32");
    }
    let model = load_model_as_is(spec, hub, device, &mut download_bar())?;
    let stored = variant.is_none_or(|v| v == model.variant);
    if let Some(s) = scheme {
        if stored && model.variant == Variant::Fp32 {
            anyhow::bail!("--scheme applies to the int8 and mobile variants: add --variant int8 or --variant mobile");
        }
        if stored {
            crate::quant::check_scheme(&model, &s)?;
        }
    }
    match variant {
        Some(v) => model.to_variant(v, QuantOptions::with_scheme(scheme.unwrap_or_default())),
        None => Ok(model),
    }
}

/// Where `explain` writes the picture of each image.
fn explain_outputs(images: &[PathBuf], out: &std::path::Path, method: ExplainMethod) -> Result<Vec<PathBuf>> {
    let is_png = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let outputs: Vec<PathBuf> = if is_png && !out.is_dir() {
        if images.len() > 1 {
            anyhow::bail!(
                "--out {} is one PNG file but {} images were given: pass a folder instead",
                out.display(),
                images.len()
            );
        }
        crate::fsutil::check_writable(out)?;
        vec![out.to_path_buf()]
    } else {
        if out.exists() && !out.is_dir() {
            anyhow::bail!("--out {} is a file, not a folder: give a .png file name or a folder", out.display());
        }
        if out.extension().is_some() && !out.is_dir() {
            anyhow::bail!("--out {}: expected a .png file or a folder", out.display());
        }
        if !out.is_dir() {
            std::fs::create_dir(out).with_context(|| format!("cannot create the folder {}", out.display()))?;
        }
        let suffix = format!("{method:?}").to_lowercase();
        images
            .iter()
            .map(|p| {
                let stem = p.file_stem().with_context(|| format!("{}: not a file name", p.display()))?;
                Ok(out.join(format!("{}.{suffix}.png", stem.to_string_lossy())))
            })
            .collect::<Result<_>>()?
    };
    // Never overwrite an input, and never write two results to one file.
    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    for (i, o) in outputs.iter().enumerate() {
        if let Some(j) = outputs[..i].iter().position(|x| x == o) {
            anyhow::bail!(
                "{} and {} would both be written to {}: give them different names or explain them separately",
                images[j].display(),
                images[i].display(),
                o.display()
            );
        }
        if let Some(c) = canonical(o)
            && let Some(img) = images.iter().find(|p| canonical(p) == Some(c.clone()))
        {
            anyhow::bail!("--out {} is the input image {}: refusing to overwrite it", o.display(), img.display());
        }
    }
    Ok(outputs)
}

fn explain(hub: &Hub, a: &ExplainArgs) -> Result<()> {
    use crate::explain::{AttentionMap, Colormap, HeadFusion, Request, explain_image, render};
    if !(0.0..=1.0).contains(&a.opacity) {
        anyhow::bail!("--opacity {} is outside 0..1", a.opacity);
    }
    if !(0.0..1.0).contains(&a.discard) {
        anyhow::bail!("--discard {} is outside 0..0.99", a.discard);
    }
    if a.class.is_some() && a.method != ExplainMethod::Attribution {
        anyhow::bail!(
            "--class applies to --method attribution only (rollout and raw attention do not depend on the class)"
        );
    }
    if (a.layer.is_some() || a.head.is_some()) && a.method != ExplainMethod::Raw {
        anyhow::bail!("--layer and --head apply to --method raw only");
    }
    let images = expand_images(&a.images)?;
    let outputs = explain_outputs(&images, &a.out, a.method)?;
    let model = load_model_default(&a.model, a.variant, None, hub, &Device::Cpu)?;
    let c = &model.config;
    if let Some(k) = a.class.filter(|k| *k >= c.num_classes()) {
        anyhow::bail!("--class {k}: {} has {} classes (0..{})", a.model, c.num_classes(), c.num_classes() - 1);
    }
    let layer = a.layer.unwrap_or(c.depth - 1);
    if layer >= c.depth {
        anyhow::bail!("--layer {layer}: {} has {} layers (0..{})", a.model, c.depth, c.depth - 1);
    }
    if let Some(h) = a.head.filter(|h| *h >= c.heads) {
        anyhow::bail!("--head {h}: {} has {} heads per layer (0..{})", a.model, c.heads, c.heads - 1);
    }
    let request = match a.method {
        ExplainMethod::Attribution => Request::Attribution { class: a.class },
        ExplainMethod::Rollout => Request::Attention(AttentionMap::Rollout {
            fusion: match a.fusion {
                FusionArg::Mean => HeadFusion::Mean,
                FusionArg::Max => HeadFusion::Max,
                FusionArg::Min => HeadFusion::Min,
            },
            discard_ratio: a.discard,
        }),
        ExplainMethod::Raw => Request::Attention(AttentionMap::Raw { layer, head: a.head }),
    };
    let cmap = match a.colormap {
        ColormapArg::Inferno => Colormap::Inferno,
        ColormapArg::Viridis => Colormap::Viridis,
    };
    for (path, out) in images.iter().zip(&outputs) {
        let img = crate::preprocess::load_image(path)?;
        let e = explain_image(&model, &img, request).with_context(|| format!("cannot explain {}", path.display()))?;
        let picture = render(&img, &e, cmap, a.opacity);
        let mut png = Vec::new();
        picture.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        crate::fsutil::write_atomic(out, &png)?;
        let top = &e.top[0];
        let what = match e.class {
            Some(k) => {
                let label = c.labels.get(k).cloned().unwrap_or_else(|| format!("class {k}"));
                format!("attribution for [{k}] {label}")
            }
            None => format!("{:?}", a.method).to_lowercase(),
        };
        let r = e.region;
        let seen = if r.covers(img.width(), img.height()) {
            "the whole image".to_string()
        } else {
            format!("x {:.0}..{:.0}, y {:.0}..{:.0}", r.left, r.right, r.top, r.bottom)
        };
        println!(
            "{}: top-1 {} {:.1}% [{}]; {what} ({}) -> {} ({}x{}, model saw {seen})",
            path.display(),
            top.label,
            100.0 * top.probability,
            top.index,
            model.label(),
            out.display(),
            img.width(),
            img.height()
        );
    }
    Ok(())
}

/// `1234567` -> `1.23 MB`.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1_000_000_000 => format!("{:.2} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.2} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

fn compare(
    hub: &Hub,
    images: &[PathBuf],
    model_spec: &str,
    (variants, schemes): (&str, &[Scheme]),
    json: bool,
    allow_truncated: bool,
    keep: Option<&KeepFp32>,
) -> Result<()> {
    let variants = parse_variants(variants)?;
    let images = &expand_images(images)?;
    let schemes = crate::quant::scheme::distinct_or_default(schemes);
    // Images first: a bad file fails in a second, not after the model is loaded and quantized.
    let imgs: Vec<_> = load_images(images, allow_truncated)?.into_iter().map(|i| i.image).collect();
    let reference = load_model_as_is(model_spec, hub, &Device::Cpu, &mut download_bar())?;
    if reference.variant != Variant::Fp32 {
        anyhow::bail!(
            "compare needs the fp32 model as its reference, and {model_spec} holds {} weights: pass the original checkpoint (or an fp32 export) with --model",
            reference.variant
        );
    }
    // Each quantized variant once per scheme (fp32 once), in the order given, each followed by
    // its mixed-precision form when --keep-fp32 is given.
    let mut others = Vec::new();
    for v in &variants {
        let schemes = if *v == Variant::Fp32 { &schemes[..1] } else { &schemes[..] };
        for s in schemes {
            others.push(reference.to_variant(*v, QuantOptions::with_scheme(*s))?);
            if let Some(keep) = keep.filter(|_| *v != Variant::Fp32) {
                let mixed = mixed_variant(&reference, *v, keep, *s, &imgs)?;
                // `auto:kl=X` may keep nothing when the variant already meets X: no duplicate row.
                let plain = others.last().map(|m| m.fp32_layers()).unwrap_or_default();
                if mixed.fp32_layers() != plain {
                    others.push(mixed);
                }
            }
        }
    }
    let report = compare_variants(&reference, &others.iter().collect::<Vec<_>>(), &imgs)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let fp32_size = report.iter().find(|r| r.variant == Variant::Fp32).map(|r| r.file_bytes);
    outln!(
        "{} on {} image(s), cpu, {} threads; reference: fp32",
        reference.id,
        imgs.len(),
        rayon::current_num_threads()
    );
    let w = report.iter().map(|r| r.label.len()).max().unwrap_or(0).max(7);
    outln!(
        "{:<w$} {:>10} {:>7} {:>12} {:>7} {:>7} {:>10} {:>10} {:>10}",
        "variant",
        "file",
        "vs fp32",
        "weights mem",
        "top-1",
        "top-5",
        "KL mean",
        "max|dlog|",
        "min cos"
    );
    for r in &report {
        let s = &r.summary;
        let rel = fp32_size.map(|f| format!("{:.1}%", 100.0 * r.file_bytes as f64 / f as f64)).unwrap_or_default();
        outln!(
            "{:<w$} {:>10} {:>7} {:>12} {:>6.0}% {:>6.0}% {:>10.2e} {:>10.4} {:>10.6}",
            r.label,
            human_bytes(r.file_bytes),
            rel,
            human_bytes(r.weight_bytes as u64),
            100.0 * s.top1_agreement,
            100.0 * s.top5_overlap,
            s.mean_kl_div,
            s.max_abs_dlogit,
            s.min_cosine
        );
    }
    let quantized: Vec<_> = report.iter().filter(|r| r.variant != Variant::Fp32).collect();
    if !quantized.is_empty() {
        outln!("\nper-layer relative error of each block's output vs fp32 (mean over images):");
        out!("{:<6}", "block");
        for r in &quantized {
            out!(" {:>10}", r.label);
        }
        outln!();
        for layer in 0..reference.config.depth {
            out!("{layer:<6}");
            for r in &quantized {
                out!(" {:>w$.5}", r.per_layer_error[layer], w = r.label.len().max(10));
            }
            outln!();
        }
        for r in &quantized {
            let jumps: Vec<f64> = r
                .per_layer_error
                .iter()
                .scan(0.0, |prev, e| {
                    let d = e - *prev;
                    *prev = *e;
                    Some(d)
                })
                .collect();
            if let Some((i, d)) = jumps.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
                outln!("{}: the largest error increase is at block {i} (+{d:.5})", r.label);
            }
        }
    }
    outln!("\nper image (top-1 of each variant):");
    let model_outs: Vec<_> = std::iter::once(&reference).chain(others.iter()).collect();
    for (p, img) in images.iter().zip(&imgs) {
        let mut line = format!("{}:", p.display());
        for m in model_outs.iter().skip(1) {
            let top = m.classify(img, 1)?;
            line.push_str(&format!("  {} {} {:.3}", m.label(), top[0].label, top[0].probability));
        }
        outln!("{line}");
    }
    Ok(())
}

/// Files named directly, and the image files inside named folders (sorted).
pub fn expand_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| crate::preprocess::has_image_extension(f))
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{}: no image files in this folder", p.display());
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// `sweep`: thread counts to measure one after another, each in its own pool (`None`: the
/// process's pool, as `--threads N` or the default set it).
fn bench(hub: &Hub, a: &BenchArgs, sweep: Option<Vec<usize>>) -> Result<()> {
    use crate::bench::{BenchConfig, BenchEvent, BenchInput, BenchJob, bench_model};
    // Fail before minutes of measuring, not after: every output writable, none named twice,
    // none an input of this run.
    let outputs: Vec<(&str, &std::path::Path)> = [("--csv", &a.csv), ("--json", &a.json), ("--raw", &a.raw)]
        .into_iter()
        .filter_map(|(flag, p)| p.as_deref().map(|p| (flag, p)))
        .collect();
    for (_, p) in &outputs {
        crate::fsutil::check_writable(p)?;
    }
    let models: Vec<&str> = a.models.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let image_files = if a.images.is_empty() { Vec::new() } else { expand_images(&a.images)? };
    let inputs: Vec<&std::path::Path> =
        models.iter().map(std::path::Path::new).chain(image_files.iter().map(PathBuf::as_path)).collect();
    crate::fsutil::check_outputs_distinct(&outputs, &inputs)?;
    let warmup = match a.warmup {
        Some(w) if w > a.max_runs => {
            anyhow::bail!("--warmup {w} is more than --max-runs {}: warm-up is bounded by the timed runs", a.max_runs)
        }
        Some(w) => w,
        None => a.max_runs.min(10),
    };
    let given_variants = a.variants.as_deref().map(parse_variants).transpose()?;
    let keep = parse_keep(a.keep_fp32.as_deref())?.unwrap_or(KeepFp32::Layers(Default::default()));
    let device = device_from_name(&a.device)?;
    let count = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let cfgs: Vec<BenchConfig> = parse_batches(&a.batch)?
        .into_iter()
        .map(|batch| BenchConfig {
            warmup: count(warmup),
            min_runs: count(a.runs),
            min_seconds: a.min_seconds,
            max_runs: count(a.max_runs),
            batch,
        })
        .collect();
    let input = if image_files.is_empty() {
        BenchInput::Synthetic
    } else {
        let loaded = load_images(&image_files, a.allow_truncated)?;
        BenchInput::Images(image_files.iter().zip(loaded).map(|(f, i)| (f.display().to_string(), i.image)).collect())
    };
    // Our kernels split their work by the pool they run in (rayon::current_num_threads), so a
    // pool per count, entered with `install`, is what each sweep point measures on.
    let pools: Vec<Option<rayon::ThreadPool>> = match &sweep {
        None => vec![None],
        Some(counts) => counts
            .iter()
            .map(|&n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(move |i| format!("vitwb-sweep-{n}-{i}"))
                    .build()
                    .map(Some)
                    .with_context(|| format!("cannot start a pool of {n} threads"))
            })
            .collect::<Result<_>>()?,
    };
    let mut results = Vec::new();
    let mut combos = Vec::new();
    for m in &models {
        for p in &pools {
            combos.extend(cfgs.iter().map(|c| (m, p, c)));
        }
    }
    for (spec, pool, cfg) in combos {
        let variants = match &given_variants {
            Some(v) => v.clone(),
            // An exported file holds one variant: measure that one unless told otherwise.
            None => match export::stored_variant(std::path::Path::new(spec)) {
                Some(v) => vec![v],
                None => Variant::ALL.to_vec(),
            },
        };
        // Each quantized variant is measured once per scheme, and with --keep-fp32 its mixed
        // form beside it (unless that keeps no layer: the warm-up's total corrects the count).
        let per_quantized =
            crate::quant::scheme::distinct_or_default(&a.schemes).len() * if keep.is_none() { 1 } else { 2 };
        let runners: usize = variants.iter().map(|v| if *v == Variant::Fp32 { 1 } else { per_quantized }).sum();
        let bar = ProgressBar::new((runners * (cfg.warmup + cfg.min_runs)) as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(match pool {
            Some(p) => format!("{spec} ({} threads)", p.current_num_threads()),
            None => spec.to_string(),
        });
        let mut samples_seen = 0u64;
        let mut warmup_runs = (runners * cfg.warmup) as u64;
        let job =
            BenchJob { spec, variants: &variants, cfg, input: &input, cancel: None, keep: &keep, schemes: &a.schemes };
        let mut run = || {
            bench_model(&job, hub, &device, &mut download_bar(), &mut |ev| match ev {
                BenchEvent::Phase { phase, .. } => bar.set_message(phase),
                BenchEvent::Warmup { done, total, .. } => {
                    if total as u64 != warmup_runs {
                        warmup_runs = total as u64;
                        let measured = total / cfg.warmup.max(1);
                        bar.set_length((measured * (cfg.warmup + cfg.min_runs)) as u64);
                    }
                    bar.set_position(done as u64);
                }
                // Named as the result rows name it (`int8+fp32[3]`, `int8[torch]`), not by variant.
                BenchEvent::Sample { label, ms, .. } => {
                    samples_seen += 1;
                    let pos = warmup_runs + samples_seen;
                    if pos > bar.length().unwrap_or(0) {
                        bar.set_length(pos);
                    }
                    bar.set_position(pos);
                    bar.set_message(format!("{label} {ms:.2} ms"));
                }
            })
        };
        let r = match pool {
            Some(p) => p.install(run)?,
            None => run()?,
        };
        bar.finish_and_clear();
        results.extend(r);
    }
    print_bench_table(&results)?;
    if let Some(p) = &a.csv {
        crate::report::write_csv(p, &results)?;
        outln!("wrote {}", p.display());
    }
    if let Some(p) = &a.raw {
        crate::report::write_raw_csv(p, &results)?;
        outln!("wrote {}", p.display());
    }
    if let Some(p) = &a.json {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&results)?.as_bytes())?;
        outln!("wrote {}", p.display());
    }
    Ok(())
}

/// `1,8` -> `[1, 8]`: batch sizes of a sweep, each in 1..=256.
fn parse_batches(list: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.parse::<usize>() {
            Ok(b) if (1..=256).contains(&b) => out.push(b),
            _ => anyhow::bail!("--batch: `{item}` is not a batch size (a whole number in 1..=256, or a list like 1,8)"),
        }
    }
    if out.is_empty() {
        anyhow::bail!("--batch: no batch size given");
    }
    Ok(out)
}

fn print_bench_table(results: &[crate::bench::BenchResult]) -> Result<()> {
    let Some(first) = results.first() else { return Ok(()) };
    let e = &first.env;
    let mut batches: Vec<usize> = results.iter().map(|r| r.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let batch_list = batches.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",");
    let mut threads: Vec<usize> = results.iter().map(|r| r.env.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let thread_list = threads.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    let device = if e.gpu.is_empty() { e.device.clone() } else { format!("{} ({})", e.device, e.gpu) };
    outln!("cpu: {} | {} | threads: {thread_list} | device: {device} | batch {batch_list}", e.cpu, e.simd);
    // A sweep's rows differ only by batch and threads: say it where the model is named.
    let name_of = |r: &crate::bench::BenchResult| match (batches.len() > 1, threads.len() > 1) {
        (true, true) => format!("{} (batch {}, {} thr)", r.model, r.batch, r.env.threads),
        (true, false) => format!("{} (batch {})", r.model, r.batch),
        (false, true) => format!("{} ({} threads)", r.model, r.env.threads),
        (false, false) => r.model.clone(),
    };
    let w = results.iter().map(|r| r.label().len()).max().unwrap_or(0).max(7);
    // Long model paths widen the column rather than push their row out of line.
    let mw = results.iter().map(|r| name_of(r).chars().count()).max().unwrap_or(0).max(44);
    outln!(
        "{:<mw$} {:<w$} {:>9} {:>9} {:>9} {:>8} {:>10} {:>7} {:>6} {:>6} {:>9}",
        "model",
        "variant",
        "p50 ms",
        "p90 ms",
        "first ms",
        "speedup",
        "file",
        "size",
        "top-1",
        "top-5",
        "KL"
    );
    let mut notes = Vec::new();
    for r in results {
        let fp32 = results.iter().find(|o| {
            o.model == r.model && o.batch == r.batch && o.env.threads == r.env.threads && o.variant == Variant::Fp32
        });
        let speed = fp32.map(|f| f.stats.p50 / r.stats.p50);
        let size = fp32.filter(|f| f.file_bytes > 0).map(|f| r.file_bytes as f64 / f.file_bytes as f64);
        let acc = r.accuracy.as_ref();
        let name = name_of(r);
        outln!(
            "{:<mw$} {:<w$} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>10} {:>7} {:>6} {:>6} {:>9}",
            name,
            r.label(),
            r.stats.p50,
            r.stats.p90,
            r.first_ms,
            speed.map(|s| format!("{s:.2}x")).unwrap_or_default(),
            human_bytes(r.file_bytes),
            size.map(|s| format!("{:.1}%", 100.0 * s)).unwrap_or_default(),
            acc.map(|a| format!("{:.0}%", 100.0 * a.top1_agreement)).unwrap_or_default(),
            acc.map(|a| format!("{:.0}%", 100.0 * a.top5_overlap)).unwrap_or_default(),
            acc.map(|a| format!("{:.1e}", a.mean_kl_div)).unwrap_or_default(),
        );
        if let Some(s) = speed.filter(|s| *s < 1.0) {
            notes.push(format!("{name} {} is {:.2}x SLOWER than fp32 here", r.label(), 1.0 / s));
        }
    }
    // Rows stop at different counts (the time rule): give the range, not the first row's.
    let (fewest, most) = results.iter().fold((usize::MAX, 0), |(lo, hi), r| (lo.min(r.stats.n), hi.max(r.stats.n)));
    let runs = if fewest == most { fewest.to_string() } else { format!("{fewest}-{most}") };
    outln!("(p50/p90 over {runs} timed runs after {} warm-up; speed-up = fp32 p50 / variant p50)", first.warmup);
    if results.iter().any(|r| r.int8_kernel.as_deref() == Some(crate::device::Int8Kernel::CudaQ8_0.id())) {
        notes.push(crate::device::Int8Kernel::CudaQ8_0.describe().to_string());
    }
    for n in notes {
        outln!("note: {n}");
    }
    Ok(())
}

fn device_check(hub: &Hub, a: &DeviceCheckArgs) -> Result<()> {
    if let Some(p) = &a.json {
        crate::fsutil::check_writable(p)?;
    }
    let variants = parse_variants(&a.variants)?;
    let device = device_from_name(&a.device)?;
    let files = expand_images(&a.images)?;
    let loaded = load_images(&files, false)?;
    let images: Vec<_> = files.iter().zip(loaded).map(|(f, l)| (f.display().to_string(), l.image)).collect();
    let report = crate::parity::check(&a.model, hub, &device, &variants, &images)?;
    outln!("{}", crate::parity::table(&report).trim_end());
    if let Some(p) = &a.json {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
        outln!("wrote {}", p.display());
    }
    let failed: Vec<&str> = report.variants.iter().filter(|v| !v.pass).map(|v| v.verdict.as_str()).collect();
    if !failed.is_empty() {
        anyhow::bail!("device check failed on {}: {}", report.device, failed.join("; "));
    }
    Ok(())
}

fn eval(hub: &Hub, a: &EvalArgs) -> Result<()> {
    use crate::eval::{ClassResolver, discover, evaluate, limit_across_classes};
    for p in [&a.csv, &a.json].into_iter().flatten() {
        crate::fsutil::check_writable(p)?;
    }
    let outputs: Vec<(&str, &std::path::Path)> = [("--csv", &a.csv), ("--json", &a.json)]
        .into_iter()
        .filter_map(|(n, p)| p.as_deref().map(|p| (n, p)))
        .collect();
    crate::fsutil::check_outputs_distinct(&outputs, &[std::path::Path::new(&a.model), &a.source])?;
    let variants = parse_variants(&a.variants)?;
    let (source, made) = crate::bench::load_variants(&a.model, &variants, hub, &Device::Cpu, &mut download_bar())?;
    let images = discover(&a.source, &ClassResolver::new(&source.config.labels))?;
    let images = match a.limit {
        Some(0) => anyhow::bail!("--limit must be at least 1"),
        Some(n) => limit_across_classes(images, n),
        None => images,
    };
    let models: Vec<&crate::model::Model> = made.iter().map(|(m, _)| m).collect();
    let bar = ProgressBar::new(images.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} images {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let source_name = a.source.display().to_string();
    let report =
        evaluate(&a.model, &source_name, &models, &images, a.top, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let classes: std::collections::BTreeSet<usize> = images.iter().map(|i| i.label).collect();
    outln!(
        "{} on {} image(s) of {} class(es) from {}; cpu, {} threads",
        a.model,
        images.len(),
        classes.len(),
        source_name,
        rayon::current_num_threads()
    );
    out!("{}", crate::eval::table(&report));
    if let Some(p) = &a.csv {
        crate::fsutil::write_atomic(p, &crate::eval::to_csv(&report)?)?;
        outln!("wrote {}", p.display());
    }
    if let Some(p) = &a.json {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
        outln!("wrote {}", p.display());
    }
    Ok(())
}

fn profile(hub: &Hub, a: &ProfileArgs) -> Result<()> {
    if !crate::model::profiler::PROFILER_COMPILED_IN {
        anyhow::bail!("this build has the profiler compiled out (feature `no-profiler`): build without it to profile");
    }
    if let Some(p) = &a.trace {
        crate::fsutil::check_writable(p)?;
        crate::fsutil::check_outputs_distinct(&[("--trace", p)], &[std::path::Path::new(&a.model)])?;
    }
    let variants = parse_variants(&a.variants)?;
    let (_, made) = crate::bench::load_variants(&a.model, &variants, hub, &Device::Cpu, &mut download_bar())?;
    let models: Vec<&crate::model::Model> = made.iter().map(|(m, _)| m).collect();
    let report = crate::profile::profile(&models, a.warmup, a.runs)?;
    out!("{}", crate::profile::table(&a.model, &report));
    if let Some(p) = &a.trace {
        crate::fsutil::write_atomic(p, serde_json::to_string(&crate::profile::chrome_trace(&report))?.as_bytes())?;
        outln!("wrote {} (open in ui.perfetto.dev or chrome://tracing)", p.display());
    }
    // Every variant that fails the check, in one line.
    let bad: Vec<String> = report
        .iter()
        .filter(|v| !v.within_tolerance())
        .map(|v| {
            format!("{} (stage sum {:.2} ms, forward p50 {:.2} ms)", v.variant, v.stage_sum_p50_ms, v.forward_p50_ms)
        })
        .collect();
    if !bad.is_empty() {
        anyhow::bail!(
            "the stage sum is not within 10% of the un-instrumented forward's p50 for {}: the machine was busy, or the stages are so short that reading the clock counts; run again with more --runs",
            bad.join(", ")
        );
    }
    Ok(())
}

/// `--keep-fp32`, parsed before anything loads.
fn parse_keep(spec: Option<&str>) -> Result<Option<KeepFp32>> {
    spec.map(str::parse).transpose()
}

/// `--keep-fp32` of a command that makes one `variant` (classify, export): it keeps layers of a
/// quantized variant, so with fp32 (or no variant) it is refused rather than ignored.
fn parse_keep_for(spec: Option<&str>, variant: Option<Variant>) -> Result<Option<KeepFp32>> {
    let keep = parse_keep(spec)?;
    if keep.as_ref().is_some_and(|k| !k.is_none()) && matches!(variant, None | Some(Variant::Fp32)) {
        anyhow::bail!("--keep-fp32 keeps layers of a quantized variant: add --variant int8 or --variant mobile");
    }
    Ok(keep)
}

/// `fp32` as `variant` with the layers `keep` names left fp32; the `auto:` forms rank the layers
/// on `images` (preprocessed as one batch).
fn mixed_variant(
    fp32: &crate::model::Model,
    variant: Variant,
    keep: &KeepFp32,
    scheme: Scheme,
    images: &[image::RgbImage],
) -> Result<crate::model::Model> {
    if fp32.variant != Variant::Fp32 {
        anyhow::bail!(
            "--keep-fp32: {} holds {} weights; mixed variants are made from the fp32 model",
            fp32.display_name(),
            fp32.label()
        );
    }
    let opts = QuantOptions::with_scheme(scheme);
    let batch = if keep.needs_images() { Some(fp32.preprocess_batch(images)?) } else { None };
    let kept = keep
        .resolve(fp32, variant, &opts, batch.as_ref(), &mut |n| eprintln!("note: {n}"))
        .with_context(|| format!("--keep-fp32 for {}", fp32.display_name()))?;
    fp32.to_variant(variant, crate::quant::QuantOptions { keep_fp32: kept, ..opts })
}

/// `sensitivity`: every layer ranked, as a table (and CSV).
fn sensitivity(hub: &Hub, a: &SensitivityArgs) -> Result<()> {
    use crate::quant::sensitivity::{RANK_KEY, analyze};
    if a.variant == Variant::Fp32 {
        anyhow::bail!("sensitivity ranks the layers of a quantized variant: --variant int8 or mobile");
    }
    let image_files = expand_images(&a.images)?;
    if let Some(p) = &a.csv {
        crate::fsutil::check_writable(p)?;
        let inputs: Vec<&std::path::Path> =
            std::iter::once(std::path::Path::new(&a.model)).chain(image_files.iter().map(PathBuf::as_path)).collect();
        crate::fsutil::check_outputs_distinct(&[("--csv", p)], &inputs)?;
    }
    let imgs: Vec<_> = load_images(&image_files, a.allow_truncated)?.into_iter().map(|i| i.image).collect();
    let fp32 = load_model_as_is(&a.model, hub, &Device::Cpu, &mut download_bar())?;
    if fp32.variant != Variant::Fp32 {
        anyhow::bail!(
            "sensitivity needs the fp32 model as its reference, and {} holds {} weights: pass the original checkpoint (or an fp32 export) with --model",
            a.model,
            fp32.label()
        );
    }
    if let Some(p) = &a.csv {
        crate::fsutil::check_outputs_distinct(&[("--csv", p)], &[&fp32.files.config, &fp32.files.weights])?;
    }
    let batch = fp32.preprocess_batch(&imgs)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} models scored")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {}", a.model, a.variant));
    let opts = QuantOptions::with_scheme(a.scheme.unwrap_or_default());
    let ranked =
        if opts.scheme.is_default() { a.variant.to_string() } else { format!("{}[{}]", a.variant, opts.scheme) };
    let s = analyze(&fp32, a.variant, &opts, &batch, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    let n = s.images;
    outln!(
        "{}: {} on {n} image(s), cpu, {} threads; {} layers ranked by {RANK_KEY} (mean KL vs fp32 with only that layer quantized)",
        fp32.id,
        ranked,
        rayon::current_num_threads(),
        s.layers.len()
    );
    let all = &s.all_quantized;
    outln!(
        "every layer quantized: KL {:.3e}, top-1 flips {}/{n}, max|dlogit| {:.4}",
        all.kl,
        all.flips,
        all.max_abs_dlogit
    );
    outln!(
        "{:>4}  {:<14} {:>10} {:>6} {:>10}   {:>11} {:>6} {:>10}",
        "rank",
        "layer",
        "kl_alone",
        "flips",
        "max|dlog|",
        "kl_all_but",
        "flips",
        "max|dlog|"
    );
    let (alone, all_but) = (format!("(only this layer {})", a.variant), format!("(all {} but this layer)", a.variant));
    outln!("{:>4}  {:<14} {alone:^28}   {all_but:^29}", "", "");
    for l in &s.layers {
        outln!(
            "{:>4}  {:<14} {:>10.3e} {:>6} {:>10.4}   {:>11.3e} {:>6} {:>10.4}",
            l.rank,
            l.layer.to_string(),
            l.alone.kl,
            l.alone.flips,
            l.alone.max_abs_dlogit,
            l.all_but.kl,
            l.all_but.flips,
            l.all_but.max_abs_dlogit
        );
    }
    if let Some(p) = &a.csv {
        crate::fsutil::write_atomic(p, &sensitivity_csv(&s, &fp32.id)?)?;
        outln!("wrote {}", p.display());
    }
    Ok(())
}

/// Columns of `sensitivity --csv`, in order (new ones only appended).
pub const SENSITIVITY_COLUMNS: &[&str] = &[
    "layer",
    "kl_alone",
    "kl_all_but",
    "flips",
    "max_abs_dlogit",
    "rank",
    "flips_all_but",
    "max_abs_dlogit_all_but",
    "variant",
    "images",
    "model",
];

fn sensitivity_csv(s: &crate::quant::sensitivity::Sensitivity, model: &str) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(SENSITIVITY_COLUMNS)?;
    for l in &s.layers {
        w.write_record([
            l.layer.to_string(),
            format!("{:e}", l.alone.kl),
            format!("{:e}", l.all_but.kl),
            l.alone.flips.to_string(),
            l.alone.max_abs_dlogit.to_string(),
            l.rank.to_string(),
            l.all_but.flips.to_string(),
            l.all_but.max_abs_dlogit.to_string(),
            s.variant.name().to_string(),
            s.images.to_string(),
            model.to_string(),
        ])?;
    }
    Ok(w.into_inner()?)
}
