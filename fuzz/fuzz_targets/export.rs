//! Exported-file bytes -> loaded model (memory-mapped): errors are fine, panics are not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vitwb-fuzz-{}.vitwb", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = vit_workbench::quant::export::load(&path, &candle_core::Device::Cpu);
    }
});
