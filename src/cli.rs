//! The command line: `classify`, `models`, `download`. Every failure is one line on stderr that
//! names the file and the problem, and a non-zero exit; nothing panics on bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::hub::{DownloadEvent, Hub};
use crate::model::{Model, Prediction, device_from_name};
use crate::preprocess::load_image;
use crate::zoo::{DEFAULT_MODEL, ModelSource, ZOO};

#[derive(Parser, Debug)]
#[command(
    name = "vit-workbench",
    version,
    about = "Classify images with ViT/DeiT and measure what quantization costs and loses."
)]
pub struct Cli {
    /// Use only the local Hugging Face cache (same as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    pub offline: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the top-K labels of each image.
    Classify {
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Hub id or local folder.
        #[arg(long, short, default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// One JSON document on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// cpu or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// List the model zoo and what is already cached.
    Models,
    /// Download a model into the Hugging Face cache.
    Download { model: String },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let hub = Hub::from_env(cli.offline);
    match cli.command {
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            println!();
            Ok(())
        }
        Some(Command::Models) => list_models(&hub),
        Some(Command::Download { model }) => {
            let source = ModelSource::parse(&model)?;
            let (files, _) = source.resolve(&hub, &mut download_bar())?;
            println!("{model}: {} and {}", files.config.display(), files.weights.display());
            Ok(())
        }
        Some(Command::Classify { images, model, top, json, device }) => {
            classify(&hub, &images, &model, top, json, &device)
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
    println!("Hugging Face cache: {}{}", hub.cache_dir.display(), if hub.offline { " (offline)" } else { "" });
    println!("{:<48} {:<24} {:>7}  {:<8} preprocessing", "model", "family", "params", "cached");
    for e in ZOO {
        let cached = if hub.is_cached(e.id, Some(e.weights)) { "yes" } else { "no" };
        let recipe = match e.recipe {
            Some(r) => r().describe(),
            None => e.note.to_string(),
        };
        println!("{:<48} {:<24} {:>6.1}M  {:<8} {}", e.id, e.family, e.params_millions, cached, recipe);
    }
    println!(
        "\nAny local folder with config.json + model.safetensors or pytorch_model.bin (transformers or timm layout) works too."
    );
    Ok(())
}

#[derive(Serialize)]
struct ImageResult<'a> {
    image: String,
    model: &'a str,
    variant: &'a str,
    top: Vec<Prediction>,
}

fn classify(hub: &Hub, images: &[PathBuf], model_spec: &str, k: usize, json: bool, device: &str) -> Result<()> {
    let device = device_from_name(device)?;
    let source = ModelSource::parse(model_spec)?;
    let (files, recipe) = source.resolve(hub, &mut download_bar())?;
    let model = Model::load(model_spec, &files, recipe, &device)
        .with_context(|| format!("cannot load model `{model_spec}`"))?;
    let k = k.clamp(1, model.config.num_classes());
    let mut results = Vec::new();
    for path in images {
        let img = load_image(path)?;
        let top = model.classify(&img, k).with_context(|| format!("cannot classify {}", path.display()))?;
        results.push(ImageResult { image: path.display().to_string(), model: model_spec, variant: "fp32", top });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            println!("{}  ({}, {}, {})", r.image, r.model, r.variant, if device.is_cpu() { "cpu" } else { "cuda" });
            for (i, p) in r.top.iter().enumerate() {
                println!("  {:>2}. {:<40} {:>7.3}%  [{}]", i + 1, p.label, p.probability * 100.0, p.index);
            }
        }
    }
    Ok(())
}
