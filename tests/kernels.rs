//! Every kernel path this CPU supports against the reference, on odd shapes. int8 GEMM must be
//! bit-exact (same integers, same epilogue arithmetic) with a naive integer loop — the portable
//! path included, since it is vectorised code of its own.

use vit_workbench::kernels::gemm_i8::{self, Epilogue, PackedWeights, QuantizedRows};
use vit_workbench::kernels::{Isa, available_isas};

/// The definition: exact i32 dot products in plain nested loops, then the shared epilogue.
fn naive(a: &QuantizedRows, w: &PackedWeights, bias: Option<&[f32]>, epilogue: Epilogue) -> Vec<f32> {
    let (m, k, n) = (a.m, a.k, w.n);
    let wd = w.data.as_slice();
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        let mut acc = vec![0i32; n];
        for (j, s) in acc.iter_mut().enumerate() {
            for t in 0..k {
                *s += a.data[i * k + t] as i32 * wd[j * k + t] as i32;
            }
        }
        gemm_i8::epilogue_row(&acc, &[], a.scales[i], &w.scales, bias, epilogue, &mut out[i * n..(i + 1) * n]);
    }
    out
}

fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

#[test]
fn int8_gemm_paths_match_the_naive_loop_exactly() {
    let isas = available_isas();
    println!("int8 GEMM paths tested on this CPU: {:?}", isas.iter().map(|i| i.name()).collect::<Vec<_>>());
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("CI").is_some() {
        // The CI CPU has all three: a build that silently dropped one would test less.
        use std::arch::is_x86_feature_detected as has;
        for (feature, isa) in [
            (has!("avx512vnni"), Isa::Avx512Vnni),
            (has!("avx512vnni") && has!("avx512vl"), Isa::AvxVnniEvex),
            (has!("avxvnni"), Isa::AvxVnni),
            (has!("avx2"), Isa::Avx2),
        ] {
            assert!(!feature || isas.contains(&isa), "the CPU supports {}: its path must be tested", isa.name());
        }
    }
    let mut cases = 0;
    for &m in &[1usize, 7, 197] {
        for &k in &[192usize, 384, 768, 3072, 100] {
            for &n in &[37usize, 192, 1000] {
                let x = pseudo_random(m * k, (m * 31 + k) as u64, 3.0);
                let w = pseudo_random(n * k, (n * 17 + k) as u64, 0.2);
                let bias = pseudo_random(n, n as u64, 1.0);
                let packed = PackedWeights::quantize(&w, n, k);
                let a = gemm_i8::quantize_rows(&x, m, k);
                for epilogue in [Epilogue::None, Epilogue::Gelu] {
                    let reference = naive(&a, &packed, Some(&bias), epilogue);
                    for &isa in &isas {
                        let mut out = vec![f32::NAN; m * n];
                        gemm_i8::gemm(isa, &a, &packed, Some(&bias), epilogue, &mut out);
                        let bad = out.iter().zip(&reference).position(|(a, b)| a.to_bits() != b.to_bits());
                        assert!(
                            bad.is_none(),
                            "{} differs from the naive loop at m={m} k={k} n={n} {epilogue:?}: index {:?}",
                            isa.name(),
                            bad
                        );
                        cases += 1;
                    }
                }
                // Without bias too (the qkv of some models).
                let r0 = naive(&a, &packed, None, Epilogue::None);
                for &isa in &isas {
                    let mut o = vec![0f32; m * n];
                    gemm_i8::gemm(isa, &a, &packed, None, Epilogue::None, &mut o);
                    assert_eq!(o, r0, "{} without bias", isa.name());
                }
            }
        }
    }
    println!("{cases} (path, shape, epilogue) cases bit-exact");
}

#[test]
fn fused_linear_paths_match_quantize_then_gemm() {
    use vit_workbench::kernels::gemm_i8::linear;
    // k = 45: not a multiple of 4 (padded groups) and shorter than one 32-wide quantization step.
    for &(m, k, n) in &[(1usize, 192usize, 576usize), (7, 100, 37), (5, 45, 20), (197, 768, 3072), (197, 3072, 768)] {
        let mut x = pseudo_random(m * k, 7 + k as u64, 4.0);
        // Row 0 scaled so its max is 127 (scale 1) with exact .5 ties to round half to even; an
        // all-zero last row (scale 0).
        x[0] = 127.0;
        for (j, v) in x[1..k].iter_mut().enumerate() {
            *v = (j as f32 % 50.0) - 24.5;
        }
        if m > 1 {
            x[(m - 1) * k..].fill(0.0);
        }
        let w = PackedWeights::quantize(&pseudo_random(n * k, 3 + n as u64, 0.1), n, k);
        let bias = pseudo_random(n, 11, 0.5);
        let reference = naive(&gemm_i8::quantize_rows(&x, m, k), &w, Some(&bias), Epilogue::Gelu);
        for &isa in &available_isas() {
            // The output is not zero-filled first: every element must be written.
            let out = linear(isa, &x, m, &w, Some(&bias), Epilogue::Gelu);
            assert!(
                out.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} m={m} k={k} n={n}",
                isa.name()
            );
        }
    }
}

/// Norm-wise relative error max|a - b| / max|b|: sums of products that cancel to near zero have
/// no meaningful element-wise relative error, so f32 results are compared against their scale.
fn max_rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max) / scale.max(f64::MIN_POSITIVE)
}

#[test]
fn fused_attention_matches_the_portable_reference() {
    use vit_workbench::kernels::attention::{AttentionDims, attention};
    let mut worst = (0f64, 0f64);
    // Token counts 1, 7, 197 (ViT) and 198 (DeiT distilled); head dims 64 and one odd.
    for &(batch, tokens, heads, head_dim) in
        &[(1usize, 1usize, 3usize, 64usize), (1, 7, 12, 64), (1, 197, 3, 64), (2, 197, 12, 64), (1, 198, 5, 24)]
    {
        let dims = AttentionDims { batch, tokens, heads, head_dim };
        let qkv = pseudo_random(dims.qkv_len(), (tokens * 13 + heads) as u64, 2.0);
        let scale = (head_dim as f32).powf(-0.5);
        let (mut ref_out, mut ref_probs) = (vec![0f32; dims.out_len()], vec![0f32; dims.probs_len()]);
        attention(true, &qkv, dims, scale, &mut ref_out, Some(&mut ref_probs));
        let (mut out, mut probs) = (vec![f32::NAN; dims.out_len()], vec![f32::NAN; dims.probs_len()]);
        attention(false, &qkv, dims, scale, &mut out, Some(&mut probs));
        let (eo, ep) = (max_rel_err(&out, &ref_out), max_rel_err(&probs, &ref_probs));
        assert!(eo <= 1e-5 && ep <= 1e-5, "{dims:?}: output rel err {eo:.2e}, probs {ep:.2e}");
        // Without probabilities the output is the same.
        let mut out2 = vec![f32::NAN; dims.out_len()];
        attention(false, &qkv, dims, scale, &mut out2, None);
        assert_eq!(out, out2, "{dims:?}: probabilities requested or not must not change the output");
        // Every probability row sums to 1.
        for row in probs.chunks(tokens) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        worst = (worst.0.max(eo), worst.1.max(ep));
    }
    println!(
        "attention gemm+SIMD softmax vs portable: output {:.2e}, probabilities {:.2e} (relative)",
        worst.0, worst.1
    );
}

/// The f32 kernels this CPU has (the AVX2 one too where AVX-512 is present: it is what AVX2
/// CPUs run), and a line saying which were tested.
fn f32_levels() -> Vec<vit_workbench::kernels::SimdLevel> {
    use vit_workbench::kernels::{SimdLevel, gemm_f32};
    let levels: Vec<SimdLevel> =
        [SimdLevel::Avx2Fma, SimdLevel::Avx512].into_iter().filter(|&l| gemm_f32::has_kernel(l)).collect();
    println!("f32 kernel paths tested: {:?}", levels);
    levels
}

#[test]
fn f32_kernel_paths_match_an_f64_loop_on_odd_shapes() {
    // Every tile shape: rows 1..=15 and 197 (tails of the 14-, 8- and 6-row tiles), columns not
    // a multiple of 16 or 32 (masked/staged stores), k from 1 to past the 1024 switch to 8 rows.
    use vit_workbench::kernels::gemm_f32::{self, PackedB};
    let mut worst = 0f64;
    for level in f32_levels() {
        for &m in &[1usize, 2, 5, 6, 7, 8, 9, 13, 14, 15, 29, 197] {
            for &(k, n) in
                &[(1usize, 1usize), (3, 17), (64, 16), (64, 33), (100, 37), (192, 200), (1100, 48), (768, 64)]
            {
                let x = pseudo_random(m * k, (m * 31 + k) as u64, 2.0);
                let w = pseudo_random(n * k, (n * 7 + k) as u64, 0.1);
                let b = pseudo_random(n, n as u64, 0.5);
                let packed = PackedB::from_weights(&w, n, k);
                for (bias, gelu) in [(None, false), (Some(&b[..]), false), (Some(&b[..]), true)] {
                    let y = gemm_f32::linear(level, &x, m, &packed, bias, gelu);
                    let reference: Vec<f32> = (0..m * n)
                        .map(|idx| {
                            let (i, j) = (idx / n, idx % n);
                            let dot: f64 = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum();
                            let v = (dot + bias.map_or(0.0, |b| b[j] as f64)) as f32;
                            if gelu { vit_workbench::kernels::gelu_erf(v) } else { v }
                        })
                        .collect();
                    let err = max_rel_err(&y, &reference);
                    assert!(
                        err <= 1e-5,
                        "{level:?} m={m} k={k} n={n} bias={} gelu={gelu}: rel err {err:.2e}",
                        bias.is_some()
                    );
                    worst = worst.max(err);
                }
            }
        }
    }
    println!("f32 kernels vs f64 loops: {worst:.2e} relative");
}

#[test]
fn f32_tiles_read_strided_operands_and_write_padding_columns_as_zero() {
    // Attention's use: A read in place with a row stride, B packed from rows of its transpose
    // (scaled) or from rows, C with its own stride; columns past n up to the next 16 are 0.
    use vit_workbench::kernels::gemm_f32::{self, PackedB};
    for level in f32_levels() {
        for &(rows, n, k) in &[(197usize, 197usize, 64usize), (5, 7, 24), (30, 33, 197)] {
            let (lda, ldc) = (k + 9, n.next_multiple_of(16) + 3);
            let a = pseudo_random(rows * lda, 5, 1.0);
            let src = pseudo_random(n * (k + 4), 6, 1.0); // B's transpose: n rows of k, stride k + 4
            let mut keys = PackedB::default();
            keys.pack_transposed(&pseudo_random(500, 1, 1.0), 3, 50, 7, 1.0); // a larger use first: reuse must reset
            keys.pack_transposed(&src, k + 4, n, k, 0.5);
            let mut c = vec![f32::NAN; rows * ldc];
            let cols = 0..n.next_multiple_of(16);
            // SAFETY: a holds rows x lda, c holds rows x ldc >= cols.end.
            unsafe { gemm_f32::tiles(level, rows, cols.clone(), a.as_ptr(), lda, &keys, c.as_mut_ptr(), ldc, None) };
            for i in 0..rows {
                for j in cols.clone() {
                    let want: f64 = if j < n {
                        (0..k).map(|t| a[i * lda + t] as f64 * 0.5 * src[j * (k + 4) + t] as f64).sum()
                    } else {
                        0.0
                    };
                    let got = c[i * ldc + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt(),
                        "{level:?} {rows}x{n}x{k} ({i},{j}): {got} vs {want}"
                    );
                }
                assert!(
                    c[i * ldc + cols.end..(i + 1) * ldc].iter().all(|v| v.is_nan()),
                    "{level:?}: wrote past the columns"
                );
            }
            // B given row by row: C = A · src_as_[k, n] with rows of stride n + 2.
            let rows_src = pseudo_random(k * (n + 2), 8, 1.0);
            let mut values = PackedB::default();
            values.pack_rows(&rows_src, n + 2, n, k);
            let mut c2 = vec![0f32; rows * ldc];
            // SAFETY: as above.
            unsafe { gemm_f32::tiles(level, rows, 0..n, a.as_ptr(), lda, &values, c2.as_mut_ptr(), ldc, None) };
            for i in 0..rows {
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| a[i * lda + t] as f64 * rows_src[t * (n + 2) + j] as f64).sum();
                    assert!((c2[i * ldc + j] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt());
                }
            }
        }
    }
}

#[test]
fn f32_linear_matches_a_portable_f64_loop() {
    // The fp32 linear layer as the model builds it (our packed kernel where the CPU has AVX2+FMA
    // or AVX-512, the `gemm` crate elsewhere), checked against plain loops on odd shapes.
    use candle_core::{Device, Module, Tensor};
    use vit_workbench::model::linear::Linear;
    let mut worst = 0f64;
    for &m in &[1usize, 7, 197] {
        for &k in &[192usize, 384, 768, 3072, 100] {
            for &n in &[37usize, 192, 1000] {
                let x = pseudo_random(m * k, (m + k) as u64, 2.0);
                let w = pseudo_random(n * k, (n * 3 + k) as u64, 0.1);
                let b = pseudo_random(n, n as u64, 0.5);
                let layer = Linear::f32(
                    Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap(),
                    Some(Tensor::from_slice(&b, n, &Device::Cpu).unwrap()),
                )
                .unwrap();
                let y = layer.forward(&Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap()).unwrap();
                let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
                let reference: Vec<f32> = (0..m * n)
                    .map(|idx| {
                        let (i, j) = (idx / n, idx % n);
                        let dot: f64 = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum();
                        (dot + b[j] as f64) as f32
                    })
                    .collect();
                let err = max_rel_err(&y, &reference);
                assert!(err <= 1e-5, "m={m} k={k} n={n}: relative error {err:.2e}");
                worst = worst.max(err);
            }
        }
    }
    println!("f32 linear (the model's layer) vs f64 loops: {worst:.2e} relative");
}

#[test]
fn layer_norm_fused_into_the_int8_layer_equals_the_two_ops() {
    use vit_workbench::kernels::gemm_i8::{layer_norm_linear, linear};
    use vit_workbench::kernels::ops::add_layer_norm;
    // 197 x 192 is quantized serially, 197 x 768 by parallel chunks: both fill paths.
    for &(m, k, n) in &[(197usize, 192usize, 576usize), (197, 768, 3072), (7, 100, 37), (1, 45, 20)] {
        let x = pseudo_random(m * k, 5 + k as u64, 3.0);
        let y = pseudo_random(m * k, 9 + k as u64, 1.0);
        let gamma = pseudo_random(k, 13, 1.0);
        let beta = pseudo_random(k, 17, 0.5);
        let w = PackedWeights::quantize(&pseudo_random(n * k, 3 + n as u64, 0.1), n, k);
        let bias = pseudo_random(n, 11, 0.5);
        for &isa in &available_isas() {
            for y in [Some(&y[..]), None] {
                let (mut sum, mut norm) = (vec![0f32; m * k], vec![0f32; m * k]);
                add_layer_norm(isa == Isa::Portable, &x, y, &gamma, &beta, 1e-6, &mut sum, &mut norm);
                let expected = linear(isa, &norm, m, &w, Some(&bias), Epilogue::Gelu);
                let buf = layer_norm_linear(isa, &x, y, &gamma, &beta, 1e-6, &w, Some(&bias), Epilogue::Gelu);
                assert_eq!(buf.len(), m * k + m * n, "the sum, then the output");
                let (fused_sum, fused) = buf.split_at(m * k);
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(same(fused_sum, &sum), "{} sum m={m} k={k}", isa.name());
                assert!(same(fused, &expected), "{} output m={m} k={k} n={n} y={}", isa.name(), y.is_some());
            }
        }
    }
}

#[test]
fn int8_gemm_paths_take_code_minus_128_exactly() {
    use std::sync::Arc;
    use vit_workbench::kernels::gemm_i8::Bytes;
    // Schemes other than the default produce -128 (torch's per-tensor weights round
    // -max|w| / (max|w| / 127.5) = -127.5 to -128; asymmetric 8-bit activations are stored as
    // q - 128). Runs of -128 x -128 are the products that overflow an i16 pair sum
    // (`vpmaddubsw`) and that `vpsignb` cannot negate, so every path must sum them exactly.
    let isas = available_isas();
    for &(m, k, n) in &[(1usize, 192usize, 37usize), (7, 100, 64), (197, 768, 192), (5, 3072, 20), (3, 45, 17)] {
        let mut state = (m * 131 + k * 7 + n) as u32;
        let mut code = |extreme_every: u32| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            if (state >> 8).is_multiple_of(extreme_every) {
                if state & 1 == 0 { -128 } else { 127 }
            } else {
                (state >> 24) as i8
            }
        };
        let mut a_codes: Vec<i8> = (0..m * k).map(|_| code(3)).collect();
        let mut w_codes: Vec<i8> = (0..n * k).map(|_| code(3)).collect();
        // The worst case: a whole row and a whole output channel of -128.
        a_codes[..k].fill(-128);
        w_codes[..k].fill(-128);
        let a =
            QuantizedRows { m, k, data: a_codes, scales: pseudo_random(m, 5, 1.0).iter().map(|v| v.abs()).collect() };
        let scales = pseudo_random(n, 6, 0.01).iter().map(|v| v.abs()).collect();
        let w = PackedWeights::from_parts(n, k, Bytes::Owned(Arc::new(w_codes)), scales);
        let bias = pseudo_random(n, 7, 1.0);
        let reference = naive(&a, &w, Some(&bias), Epilogue::None);
        // Row 0 x channel 0 is exactly k · 16384 times the scales.
        assert_eq!(reference[0], (k as i32 * 16384) as f32 * (a.scales[0] * w.scales[0]) + bias[0]);
        for &isa in &isas {
            let mut out = vec![f32::NAN; m * n];
            gemm_i8::gemm(isa, &a, &w, Some(&bias), Epilogue::None, &mut out);
            let bad = out.iter().zip(&reference).position(|(x, y)| x.to_bits() != y.to_bits());
            assert!(bad.is_none(), "{} with -128 codes m={m} k={k} n={n}: index {bad:?}", isa.name());
        }
    }
}
