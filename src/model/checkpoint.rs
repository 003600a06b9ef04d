//! Checkpoint files -> one canonical weight set.
//!
//! Three naming schemes reach us for the same network: timm (`blocks.N.attn.qkv`, fused), and
//! transformers before and after its v5 renaming (`encoder.layer.N.attention.attention.query` vs
//! `layers.N.attention.q_proj`), under a `vit.` or `deit.` prefix. Each is mapped onto
//! [`VitWeights`], with q/k/v fused into one projection, every shape checked against the config
//! and every tensor of the file accounted for: a tensor we would silently ignore is as much a
//! sign of the wrong model as a missing one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

use super::config::{HeadMode, Layout, VitConfig};
use super::layers::{BlockLayer, LayerName, head_count};
use super::vit::{DenseWeights, LayerNorm, Linear, VitWeights};

/// What a checkpoint of a config may declare, checked against every tensor's declared shape
/// before its data is read: a lying header cannot make us allocate more than the model needs.
#[derive(Clone, Copy, Debug)]
pub struct TensorBudget {
    /// Elements of the largest tensor the config implies.
    pub max_elements: u64,
    /// Elements of all tensors together: twice the parameters (plus transformers' unused
    /// pooler), so that a mis-shaped tensor still gets its precise message from the mapping.
    pub total_elements: u64,
}

impl TensorBudget {
    pub fn for_config(c: &VitConfig) -> TensorBudget {
        let (d, m, p, n) = (c.hidden as u64, c.mlp as u64, c.patch as u64, c.num_classes() as u64);
        let max_elements =
            [3 * d * d, d * m, n * d, c.num_tokens() as u64 * d, 3 * p * p * d].into_iter().max().unwrap_or(0);
        TensorBudget { max_elements, total_elements: 2 * (c.param_count() as u64 + d * d + d) }
    }

    /// Checks declared (name, shape) pairs; returns the total element count.
    fn check<'a>(&self, path: &Path, declared: impl Iterator<Item = (&'a str, &'a [usize])>) -> Result<u64> {
        let mut total = 0u64;
        for (name, shape) in declared {
            let n = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            match n {
                Some(n) if n <= self.max_elements => total += n,
                _ => bail!(
                    "{}: tensor `{name}` declares shape {shape:?}, larger than any tensor of this model's config \
                     (at most {} elements); refused before reading it",
                    path.display(),
                    self.max_elements
                ),
            }
        }
        if total > self.total_elements {
            bail!(
                "{}: the tensors declare {total} elements in all, more than the {} this model's config has",
                path.display(),
                self.total_elements
            );
        }
        Ok(total)
    }
}

/// Reads every tensor of a `.safetensors` or PyTorch `.bin` (zip/pickle) file as f32 on the CPU.
/// Each declared shape is checked against `budget` before anything is allocated for it.
///
/// The pickle reader is candle's: it interprets the opcodes needed to rebuild a state dict and
/// never imports or calls Python code: a `.bin` whose pickle would call `os.system` is read as
/// data (the call is never made) and then refused for what it holds.
pub fn read_tensors(path: &Path, budget: &TensorBudget) -> Result<HashMap<String, Tensor>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let raw: Vec<(String, Tensor)> = match ext {
        "safetensors" => {
            let data = read_safetensors_checked(path, budget)?;
            candle_core::safetensors::load_buffer(&data, &Device::Cpu)
                .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?
                .into_iter()
                .collect()
        }
        "bin" | "pt" | "pth" => {
            if !path.exists() {
                bail!("{} does not exist", path.display());
            }
            let bad =
                |e: candle_core::Error| anyhow::anyhow!("{}: not a readable PyTorch state dict: {e}", path.display());
            let pth = candle_core::pickle::PthTensors::new(path, None).map_err(bad)?;
            budget.check(path, pth.tensor_infos().iter().map(|(n, i)| (n.as_str(), i.layout.dims())))?;
            let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
            names.sort();
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                if let Some(t) = pth.get(name).map_err(bad)? {
                    out.push((name.clone(), t));
                }
            }
            out
        }
        _ => bail!("{}: unknown checkpoint format (expected .safetensors or .bin)", path.display()),
    };
    if raw.is_empty() {
        bail!("{}: holds no tensors (not a plain state dict of a ViT/DeiT)", path.display());
    }
    raw.into_iter()
        .map(|(name, t)| {
            let t = match t.dtype() {
                DType::F32 => t,
                DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
                other => bail!("{}: tensor `{name}` has dtype {other:?}; expected floating point", path.display()),
            };
            Ok((name, t))
        })
        .collect()
}

/// Reads a safetensors file after checking its header: every declared shape within `budget`,
/// and the file no longer than its header says.
fn read_safetensors_checked(path: &Path, budget: &TensorBudget) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let invalid = |why: &str| anyhow::anyhow!("{}: not a valid safetensors file: {why}", path.display());
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|_| invalid("shorter than its 8-byte header length"))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > 100_000_000 || header_len > file_len.saturating_sub(8) {
        return Err(invalid(&format!("header length {header_len} exceeds the file ({file_len} bytes)")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let json: serde_json::Value = serde_json::from_slice(&header).map_err(|e| invalid(&format!("header: {e}")))?;
    let entries = json.as_object().ok_or_else(|| invalid("the header is not a JSON object"))?;
    let mut declared = Vec::new();
    for (name, v) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect::<Option<_>>())
            .ok_or_else(|| invalid(&format!("tensor `{name}` has no valid shape")))?;
        declared.push((name.as_str(), shape));
    }
    let elements = budget.check(path, declared.iter().map(|(n, s)| (*n, s.as_slice())))?;
    // At most 8 bytes per element (f64): a longer file holds data no tensor declares.
    if file_len - 8 - header_len > elements.saturating_mul(8) {
        return Err(invalid(&format!("{file_len} bytes, more than its tensors declare")));
    }
    let mut data = Vec::new();
    data.try_reserve_exact(file_len as usize)
        .with_context(|| format!("not enough memory to read {}", path.display()))?;
    data.extend_from_slice(&n);
    data.extend_from_slice(&header);
    file.read_to_end(&mut data)?;
    Ok(data)
}

/// Takes tensors out by name, checking shapes, and reports what was left over.
struct Store {
    file: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Store {
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .with_context(|| format!("{}: missing tensor `{name}` (expected shape {shape:?})", self.file.display()))?;
        if t.dims() != shape {
            bail!("{}: tensor `{name}` has shape {:?}, expected {shape:?}", self.file.display(), t.dims());
        }
        Ok(t)
    }
    fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.has(name) { self.take(name, shape).map(Some) } else { Ok(None) }
    }
    /// A linear layer's weight `[out, inp]` and bias (required when `bias`, else if present).
    fn weight_and_bias(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let w = self.take(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.take(&format!("{prefix}.bias"), &[out])?)
        } else {
            self.take_opt(&format!("{prefix}.bias"), &[out])?
        };
        Ok((w, b))
    }
    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let (w, b) = self.weight_and_bias(prefix, out, inp, bias)?;
        Linear::f32(w, b)
    }
    fn layer_norm(&mut self, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.take(&format!("{prefix}.weight"), &[dim])?,
            bias: self.take(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }
    /// q, k, v projections fused into one `[3D, D]` projection, as timm stores them.
    fn fused_qkv(&mut self, q_prefix: &str, k_prefix: &str, v_prefix: &str, d: usize, bias: bool) -> Result<Linear> {
        // The raw tensors, not three layers: a layer packs its weights for the kernel, and these
        // three are only concatenated.
        let (qw, qb) = self.weight_and_bias(q_prefix, d, d, bias)?;
        let (kw, kb) = self.weight_and_bias(k_prefix, d, d, bias)?;
        let (vw, vb) = self.weight_and_bias(v_prefix, d, d, bias)?;
        let w = Tensor::cat(&[&qw, &kw, &vw], 0)?;
        let b = match (qb, kb, vb) {
            (Some(a), Some(b), Some(c)) => Some(Tensor::cat(&[&a, &b, &c], 0)?),
            (None, None, None) => None,
            _ => {
                bail!("{}: `{q_prefix}`, `{k_prefix}` and `{v_prefix}` disagree on having a bias", self.file.display())
            }
        };
        Linear::f32(w, b)
    }
    fn finish(self) -> Result<()> {
        // transformers may save the (unused for classification) pooler.
        let mut left: Vec<&String> = self.tensors.keys().filter(|k| !k.contains("pooler.")).collect();
        if !left.is_empty() {
            left.sort();
            let shown: Vec<String> = left.iter().take(5).map(|s| format!("`{s}`")).collect();
            bail!(
                "{}: {} unexpected tensor(s) the config does not account for: {}{}",
                self.file.display(),
                left.len(),
                shown.join(", "),
                if left.len() > 5 { ", ..." } else { "" }
            );
        }
        Ok(())
    }
}

/// Maps a checkpoint's tensors onto the canonical weights for `config`.
pub fn load_weights(path: &Path, config: &VitConfig, device: &Device) -> Result<VitWeights> {
    let tensors = read_tensors(path, &TensorBudget::for_config(config))?;
    let mut store = Store { file: path.to_path_buf(), tensors };
    let weights = match config.layout {
        Layout::Timm => map_timm(&mut store, config)?,
        Layout::Hf => map_hf(&mut store, config)?,
    };
    store.finish()?;
    weights.check_finite(path);
    weights.to_device(device)
}

fn map_timm(s: &mut Store, c: &VitConfig) -> Result<VitWeights> {
    let (d, p, eps) = (c.hidden, c.patch, c.layer_norm_eps);
    let block_norms = (0..c.depth)
        .map(|i| {
            Ok((
                s.layer_norm(&format!("blocks.{i}.norm1"), d, eps)?,
                s.layer_norm(&format!("blocks.{i}.norm2"), d, eps)?,
            ))
        })
        .collect::<Result<_>>()?;
    let dense = DenseWeights {
        cls_token: s.take("cls_token", &[1, 1, d])?,
        dist_token: if c.dist_token { Some(s.take("dist_token", &[1, 1, d])?) } else { None },
        pos_embed: s.take("pos_embed", &[1, c.num_tokens(), d])?,
        block_norms,
        norm: s.layer_norm("norm", d, eps)?,
        head_tokens: (0..head_count(c)).collect(),
        attention_scale_folded: false,
    };
    VitWeights::assemble(dense, |name| {
        let (out, inp) = name.shape(c);
        match *name {
            LayerName::Patch => s.linear_from_conv("patch_embed.proj", d, p),
            LayerName::Block(i, l) => {
                let source = match l {
                    BlockLayer::Qkv => "attn.qkv",
                    BlockLayer::Proj => "attn.proj",
                    BlockLayer::Fc1 => "mlp.fc1",
                    BlockLayer::Fc2 => "mlp.fc2",
                };
                s.linear(&format!("blocks.{i}.{source}"), out, inp, l != BlockLayer::Qkv || c.qkv_bias)
            }
            LayerName::Head(0) => s.linear("head", out, inp, true),
            LayerName::Head(_) => s.linear("head_dist", out, inp, true),
        }
    })
}

fn map_hf(s: &mut Store, c: &VitConfig) -> Result<VitWeights> {
    let (d, p, eps) = (c.hidden, c.patch, c.layer_norm_eps);
    let prefix = if s.has("deit.embeddings.cls_token") {
        "deit."
    } else if s.has("vit.embeddings.cls_token") {
        "vit."
    } else if s.has("embeddings.cls_token") {
        ""
    } else {
        bail!(
            "{}: no `vit.embeddings.cls_token` or `deit.embeddings.cls_token`: not a transformers ViT/DeiT checkpoint",
            s.file.display()
        );
    };
    // transformers v5 renamed the encoder tensors; both spellings are in the wild.
    let v5 = s.has(&format!("{prefix}layers.0.layernorm_before.weight"));
    let block = |i: usize| if v5 { format!("{prefix}layers.{i}") } else { format!("{prefix}encoder.layer.{i}") };
    let block_norms = (0..c.depth)
        .map(|i| {
            let b = block(i);
            Ok((
                s.layer_norm(&format!("{b}.layernorm_before"), d, eps)?,
                s.layer_norm(&format!("{b}.layernorm_after"), d, eps)?,
            ))
        })
        .collect::<Result<_>>()?;
    let e = format!("{prefix}embeddings");
    let dense = DenseWeights {
        cls_token: s.take(&format!("{e}.cls_token"), &[1, 1, d])?,
        dist_token: if c.dist_token { Some(s.take(&format!("{e}.distillation_token"), &[1, 1, d])?) } else { None },
        pos_embed: s.take(&format!("{e}.position_embeddings"), &[1, c.num_tokens(), d])?,
        block_norms,
        norm: s.layer_norm(&format!("{prefix}layernorm"), d, eps)?,
        head_tokens: (0..head_count(c)).collect(),
        attention_scale_folded: false,
    };
    let distilled = c.head_mode == HeadMode::MeanClsDist;
    VitWeights::assemble(dense, |name| {
        let (out, inp) = name.shape(c);
        match *name {
            LayerName::Patch => s.linear_from_conv(&format!("{e}.patch_embeddings.projection"), d, p),
            LayerName::Block(i, BlockLayer::Qkv) => {
                let b = block(i);
                let [q, k, v] = if v5 {
                    ["q_proj", "k_proj", "v_proj"].map(|n| format!("{b}.attention.{n}"))
                } else {
                    ["query", "key", "value"].map(|n| format!("{b}.attention.attention.{n}"))
                };
                s.fused_qkv(&q, &k, &v, d, c.qkv_bias)
            }
            LayerName::Block(i, l) => {
                let source = match (l, v5) {
                    (BlockLayer::Proj, true) => "attention.o_proj",
                    (BlockLayer::Proj, false) => "attention.output.dense",
                    (BlockLayer::Fc1, true) => "mlp.fc1",
                    (BlockLayer::Fc1, false) => "intermediate.dense",
                    (_, true) => "mlp.fc2",
                    (_, false) => "output.dense",
                };
                s.linear(&format!("{}.{source}", block(i)), out, inp, true)
            }
            LayerName::Head(0) if distilled => s.linear("cls_classifier", out, inp, true),
            LayerName::Head(0) => s.linear("classifier", out, inp, true),
            LayerName::Head(_) => s.linear("distillation_classifier", out, inp, true),
        }
    })
}

impl Store {
    /// The patch-embedding convolution (kernel = stride = patch) as a linear layer on flattened
    /// `(channel, row, column)` patches: the same arithmetic, and one more layer the kernels and
    /// quantizers can treat like any other.
    fn linear_from_conv(&mut self, prefix: &str, d: usize, p: usize) -> Result<Linear> {
        let w = self.take(&format!("{prefix}.weight"), &[d, 3, p, p])?;
        let b = self.take(&format!("{prefix}.bias"), &[d])?;
        Linear::f32(w.reshape((d, 3 * p * p))?, Some(b))
    }
}
