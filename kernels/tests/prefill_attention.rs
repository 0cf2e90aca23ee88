//! Causal prefill attention over the paged KV cache on every device this build supports (the
//! CPU always; the first CUDA device with the `cuda` feature) against the f64 reference:
//! several chunks of different lengths in one call (lengths off the kernel's 64-row and
//! 64-key tiles), chunks that continue a cached prefix, shuffled block tables, GQA groups of
//! 1 to 8 with the head sizes of the models we ship (SmolLM2: 64, 9 / 3 heads; Llama-3-8B:
//! 128, 32 / 8), cache slots that no context covers poisoned with NaN (a read of one shows).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{devices, round_to, tensor, values};
use half::{bf16, f16};
use openledger_kernels::attention::reference;
use openledger_kernels::reference::relative_error;
use openledger_kernels::{
    paged_prefill_attention, Element, KernelError, PrefillBlocks, PrefillChunk,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// Random cases per check; `ATTN_CASES` lowers it for runs under compute-sanitizer.
fn cases() -> usize {
    common::env_count("ATTN_CASES", 10)
}

/// A fresh seed per run, printed so that a failure can be replayed with `ATTN_SEED=<seed>`.
fn rng(test: &str) -> StdRng {
    common::seeded_rng("ATTN_SEED", test)
}

/// One call's chunks: (len, start) each, over one pool.
struct Case {
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    num_blocks: usize,
    /// (q_row, len, start, table).
    chunks: Vec<(usize, usize, usize, Vec<u32>)>,
    q_rows: usize,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    scale: f64,
}

impl Case {
    /// `shape`: (num_heads, num_kv_heads, head_dim); `spans`: (len, start) per chunk. Query
    /// rows are laid out with a gap row before each chunk (q rows no chunk names).
    fn new<T: Element>(
        rng: &mut StdRng,
        shape: (usize, usize, usize),
        block_size: usize,
        spans: &[(usize, usize)],
    ) -> Case {
        let (num_heads, num_kv_heads, head_dim) = shape;
        let needed: usize = spans.iter().map(|&(l, s)| (l + s).div_ceil(block_size)).sum();
        let num_blocks = needed + rng.random_range(0..4);
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        ids.shuffle(rng);
        let mut next = ids.into_iter();
        let row = num_kv_heads * head_dim;
        let mut k = vec![f64::NAN; num_blocks * block_size * row];
        let mut v = vec![f64::NAN; num_blocks * block_size * row];
        let mut chunks = Vec::new();
        let mut q_row = 0;
        for &(len, start) in spans {
            let context = len + start;
            let blocks = context.div_ceil(block_size);
            let mut table: Vec<u32> = (0..blocks).map(|_| next.next().unwrap_or(0)).collect();
            for (b, &id) in table.iter().enumerate() {
                let used = (context - b * block_size).min(block_size);
                let first = id as usize * block_size * row;
                for e in first..first + used * row {
                    k[e] = round_to::<T>(rng.random_range(-1.0..1.0));
                    v[e] = round_to::<T>(rng.random_range(-1.0..1.0));
                }
            }
            // Entries past the last block are never read.
            table.extend((0..rng.random_range(0..3)).map(|_| u32::MAX));
            q_row += 1;
            chunks.push((q_row, len, start, table));
            q_row += len;
        }
        let q_rows = q_row + 1;
        // Large enough that the softmax is far from uniform.
        let q = (0..q_rows * num_heads * head_dim)
            .map(|_| round_to::<T>(rng.random_range(-3.0..3.0)))
            .collect();
        Case {
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            num_blocks,
            chunks,
            q_rows,
            q,
            k,
            v,
            scale: 1.0 / (head_dim as f64).sqrt(),
        }
    }

    /// Random shape, block size and 1-4 chunks, some continuing a cached prefix.
    fn random<T: Element>(rng: &mut StdRng, max_len: usize) -> Case {
        let shapes = [(9, 3, 64), (32, 8, 128), (4, 4, 64), (8, 1, 128), (6, 2, 128), (16, 2, 64)];
        let shape = shapes[rng.random_range(0..shapes.len())];
        let block_size = [8, 16, 16, 32][rng.random_range(0..4)];
        let spans: Vec<(usize, usize)> = (0..rng.random_range(1..=4))
            .map(|_| {
                let len = match rng.random_range(0..4) {
                    0 => rng.random_range(1..=3),
                    1 => 64 * rng.random_range(1..=3) + rng.random_range(0..3) - 1,
                    _ => rng.random_range(2..=max_len),
                };
                let start = if rng.random_bool(0.4) { rng.random_range(1..=max_len) } else { 0 };
                (len, start)
            })
            .collect();
        Case::new::<T>(rng, shape, block_size, &spans)
    }

    fn describe(&self) -> String {
        let spans: Vec<(usize, usize)> = self.chunks.iter().map(|c| (c.1, c.2)).collect();
        format!(
            "heads {}/{} head_dim {} block_size {} (len, start) {spans:?}",
            self.num_heads, self.num_kv_heads, self.head_dim, self.block_size
        )
    }

    fn prefill_chunks(&self) -> Vec<PrefillChunk<'_>> {
        self.chunks
            .iter()
            .map(|(q_row, len, start, table)| PrefillChunk {
                q_row: *q_row,
                len: *len,
                start: *start,
                table,
            })
            .collect()
    }

    fn reference(&self) -> Vec<f64> {
        let chunks: Vec<(usize, usize, usize, &[u32])> =
            self.chunks.iter().map(|(r, l, s, t)| (*r, *l, *s, t.as_slice())).collect();
        reference::paged_prefill_attention(
            &self.q,
            &self.k,
            &self.v,
            &chunks,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.block_size,
            self.scale,
        )
    }

    fn tensors<T: Element>(&self, dev: &Device) -> (Tensor, Tensor, Tensor) {
        let cache = [self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim];
        (
            tensor::<T>(&self.q, &[self.q_rows, self.num_heads, self.head_dim], dev),
            tensor::<T>(&self.k, &cache, dev),
            tensor::<T>(&self.v, &cache, dev),
        )
    }

    fn run<T: Element>(&self, dev: &Device) -> Vec<f64> {
        let (q, k, v) = self.tensors::<T>(dev);
        let blocks = PrefillBlocks::new(&self.prefill_chunks(), self.block_size).unwrap();
        let out = paged_prefill_attention(&q, &k, &v, &blocks, self.scale as f32).unwrap();
        let rows: usize = self.chunks.iter().map(|c| c.1).sum();
        assert_eq!(out.dims(), &[rows, self.num_heads, self.head_dim]);
        values(&out)
    }
}

/// f32 on the CPU path is exact to rounding; bf16 / f16 round the inputs (already rounded
/// in the reference's operands), the probabilities (as the flash kernels do) and the output.
fn tolerance<T: Element>() -> f64 {
    match T::DTYPE {
        DType::F32 => 1e-5,
        DType::F16 => 5e-3,
        _ => 1e-2,
    }
}

fn check_case<T: Element>(case: &Case, dev: &Device) -> f64 {
    let got = case.run::<T>(dev);
    assert!(got.iter().all(|x| x.is_finite()), "non-finite output on {dev:?}: {}", case.describe());
    let err = relative_error(&got, &case.reference());
    assert!(err < tolerance::<T>(), "relative error {err:e} on {dev:?} for {}", case.describe());
    err
}

fn check<T: Element>(dev: &Device, max_len: usize) {
    let mut rng = rng(&format!("prefill attention {:?} on {dev:?}", T::DTYPE));
    let mut worst = 0f64;
    for _ in 0..cases() {
        let case = Case::random::<T>(&mut rng, max_len);
        worst = worst.max(check_case::<T>(&case, dev));
    }
    eprintln!("prefill attention {:?} on {dev:?}: worst relative error {worst:.3e}", T::DTYPE);
}

#[test]
fn f32_matches_reference() {
    for dev in devices() {
        check::<f32>(&dev, 150);
    }
}

#[test]
fn bf16_matches_reference() {
    for dev in devices() {
        check::<bf16>(&dev, 300);
    }
}

#[test]
fn f16_matches_reference() {
    for dev in devices() {
        check::<f16>(&dev, 300);
    }
}

/// The shapes of the models we ship and of the 8B benchmark, at the engine's block size:
/// a 512-token prompt, a 77-token chunk after 200 cached positions, and a 1-token chunk,
/// in one call.
#[test]
fn model_shapes_match_reference() {
    let mut rng = rng("prefill attention, model shapes");
    for dev in devices() {
        for shape in [(9, 3, 64), (32, 8, 128)] {
            let case = Case::new::<bf16>(&mut rng, shape, 16, &[(512, 0), (77, 200), (1, 33)]);
            let err = check_case::<bf16>(&case, &dev);
            eprintln!("{dev:?} {}: relative error {err:.3e}", case.describe());
        }
    }
}

/// A chunk's rows are the same bits alone and beside other chunks.
#[test]
fn batch_invariant() {
    let mut rng = rng("prefill attention, batch invariance");
    for dev in devices() {
        let mut case = Case::new::<bf16>(&mut rng, (32, 8, 128), 16, &[(70, 0), (130, 45), (5, 3)]);
        let all = case.run::<bf16>(&dev);
        let per_row = case.num_heads * case.head_dim;
        // The middle chunk alone: its rows of the batched output, bit for bit.
        let (q_row, len, start, table) = case.chunks[1].clone();
        let offset = case.chunks[0].1 * per_row;
        case.chunks = vec![(q_row, len, start, table)];
        let alone = case.run::<bf16>(&dev);
        assert_eq!(alone, all[offset..offset + len * per_row], "chunk differs alone on {dev:?}");
    }
}

#[test]
fn bad_input_is_an_error() {
    let mut rng = rng("prefill attention, bad input");
    for dev in devices() {
        let case = Case::new::<bf16>(&mut rng, (8, 2, 64), 16, &[(20, 5)]);
        let (q, k, v) = case.tensors::<bf16>(&dev);
        let chunks = case.prefill_chunks();
        let blocks = PrefillBlocks::new(&chunks, 16).unwrap();
        let table = &case.chunks[0].3;

        // A table too short for the chunk's last position.
        let short = [PrefillChunk { table: &table[..1], ..chunks[0] }];
        assert!(matches!(
            PrefillBlocks::new(&short, 16),
            Err(KernelError::ContextOverCapacity { .. })
        ));
        // An empty chunk, a block size that is not a power of two.
        let empty = [PrefillChunk { len: 0, ..chunks[0] }];
        assert!(matches!(PrefillBlocks::new(&empty, 16), Err(KernelError::Shape { .. })));
        assert!(matches!(PrefillBlocks::new(&chunks, 12), Err(KernelError::BlockSize(12))));
        // A block past the cache.
        let mut far = table.clone();
        far[0] = case.num_blocks as u32 + 3;
        let far_chunks = [PrefillChunk { table: &far, ..chunks[0] }];
        let far_blocks = PrefillBlocks::new(&far_chunks, 16).unwrap();
        assert!(matches!(
            paged_prefill_attention(&q, &k, &v, &far_blocks, 0.1),
            Err(KernelError::BlockOutOfRange { .. })
        ));
        // q with fewer rows than the chunk reaches.
        let few = q.narrow(0, 0, 10).unwrap();
        assert!(matches!(
            paged_prefill_attention(&few, &k, &v, &blocks, 0.1),
            Err(KernelError::Shape { .. })
        ));
        // Mixed dtypes, a head size without a kernel, a cache of another block size.
        let k32 = k.to_dtype(DType::F32).unwrap();
        assert!(matches!(
            paged_prefill_attention(&q, &k32, &v, &blocks, 0.1),
            Err(KernelError::DType { .. })
        ));
        let q96 = Tensor::zeros((case.q_rows, 8, 96), DType::BF16, &dev).unwrap();
        let k96 = Tensor::zeros((case.num_blocks, 16, 2, 96), DType::BF16, &dev).unwrap();
        assert!(matches!(
            paged_prefill_attention(&q96, &k96, &k96, &blocks, 0.1),
            Err(KernelError::UnsupportedHeadDim(96))
        ));
        let k8 = k.reshape((case.num_blocks * 2, 8, 2, 64)).unwrap();
        let v8 = v.reshape((case.num_blocks * 2, 8, 2, 64)).unwrap();
        assert!(matches!(
            paged_prefill_attention(&q, &k8, &v8, &blocks, 0.1),
            Err(KernelError::BlockSizeMismatch { .. })
        ));
        // Query heads that do not split over the key/value heads.
        let q7 = Tensor::zeros((case.q_rows, 7, 64), DType::BF16, &dev).unwrap();
        assert!(matches!(
            paged_prefill_attention(&q7, &k, &v, &blocks, 0.1),
            Err(KernelError::HeadGroups { .. })
        ));
    }
}
