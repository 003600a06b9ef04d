//! Checkpoint bytes (safetensors) -> model weights for the tiny timm fixture's config: errors are
//! fine, panics are not.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vit_workbench::model::checkpoint::load_weights;
use vit_workbench::model::config::{VitConfig, parse_config};

fn config() -> &'static VitConfig {
    static C: OnceLock<VitConfig> = OnceLock::new();
    C.get_or_init(|| {
        let json = serde_json::from_str(include_str!("../../tests/fixtures/timm_vit/config.json")).unwrap();
        parse_config(&json, None).unwrap().config
    })
}

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vitwb-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = load_weights(&path, config(), &candle_core::Device::Cpu);
    }
});
