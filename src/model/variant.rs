//! Which variant of a model a weight set is: fp32, int8 or mobile. A field of every
//! [`super::Model`], so it lives here; `quant` makes the variants (and re-exports this).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Fp32,
    Int8,
    Mobile,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Fp32, Variant::Int8, Variant::Mobile];
    pub fn name(self) -> &'static str {
        match self {
            Variant::Fp32 => "fp32",
            Variant::Int8 => "int8",
            Variant::Mobile => "mobile",
        }
    }

    /// What `self` is compared with by default: fp32 is the reference for the quantized
    /// variants, and fp32 itself is compared with int8 (the window's compare view).
    pub fn default_partner(self) -> Variant {
        if self == Variant::Fp32 { Variant::Int8 } else { Variant::Fp32 }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Variant> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(Variant::Fp32),
            "int8" | "i8" => Ok(Variant::Int8),
            "mobile" => Ok(Variant::Mobile),
            other => bail!("unknown variant `{other}` (expected fp32, int8 or mobile)"),
        }
    }
}

/// Parses `fp32,int8,mobile`.
pub fn parse_variants(list: &str) -> Result<Vec<Variant>> {
    let mut v = Vec::new();
    for s in list.split(',').filter(|s| !s.trim().is_empty()) {
        let x: Variant = s.parse()?;
        if !v.contains(&x) {
            v.push(x);
        }
    }
    if v.is_empty() {
        bail!("no variants given");
    }
    Ok(v)
}
