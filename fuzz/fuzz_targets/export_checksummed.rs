//! Exported-file bytes -> loaded model, with the per-tensor checksums (format v2, `tensor_xxh3`)
//! recomputed after the fuzzer's mutation. Without this nearly every mutated tensor byte is
//! refused by checksum verification, so the metadata, config, recipe and tensor checks behind it
//! are never reached. The checksum text is written as src/quant/export.rs writes it: XXH3-64 of
//! each tensor's bytes, 16 lowercase hex digits, as a JSON object in the metadata. Inputs that
//! are not a safetensors file with metadata are loaded as they are (the `export` target's path).
#![no_main]
use libfuzzer_sys::fuzz_target;
use safetensors::SafeTensors;
use serde_json::{Map, Value};
use vit_workbench::quant::export::{CHECKSUMS_KEY, load};

/// The input with its header's `tensor_xxh3` replaced by the checksums of the tensors it holds;
/// `None` when the bytes are not a safetensors file whose header has a metadata object.
fn with_recomputed_checksums(data: &[u8]) -> Option<Vec<u8>> {
    let st = SafeTensors::deserialize(data).ok()?;
    let header_len = usize::try_from(u64::from_le_bytes(data.get(..8)?.try_into().ok()?)).ok()?;
    let mut header: Map<String, Value> = serde_json::from_slice(data.get(8..8 + header_len)?).ok()?;
    let sums: Map<String, Value> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, format!("{:016x}", xxhash_rust::xxh3::xxh3_64(view.data())).into()))
        .collect();
    let meta = header.get_mut("__metadata__")?.as_object_mut()?;
    meta.insert(CHECKSUMS_KEY.to_string(), Value::String(Value::Object(sums).to_string()));
    let mut new_header = serde_json::to_vec(&header).ok()?;
    // Data offsets are relative to the end of the header, so only the header changes.
    new_header.resize(new_header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + new_header.len() + data.len() - 8 - header_len);
    out.extend_from_slice(&(new_header.len() as u64).to_le_bytes());
    out.extend_from_slice(&new_header);
    out.extend_from_slice(&data[8 + header_len..]);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let fixed = with_recomputed_checksums(data);
    let bytes = fixed.as_deref().unwrap_or(data);
    let path = std::env::temp_dir().join(format!("vitwb-fuzz-ck-{}.vitwb", std::process::id()));
    if std::fs::write(&path, bytes).is_ok() {
        let _ = load(&path, &candle_core::Device::Cpu);
    }
});
