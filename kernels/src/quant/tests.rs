use super::*;
use rand::{Rng, SeedableRng};

fn random(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// f64 product of the dequantized weights with the (unquantized) activations.
fn reference(w: &QMatrix, x: &[f32], rows: usize) -> Vec<f64> {
    let wf = w.dequantize();
    let mut y = vec![0f64; rows * w.rows()];
    for t in 0..rows {
        for r in 0..w.rows() {
            y[t * w.rows() + r] = (0..w.cols())
                .map(|k| wf[r * w.cols() + k] as f64 * x[t * w.cols() + k] as f64)
                .sum();
        }
    }
    y
}

#[test]
fn matches_reference_for_both_formats_and_ragged_shapes() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for format in [QFormat::Q4_1, QFormat::Q8_0] {
        for &(rows, cols, tokens) in
            &[(1, 32, 1), (3, 64, 5), (17, 96, 9), (64, 576, 4), (130, 1536, 7)]
        {
            let w = QMatrix::quantize(format, rows, cols, &random(rows * cols, &mut rng)).unwrap();
            let x = random(tokens * cols, &mut rng);
            let xq = QActivations::quantize(&x, tokens, cols).unwrap();
            let want = reference(&w, &x, tokens);
            for kernel in Kernel::available() {
                let mut y = vec![f32::NAN; tokens * rows];
                w.matmul_on(kernel, &xq, &mut y).unwrap();
                // Activations in 16 bits: the error is the weights' own rounding, tiny.
                let tol = 0.02 * (cols as f64).sqrt();
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() <= tol,
                        "{kernel:?} {format:?} {rows}x{cols} t={tokens}: y[{i}] = {a}, \
                         reference {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn dequantize_round_trips_within_a_step() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let w = random(4 * 64, &mut rng);
    for (format, step) in [(QFormat::Q4_1, 2.0 / 15.0), (QFormat::Q8_0, 1.0 / 127.0)] {
        let q = QMatrix::quantize(format, 4, 64, &w).unwrap();
        for (a, b) in q.dequantize().iter().zip(&w) {
            assert!((a - b).abs() <= step * 0.51 + 1e-3, "{format:?}: {a} vs {b}");
        }
    }
}

/// With every kernel, a row's result is bitwise the same alone and inside any batch
/// (batches of 19 tokens exercise the token groups of 4 and 8 and the tails).
#[test]
fn rows_do_not_depend_on_the_batch() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (rows, cols, tokens) = (37, 192, 19);
    for kernel in Kernel::available() {
        for format in [QFormat::Q4_1, QFormat::Q8_0] {
            let w = QMatrix::quantize(format, rows, cols, &random(rows * cols, &mut rng)).unwrap();
            let x = random(tokens * cols, &mut rng);
            let all = QActivations::quantize(&x, tokens, cols).unwrap();
            let mut y_all = vec![0f32; tokens * rows];
            w.matmul_on(kernel, &all, &mut y_all).unwrap();
            for t in 0..tokens {
                let one = QActivations::quantize(&x[t * cols..(t + 1) * cols], 1, cols).unwrap();
                let mut y = vec![0f32; rows];
                w.matmul_on(kernel, &one, &mut y).unwrap();
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&y),
                    bits(&y_all[t * rows..(t + 1) * rows]),
                    "{kernel:?} {format:?} token {t}"
                );
            }
        }
    }
}

/// A group of matrices over the same activations gives each matrix exactly the bits of
/// its own matmul; a wrong output length is refused before anything runs.
#[test]
fn a_group_matches_its_matrices_one_by_one() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let (cols, tokens) = (192, 5);
    let x = QActivations::quantize(&random(tokens * cols, &mut rng), tokens, cols).unwrap();
    for kernel in Kernel::available() {
        for format in [QFormat::Q4_1, QFormat::Q8_0] {
            let ws: Vec<QMatrix> = [37, 12, 130]
                .iter()
                .map(|&r| QMatrix::quantize(format, r, cols, &random(r * cols, &mut rng)).unwrap())
                .collect();
            let mut ys: Vec<Vec<f32>> =
                ws.iter().map(|w| vec![f32::NAN; tokens * w.rows()]).collect();
            {
                let mut parts: Vec<(&QMatrix, &mut [f32])> =
                    ws.iter().zip(ys.iter_mut()).map(|(w, y)| (w, y.as_mut_slice())).collect();
                matmul_group_on(kernel, &mut parts, &x).unwrap();
            }
            for (w, y) in ws.iter().zip(&ys) {
                let mut one = vec![0f32; tokens * w.rows()];
                w.matmul_on(kernel, &x, &mut one).unwrap();
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(y), bits(&one), "{kernel:?} {format:?} {} rows", w.rows());
            }
            let mut short = vec![0f32; 3];
            let mut fine = vec![0f32; tokens * ws[0].rows()];
            let err = matmul_group(&mut [(&ws[0], &mut fine), (&ws[1], &mut short)], &x)
                .unwrap_err()
                .to_string();
            assert!(err.contains("output holds 3 values"), "{err}");
        }
    }
}

#[test]
fn simd_and_portable_paths_agree() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (rows, cols, tokens) = (33, 320, 21);
    for format in [QFormat::Q4_1, QFormat::Q8_0] {
        let w = QMatrix::quantize(format, rows, cols, &random(rows * cols, &mut rng)).unwrap();
        let x = QActivations::quantize(&random(tokens * cols, &mut rng), tokens, cols).unwrap();
        let mut a = vec![0f32; tokens * rows];
        w.matmul_on(Kernel::Portable, &x, &mut a).unwrap();
        for kernel in Kernel::available() {
            let mut b = vec![f32::NAN; tokens * rows];
            w.matmul_on(kernel, &x, &mut b).unwrap();
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 1e-4 * (1.0 + p.abs()),
                    "{kernel:?} {format:?}: {p} vs {q}"
                );
            }
        }
        eprintln!("kernels compared with the portable one: {:?}", Kernel::available());
        #[cfg(target_arch = "x86_64")]
        if Kernel::available().contains(&Kernel::Amx) {
            let (mut p, mut q) = (vec![0f32; tokens * rows], vec![0f32; tokens * rows]);
            w.matmul_on(Kernel::Avx512, &x, &mut p).unwrap();
            w.matmul_on(Kernel::Amx, &x, &mut q).unwrap();
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p), bits(&q), "{format:?}: AMX and AVX-512 give the same bits");
        }
    }
}

#[test]
fn bad_shapes_are_named() {
    assert!(QMatrix::new(QFormat::Q4_1, 2, 33, vec![0; 40]).is_err());
    let e = QMatrix::new(QFormat::Q8_0, 2, 32, vec![0; 10]).unwrap_err().to_string();
    assert!(e.contains("68 bytes"), "{e}");
    let w = QMatrix::quantize(QFormat::Q8_0, 2, 32, &[0.5; 64]).unwrap();
    let x = QActivations::quantize(&[1.0; 64], 1, 64).unwrap();
    assert!(w.matmul(&x, &mut [0.0; 2]).is_err());
}
