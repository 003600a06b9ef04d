//! Exported variant files: one self-contained file per (model, variant) that loads without the
//! original checkpoint.
//!
//! Container: safetensors with metadata, chosen over GGUF because it stores exactly our layout
//! (int8 per-channel weights + f32 scales; GGUF's Q8_0 fixes one scale per 32 weights), needs no
//! new dependency (candle reads it), validates offsets on open, and is memory-mappable: the
//! int8 weights of a loaded file are used straight from the map, never copied.
//!
//! Layout (format version 2; 3 for a quantization scheme other than the default, so that an
//! older build, which would run such weights with the default activation rounding, refuses it):
//! - metadata: `format` = "vit-workbench", `format_version` = "2", `variant`, `source`,
//!   `config` (JSON of [`VitConfig`], labels included), `recipe` (JSON of the preprocessing),
//!   `kernel_layout` (int8 weight layout, e.g. "rowmajor-i8-v1"), `fused` (graph work applied),
//!   `tensor_xxh3` (JSON object: tensor name -> XXH3-64 of its bytes, 16 hex digits; new in 2),
//!   `scheme` (int8/mobile: the [`Scheme`] name, e.g. `default`, `torch`; new in 3, absent
//!   means `default`).
//! - dense fp32 tensors: `cls_token`, `dist_token`, `pos_embed`, `blocks.N.norm{1,2}.{weight,bias}`,
//!   `norm.{weight,bias}`.
//! - each linear layer `L` (`patch`, `blocks.N.{qkv,proj,fc1,fc2}`, `heads.I` reading token I):
//!   fp32: `L.weight` F32 `[out, in]`; int8/mobile: `L.qweight` I8 `[out, in]` and `L.scale` F32
//!   `[out]`; mobile also `L.row_sums` I32 `[out]` (pre-packed kernel data); `L.bias` F32 `[out]`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};

use crate::kernels::gemm_i8::{self, Bytes, PackedWeights};
use crate::model::config::VitConfig;
use crate::model::int8::Int8Linear;
use crate::model::layers::{BlockLayer, LayerName};
use crate::model::vit::{DenseWeights, Linear, VitWeights};
use crate::model::{Model, ModelFiles, Variant};
use crate::preprocess::Recipe;
use crate::quant::Scheme;

pub const FORMAT: &str = "vit-workbench";
pub const FORMAT_VERSION: u32 = 3;
/// The version written for files any version-2 reader runs correctly (default scheme).
const BASE_FORMAT_VERSION: u32 = 2;
/// Metadata key of the per-tensor checksums (format version 2).
pub const CHECKSUMS_KEY: &str = "tensor_xxh3";
/// Metadata key listing, in a quantized file, the layers kept fp32 (mixed precision), comma-
/// separated; empty when every layer is quantized. Files before it have none (not checked).
pub const FP32_LAYERS_KEY: &str = "fp32_layers";

fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn f32_raw(t: &Tensor) -> Result<Raw> {
    let v = t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Raw { dtype: Dtype::F32, shape: t.dims().to_vec(), bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect() })
}

fn f32_slice_raw(v: &[f32]) -> Raw {
    Raw { dtype: Dtype::F32, shape: vec![v.len()], bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
}

/// The bytes of `model` as an exported file.
pub fn serialize(model: &Model) -> Result<Vec<u8>> {
    let w = &model.weights;
    let bad = w.non_finite_tensors();
    if !bad.is_empty() {
        bail!("non-finite (NaN/Inf) weights in {}; refusing to export them", crate::model::vit::list_names(&bad));
    }
    let mut tensors: Vec<(String, Raw)> = Vec::new();
    for (name, t) in w.dense_tensors() {
        tensors.push((name, f32_raw(t)?));
    }
    for (name, l) in w.linears() {
        match l {
            Linear::F32 { weight, bias, .. } => {
                tensors.push((format!("{name}.weight"), f32_raw(weight)?));
                if let Some(b) = bias {
                    tensors.push((format!("{name}.bias"), f32_raw(b)?));
                }
            }
            Linear::Int8(q) => {
                let p = &q.weights;
                let bytes = p.data.as_slice().iter().map(|&v| v as u8).collect();
                tensors.push((format!("{name}.qweight"), Raw { dtype: Dtype::I8, shape: vec![p.n, p.k], bytes }));
                tensors.push((format!("{name}.scale"), f32_slice_raw(&p.scales)));
                if model.variant == Variant::Mobile {
                    let bytes = p.row_sums.iter().flat_map(|x| x.to_le_bytes()).collect();
                    tensors.push((format!("{name}.row_sums"), Raw { dtype: Dtype::I32, shape: vec![p.n], bytes }));
                }
                if let Some(b) = &q.bias {
                    tensors.push((format!("{name}.bias"), f32_slice_raw(b)));
                }
            }
            Linear::Q8_0 { .. } => bail!("models quantized for CUDA (Q8_0) cannot be exported; export from the CPU"),
        }
    }
    let scheme = crate::quant::model_scheme(model).unwrap_or_default();
    let version = if scheme.is_default() { BASE_FORMAT_VERSION } else { FORMAT_VERSION };
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("format_version".to_string(), version.to_string());
    if model.variant != Variant::Fp32 {
        meta.insert("scheme".to_string(), scheme.name());
    }
    meta.insert("variant".to_string(), model.variant.name().to_string());
    meta.insert("source".to_string(), model.id.clone());
    meta.insert("config".to_string(), serde_json::to_string(&model.config)?);
    meta.insert("recipe".to_string(), serde_json::to_string(&model.recipe)?);
    meta.insert("kernel_layout".to_string(), gemm_i8::LAYOUT.to_string());
    let fused = if model.variant == Variant::Mobile { "qkv,fc1+gelu,attention-scale" } else { "qkv" };
    meta.insert("fused".to_string(), fused.to_string());
    if model.variant != Variant::Fp32 {
        meta.insert(FP32_LAYERS_KEY.to_string(), join_layers(&model.fp32_layers(), ","));
    }
    let sums: serde_json::Map<String, serde_json::Value> =
        tensors.iter().map(|(n, r)| (n.clone(), checksum(&r.bytes).into())).collect();
    meta.insert(CHECKSUMS_KEY.to_string(), serde_json::Value::Object(sums).to_string());
    let views: Vec<(String, &Raw)> = tensors.iter().map(|(n, r)| (n.clone(), r)).collect();
    Ok(safetensors::tensor::serialize(views, Some(meta))?)
}

/// Writes `model` to `path` atomically (a failure leaves no partial file) after checking that
/// the written file loads (checksums included); returns the size.
pub fn export(model: &Model, path: &Path) -> Result<u64> {
    use std::io::Write;
    let bytes = serialize(model).with_context(|| format!("cannot export {} ({})", model.id, model.variant))?;
    crate::fsutil::write_atomic_verified(
        path,
        |f| f.write_all(&bytes).map_err(Into::into),
        |written| {
            load(written, &Device::Cpu).map(|_| ()).context("the written file does not load back; nothing was replaced")
        },
    )?;
    Ok(bytes.len() as u64)
}

/// Whether `path` is one of our exported files (reads only the header).
pub fn is_exported(path: &Path) -> bool {
    read_header_metadata(path).map(|m| m.get("format").map(String::as_str) == Some(FORMAT)).unwrap_or(false)
}

/// The variant an exported file holds (reads only the header); `None` for anything else.
pub fn stored_variant(path: &Path) -> Option<Variant> {
    let meta = read_header_metadata(path).ok()?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return None;
    }
    meta.get("variant")?.parse().ok()
}

fn read_header_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 {
        bail!("header too large");
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let v: serde_json::Value = serde_json::from_slice(&header)?;
    let meta = v.get("__metadata__").and_then(|m| m.as_object()).context("no metadata")?;
    Ok(meta.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
}

/// Loads an exported file by memory map.
pub fn load(path: &Path, device: &Device) -> Result<Model> {
    let start = std::time::Instant::now();
    let model = load_inner(path, device).with_context(|| format!("cannot load exported model {}", path.display()))?;
    log::debug!("{}: loaded in {:.1} ms (checksums included)", path.display(), start.elapsed().as_secs_f64() * 1e3);
    Ok(model)
}

fn load_inner(path: &Path, device: &Device) -> Result<Model> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the map is read-only; a file changed underneath us while mapped is the same
    // hazard every mmap-based loader (safetensors, candle) accepts.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file)? });
    let st = SafeTensors::deserialize(&map).map_err(|e| anyhow::anyhow!("not a valid safetensors file: {e}"))?;
    let (_, header) = SafeTensors::read_metadata(&map).map_err(|e| anyhow::anyhow!("{e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        bail!("not a vit-workbench export (no `format = {FORMAT}` in its metadata)");
    }
    let version: u32 = meta.get("format_version").and_then(|v| v.parse().ok()).context("missing format_version")?;
    if version > FORMAT_VERSION {
        bail!(
            "format version {version} was written by a newer vit-workbench; this build reads up to version {FORMAT_VERSION}"
        );
    }
    verify_checksums(&st, &meta, version, path)?;
    let variant: Variant = meta.get("variant").context("missing variant")?.parse()?;
    let config: VitConfig =
        serde_json::from_str(meta.get("config").context("missing config")?).context("bad config metadata")?;
    config.validate()?;
    let recipe: Recipe =
        serde_json::from_str(meta.get("recipe").context("missing recipe")?).context("bad recipe metadata")?;
    recipe.validate()?;
    let layout = meta.get("kernel_layout").map(String::as_str).unwrap_or(gemm_i8::LAYOUT);
    if variant != Variant::Fp32 && layout != gemm_i8::LAYOUT {
        bail!("int8 weights are in layout `{layout}`, which this build does not read (expected {})", gemm_i8::LAYOUT);
    }
    let source = meta.get("source").cloned().unwrap_or_default();
    let scheme: Scheme = match meta.get("scheme") {
        Some(s) => s.parse().context("bad `scheme` metadata")?,
        None => Scheme::DEFAULT,
    };
    if !device.is_cpu() && variant != Variant::Fp32 && !scheme.is_default() {
        bail!(
            "its int8 weights use quantization scheme `{scheme}`, which runs on the CPU only (CUDA int8 is candle's Q8_0)"
        );
    }

    let mut r = Reader { st: &st, map: &map, used: Default::default(), scheme };
    let c = &config;
    let mobile = variant == Variant::Mobile;
    let dense = DenseWeights::read(c, mobile, |name, shape| r.f32(name, shape))?;
    let weights = VitWeights::assemble(dense, |name| {
        let (n, k) = name.shape(c);
        r.linear(&name.to_string(), n, k, mobile && matches!(name, LayerName::Block(_, BlockLayer::Fc1)))
    })?;
    if let Some(listed) = meta.get(FP32_LAYERS_KEY).filter(|_| variant != Variant::Fp32) {
        let stored = join_layers(&weights.fp32_layers(), ",");
        if *listed != stored {
            bail!("its metadata lists fp32 layers [{listed}] but it stores [{stored}] in fp32 (corrupt file)");
        }
    }
    let unused: Vec<String> = st.names().into_iter().filter(|n| !r.used.contains(*n)).map(str::to_string).collect();
    if !unused.is_empty() {
        bail!("unexpected tensors {unused:?}");
    }
    if variant == Variant::Fp32 {
        weights.check_finite(path);
    }
    let weights = weights.to_device(device)?;
    Ok(Model {
        id: if source.is_empty() { path.display().to_string() } else { source },
        config,
        recipe,
        weights,
        device: device.clone(),
        files: ModelFiles { config: path.to_path_buf(), weights: path.to_path_buf() },
        variant,
    })
}

/// Layer names joined by `sep` (`,` in file metadata, `;` in CSV cells).
pub fn join_layers(names: &[LayerName], sep: &str) -> String {
    names.iter().map(ToString::to_string).collect::<Vec<_>>().join(sep)
}

/// Every tensor's bytes against the checksum stored at export (format version 2 and later).
/// Version 1 files carry none: they load with a warning.
fn verify_checksums(st: &SafeTensors, meta: &HashMap<String, String>, version: u32, path: &Path) -> Result<()> {
    let Some(text) = meta.get(CHECKSUMS_KEY) else {
        if version >= 2 {
            bail!("format version {version} requires per-tensor checksums (`{CHECKSUMS_KEY}`), and they are missing");
        }
        log::warn!(
            "{}: format version {version} has no checksums, so corruption cannot be detected; re-export it to add them",
            path.display()
        );
        return Ok(());
    };
    let sums: HashMap<String, String> = serde_json::from_str(text).context("bad `tensor_xxh3` metadata")?;
    let start = std::time::Instant::now();
    let mut bytes = 0usize;
    let mut names = st.names();
    names.sort();
    for name in &names {
        let data = st.tensor(name).map_err(|e| anyhow::anyhow!("tensor `{name}`: {e}"))?.data();
        bytes += data.len();
        match sums.get(*name) {
            None => bail!("tensor `{name}` has no checksum"),
            Some(expected) if *expected != checksum(data) => {
                bail!("tensor `{name}` is corrupt: its bytes do not match the checksum written at export")
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = sums.keys().find(|k| !names.contains(&k.as_str())) {
        bail!("tensor `{extra}` is listed in the checksums but missing from the file");
    }
    log::debug!(
        "{}: {} tensor checksums ({:.1} MB) verified in {:.1} ms",
        path.display(),
        names.len(),
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

struct Reader<'a> {
    st: &'a SafeTensors<'a>,
    map: &'a Arc<memmap2::Mmap>,
    used: std::collections::HashSet<String>,
    /// The scheme of every int8 layer.
    scheme: Scheme,
}

impl Reader<'_> {
    fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }
    fn view(&mut self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<TensorView<'_>> {
        let v = self
            .st
            .tensor(name)
            .map_err(|_| anyhow::anyhow!("missing tensor `{name}` (expected {dtype:?} {shape:?})"))?;
        if v.dtype() != dtype || v.shape() != shape {
            bail!("tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}", v.dtype(), v.shape());
        }
        self.used.insert(name.to_string());
        Ok(v)
    }
    fn f32_vec(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let v = self.view(name, Dtype::F32, shape)?;
        Ok(v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
    fn f32(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.f32_vec(name, shape)?, shape, &Device::Cpu)?)
    }
    fn linear(&mut self, name: &str, n: usize, k: usize, fused_gelu: bool) -> Result<Linear> {
        let bias_name = format!("{name}.bias");
        let bias = if self.has(&bias_name) { Some(self.f32_vec(&bias_name, &[n])?) } else { None };
        if self.has(&format!("{name}.weight")) {
            let w = self.f32(&format!("{name}.weight"), &[n, k])?;
            return Linear::f32(w, bias.map(|b| Tensor::from_vec(b, n, &Device::Cpu)).transpose()?);
        }
        let map = self.map.clone();
        let q = self.view(&format!("{name}.qweight"), Dtype::I8, &[n, k])?;
        let offset = q.data().as_ptr() as usize - map.as_ptr() as usize;
        let data = Bytes::Mapped { map, offset, len: n * k };
        let scales = self.f32_vec(&format!("{name}.scale"), &[n])?;
        if scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
            bail!("tensor `{name}.scale` holds negative or non-finite scales");
        }
        let mut weights = PackedWeights::from_parts(n, k, data, scales);
        let sums_name = format!("{name}.row_sums");
        if self.has(&sums_name) {
            let v = self.view(&sums_name, Dtype::I32, &[n])?;
            let stored: Vec<i32> =
                v.data().chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if stored != weights.row_sums {
                bail!("tensor `{sums_name}` does not match its weights (corrupt file)");
            }
            weights.row_sums = stored;
        }
        Ok(Linear::Int8(Arc::new(Int8Linear { weights, bias, fused_gelu, scheme: self.scheme })))
    }
}
