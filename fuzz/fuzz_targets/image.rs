//! Image bytes -> decoded RGB -> preprocessed model input: must never panic or allocate without
//! bound, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vit_workbench::preprocess::{Recipe, decode_image};

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image(data) {
        let _ = Recipe::hf_vit(32).resize_and_crop(&img);
        let _ = Recipe::deit(32).resize_and_crop(&img);
    }
});
