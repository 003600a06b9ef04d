//! The one source of linear-layer names: `patch`, `blocks.N.qkv|proj|fc1|fc2`, `heads.I`, as the
//! export layout spells them. Quantization, export, loading, sensitivity and `--keep-fp32` all
//! name layers through [`LayerName`], so the write and read sides cannot drift apart.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

use super::config::{HeadMode, VitConfig};

/// A linear layer inside a transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockLayer {
    /// q, k and v fused: `[3D, D]`.
    Qkv,
    Proj,
    Fc1,
    Fc2,
}

impl BlockLayer {
    pub const ALL: [BlockLayer; 4] = [BlockLayer::Qkv, BlockLayer::Proj, BlockLayer::Fc1, BlockLayer::Fc2];

    pub fn name(self) -> &'static str {
        match self {
            BlockLayer::Qkv => "qkv",
            BlockLayer::Proj => "proj",
            BlockLayer::Fc1 => "fc1",
            BlockLayer::Fc2 => "fc2",
        }
    }
}

/// One linear layer of the network. Ordered as the forward meets them (patch, blocks, heads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerName {
    /// The patch-embedding convolution, as a linear layer on flattened patches.
    Patch,
    Block(usize, BlockLayer),
    /// Classifier head `I`, reading token `I` (1 for DeiT's distillation head).
    Head(usize),
}

impl LayerName {
    /// Every linear layer of a network with `depth` blocks and `heads` classifier heads, in
    /// forward order.
    pub fn all(depth: usize, heads: usize) -> Vec<LayerName> {
        let blocks = (0..depth).flat_map(|i| BlockLayer::ALL.map(|l| LayerName::Block(i, l)));
        std::iter::once(LayerName::Patch).chain(blocks).chain((0..heads).map(LayerName::Head)).collect()
    }

    /// `(out, in)` features of this layer in a model of `config`.
    pub fn shape(&self, c: &VitConfig) -> (usize, usize) {
        let d = c.hidden;
        match self {
            LayerName::Patch => (d, 3 * c.patch * c.patch),
            LayerName::Block(_, BlockLayer::Qkv) => (3 * d, d),
            LayerName::Block(_, BlockLayer::Proj) => (d, d),
            LayerName::Block(_, BlockLayer::Fc1) => (c.mlp, d),
            LayerName::Block(_, BlockLayer::Fc2) => (d, c.mlp),
            LayerName::Head(_) => (c.num_classes(), d),
        }
    }
}

/// Classifier heads of a config: two (class and distillation token) for DeiT distilled.
pub fn head_count(c: &VitConfig) -> usize {
    if c.head_mode == HeadMode::MeanClsDist { 2 } else { 1 }
}

impl fmt::Display for LayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerName::Patch => f.write_str("patch"),
            LayerName::Block(i, l) => write!(f, "blocks.{i}.{}", l.name()),
            LayerName::Head(i) => write!(f, "heads.{i}"),
        }
    }
}

impl FromStr for LayerName {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<LayerName> {
        let index = |v: &str| v.parse::<usize>().ok().filter(|_| !v.starts_with('+'));
        let parts: Vec<&str> = s.trim().split('.').collect();
        let name = match parts.as_slice() {
            ["patch"] => Some(LayerName::Patch),
            ["heads", i] => index(i).map(LayerName::Head),
            ["blocks", i, l] => {
                index(i).zip(BlockLayer::ALL.into_iter().find(|b| b.name() == *l)).map(|(i, l)| LayerName::Block(i, l))
            }
            _ => None,
        };
        match name {
            Some(n) => Ok(n),
            None => bail!("`{}` is not a layer name (patch, blocks.N.qkv|proj|fc1|fc2, heads.I)", s.trim()),
        }
    }
}

impl serde::Serialize for LayerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_forward_order() {
        let all = LayerName::all(2, 2);
        let text: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(text[..3], ["patch", "blocks.0.qkv", "blocks.0.proj"]);
        assert_eq!(text[9..], ["heads.0", "heads.1"]);
        for (n, t) in all.iter().zip(&text) {
            assert_eq!(&t.parse::<LayerName>().unwrap(), n);
        }
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, all);
        for bad in ["", "blocks.0", "blocks.x.qkv", "blocks.0.q", "heads.-1", "head.0", "blocks.+1.fc1"] {
            assert!(bad.parse::<LayerName>().is_err(), "{bad}");
        }
    }
}
