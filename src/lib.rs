//! vit-workbench: classify images with Vision Transformers (ViT, DeiT) and measure what their
//! fp32, int8 and mobile variants cost and lose.
//!
//! Layers, bottom up (each only uses the ones above it in this list):
//! - [`device`]: CPU or CUDA, and why CUDA is unavailable when it is.
//! - [`preprocess`]: image files -> model input, pixel-exact with the PIL pipelines models were
//!   evaluated with.
//! - [`model`]: configs and checkpoints of every supported layout -> one canonical weight set and
//!   one forward pass, with attention capture.
//! - [`hub`], [`zoo`]: where weights come from (Hugging Face cache, downloads, offline mode) and
//!   the named models with their recipes.
//! - [`bench`], [`eval`], [`profile`]: latency, accuracy on labelled images, and where a
//!   forward's time goes, over the variants of one model.
//! - [`cli`]: the command-line front end.

pub mod app;
pub mod bench;
pub mod bench_models;
pub mod cli;
pub mod device;
pub mod eval;
pub mod explain;
pub mod fsutil;
pub mod hub;
pub mod kernels;
pub mod labels;
pub mod model;
pub mod parity;
pub mod preprocess;
pub mod profile;
pub mod quant;
pub mod report;
pub mod zoo;
