//! CPU benchmark of the batched quantized matmul (`openledger_kernels::quant`): achieved
//! weight bandwidth and integer-dot throughput per shape and batch size.
//! Usage: quant-bench [threads]   (prints one line per configuration; the kernel is chosen
//! from the CPU's features: `OPENLEDGER_NO_AVX512=1` or `OPENLEDGER_NO_SIMD=1` for others)

use std::time::Instant;

use openledger_kernels::quant::{quantized_kernel, QActivations, QFormat, QMatrix};

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    let shapes = [
        ("q_proj 576x576", QFormat::Q4_1, 576, 576),
        ("gate 1536x576", QFormat::Q4_1, 1536, 576),
        ("down 576x1536", QFormat::Q4_1, 576, 1536),
        ("lm_head 49152x576", QFormat::Q8_0, 49152, 576),
    ];
    println!("threads {threads}, kernel {}", quantized_kernel());
    for (name, format, rows, cols) in shapes {
        let w: Vec<f32> =
            (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let m = QMatrix::quantize(format, rows, cols, &w).expect("quantize");
        for tokens in [1usize, 4, 8, 32, 128, 512, 2048] {
            let x: Vec<f32> =
                (0..tokens * cols).map(|i| ((i * 31) % 200) as f32 / 100.0 - 1.0).collect();
            let xq = QActivations::quantize(&x, tokens, cols).expect("activations");
            let mut y = vec![0f32; tokens * rows];
            let reps = (2_000_000_000 / (rows * cols * tokens)).clamp(3, 2000);
            pool.install(|| {
                m.matmul(&xq, &mut y).expect("matmul");
                let t = Instant::now();
                for _ in 0..reps {
                    m.matmul(&xq, &mut y).expect("matmul");
                }
                let secs = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "{name:20} T={tokens:4}  {:8.1} us  {:6.2} GB/s weights  {:7.2} GMAC/s",
                    secs * 1e6,
                    m.bytes() as f64 / secs / 1e9,
                    (rows * cols * tokens) as f64 / secs / 1e9
                );
            });
        }
    }
}
