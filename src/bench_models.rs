//! Random-weight checkpoints with the real shapes, for speed measurements only (their labels
//! mean nothing). The Rust twin of `tools/make_bench_models.py`, so a machine without torch —
//! CI, or the GPU machine of `tools/gpu-check.sh`, which cannot receive a 340 MB ViT-B — can
//! make them: a transformers-layout folder (`config.json` + `model.safetensors`) that every
//! command loads like a downloaded model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// A tensor as little-endian f32 bytes and its shape.
type Raw = (Vec<u8>, Vec<usize>);

fn le_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(f32::to_le_bytes).collect()
}

/// The sizes of one ViT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomVit {
    /// Folder name, as `tools/make_bench_models.py` names it.
    pub name: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp: usize,
    pub image: usize,
    pub patch: usize,
    pub classes: usize,
}

/// ViT-B/16 and DeiT-Ti (the benchmark's models), and a tiny one for tests of the scripts.
pub const PRESETS: &[RandomVit] = &[
    // google/vit-base-patch16-224
    RandomVit {
        name: "vit-base-patch16-224-random",
        hidden: 768,
        layers: 12,
        heads: 12,
        mlp: 3072,
        image: 224,
        patch: 16,
        classes: 1000,
    },
    // facebook/deit-tiny-patch16-224
    RandomVit {
        name: "deit-tiny-patch16-224-random",
        hidden: 192,
        layers: 12,
        heads: 3,
        mlp: 768,
        image: 224,
        patch: 16,
        classes: 1000,
    },
    // Seconds on any CPU: for checking scripts, not for numbers.
    RandomVit { name: "tiny-random", hidden: 64, layers: 2, heads: 2, mlp: 128, image: 64, patch: 16, classes: 10 },
];

/// The presets `tools/make_bench_models.py` makes too.
pub const DEFAULT_PRESETS: [&str; 2] = ["vit-base-patch16-224-random", "deit-tiny-patch16-224-random"];

pub fn preset(name: &str) -> Result<RandomVit> {
    PRESETS.iter().copied().find(|p| p.name == name).with_context(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        format!("unknown random model `{name}` (expected one of {})", names.join(", "))
    })
}

/// xorshift64*: reproducible weights without a dependency; the values only need to be
/// well-scaled (no denormals, no overflow), not statistically perfect.
struct Rng(u64);

impl Rng {
    /// Uniform in [-a, a].
    fn uniform(&mut self, a: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }
}

impl RandomVit {
    /// Every tensor of a transformers `ViTForImageClassification` checkpoint. Weights are
    /// uniform with transformers' init std (0.02), biases 0, LayerNorms identity.
    fn tensors(&self, seed: u64) -> Result<HashMap<String, Raw>> {
        let mut rng = Rng(seed | 1);
        // Uniform on [-a, a] has std a/sqrt(3).
        let a = 0.02 * 3f32.sqrt();
        let mut t = HashMap::new();
        let mut random = |name: String, shape: &[usize], t: &mut HashMap<String, Raw>| -> Result<()> {
            let n: usize = shape.iter().product();
            t.insert(name, (le_bytes((0..n).map(|_| rng.uniform(a))), shape.to_vec()));
            Ok(())
        };
        let fill = |name: String, n: usize, value: f32, t: &mut HashMap<String, Raw>| -> Result<()> {
            t.insert(name, (le_bytes(std::iter::repeat_n(value, n)), vec![n]));
            Ok(())
        };
        let (d, tokens) = (self.hidden, (self.image / self.patch).pow(2) + 1);
        let e = "vit.embeddings";
        random(format!("{e}.cls_token"), &[1, 1, d], &mut t)?;
        random(format!("{e}.position_embeddings"), &[1, tokens, d], &mut t)?;
        random(format!("{e}.patch_embeddings.projection.weight"), &[d, 3, self.patch, self.patch], &mut t)?;
        fill(format!("{e}.patch_embeddings.projection.bias"), d, 0.0, &mut t)?;
        for i in 0..self.layers {
            let l = format!("vit.encoder.layer.{i}");
            for (name, out, inp) in [
                ("attention.attention.query", d, d),
                ("attention.attention.key", d, d),
                ("attention.attention.value", d, d),
                ("attention.output.dense", d, d),
                ("intermediate.dense", self.mlp, d),
                ("output.dense", d, self.mlp),
            ] {
                random(format!("{l}.{name}.weight"), &[out, inp], &mut t)?;
                fill(format!("{l}.{name}.bias"), out, 0.0, &mut t)?;
            }
            for ln in ["layernorm_before", "layernorm_after"] {
                fill(format!("{l}.{ln}.weight"), d, 1.0, &mut t)?;
                fill(format!("{l}.{ln}.bias"), d, 0.0, &mut t)?;
            }
        }
        fill("vit.layernorm.weight".into(), d, 1.0, &mut t)?;
        fill("vit.layernorm.bias".into(), d, 0.0, &mut t)?;
        random("classifier.weight".into(), &[self.classes, d], &mut t)?;
        fill("classifier.bias".into(), self.classes, 0.0, &mut t)?;
        Ok(t)
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["ViTForImageClassification"],
            "model_type": "vit",
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": self.mlp,
            "hidden_act": "gelu",
            "image_size": self.image,
            "patch_size": self.patch,
            "num_channels": 3,
            "num_labels": self.classes,
            "layer_norm_eps": 1e-12,
            "qkv_bias": true,
            "note": "random weights made by vit-workbench random-models: for speed measurements only",
        })
    }

    /// Writes `dir/<name>/{config.json, model.safetensors}` (each file atomically) and returns
    /// the model folder.
    pub fn write(&self, dir: &Path, seed: u64) -> Result<PathBuf> {
        if !self.hidden.is_multiple_of(self.heads) || !self.image.is_multiple_of(self.patch) {
            bail!("{}: hidden must divide by heads and image by patch", self.name);
        }
        let out = dir.join(self.name);
        std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
        let weights = out.join("model.safetensors");
        let tensors = self.tensors(seed)?;
        let views = tensors
            .iter()
            .map(|(k, (bytes, shape))| Ok((k.as_str(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
            .collect::<Result<Vec<_>>>()?;
        let bytes =
            safetensors::serialize(views, None).with_context(|| format!("cannot serialize {}", weights.display()))?;
        crate::fsutil::write_atomic(&weights, &bytes)?;
        crate::fsutil::write_atomic(
            &out.join("config.json"),
            serde_json::to_string_pretty(&self.config_json())?.as_bytes(),
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_real_shapes_and_unknown_names_are_refused() {
        let vitb = preset("vit-base-patch16-224-random").unwrap();
        assert_eq!((vitb.hidden, vitb.layers, vitb.heads, vitb.mlp), (768, 12, 12, 3072));
        let deit = preset("deit-tiny-patch16-224-random").unwrap();
        assert_eq!((deit.hidden, deit.layers, deit.heads, deit.mlp), (192, 12, 3, 768));
        let e = preset("vit-huge").unwrap_err().to_string();
        assert!(e.contains("unknown random model `vit-huge`") && e.contains("tiny-random"), "{e}");
    }

    #[test]
    fn random_values_are_bounded_and_not_constant() {
        let mut r = Rng(1);
        let v: Vec<f32> = (0..10_000).map(|_| r.uniform(0.5)).collect();
        assert!(v.iter().all(|x| x.abs() <= 0.5));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(mean.abs() < 0.02 && (std - 0.5 / 3f32.sqrt()).abs() < 0.01, "mean {mean} std {std}");
    }
}
