//! Paged decode attention on every device this build supports (the CPU always; the first
//! CUDA device with the `cuda` feature) against the f64 reference: shuffled, non-contiguous
//! block tables, ragged contexts (1, exact block multiples, several partitions long), GQA
//! groups of 1 to 16, outputs poisoned before each call and cache slots that no context
//! covers poisoned with NaN (a read of one shows).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{devices, round_to, tensor, values};
use half::{bf16, f16};
use openledger_kernels::attention::reference;
use openledger_kernels::reference::relative_error;
use openledger_kernels::{
    paged_decode_attention, paged_decode_attention_into, paged_decode_attention_with, DecodeBlocks,
    Element, KernelError,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// Random cases per check; `ATTN_CASES` lowers it for runs under compute-sanitizer.
fn cases() -> usize {
    common::env_count("ATTN_CASES", 12)
}

/// A fresh seed per run, printed so that a failure can be replayed with `ATTN_SEED=<seed>`.
fn rng(test: &str) -> StdRng {
    common::seeded_rng("ATTN_SEED", test)
}

/// One random batch: caches with every slot a context covers drawn at random and every
/// other slot NaN, tables over shuffled blocks, values already rounded to the element type.
struct Case {
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    num_blocks: usize,
    table_width: usize,
    tables: Vec<u32>,
    lens: Vec<u32>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    scale: f64,
}

impl Case {
    fn random<T: Element>(rng: &mut StdRng, max_len: usize) -> Case {
        let head_dim = [64, 128][rng.random_range(0..2)];
        let num_kv_heads = rng.random_range(1..=3);
        let group = [1, 3, 4, 8, 16][rng.random_range(0..5)];
        let num_heads = group * num_kv_heads;
        let block_size = [1, 8, 16, 16, 32][rng.random_range(0..5)];
        let num_seqs = rng.random_range(1..=5);
        let lens: Vec<u32> = (0..num_seqs)
            .map(|_| match rng.random_range(0..5) {
                0 => 1,
                // An exact multiple of the block size.
                1 => (block_size * rng.random_range(1..=max_len / block_size / 2 + 1)) as u32,
                // Around a partition boundary of the CUDA kernel.
                2 => (256 + rng.random_range(0..3) - 1) as u32,
                _ => rng.random_range(1..=max_len) as u32,
            })
            .map(|l| l.min(max_len as u32))
            .collect();
        let needed: usize = lens.iter().map(|&l| (l as usize).div_ceil(block_size)).sum();
        let num_blocks = needed + rng.random_range(0..4);
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        ids.shuffle(rng);
        let table_width =
            lens.iter().map(|&l| (l as usize).div_ceil(block_size)).max().unwrap_or(0)
                + rng.random_range(0..3);
        // Entries past a sequence's last block must never be read.
        let mut tables = vec![u32::MAX; num_seqs * table_width];
        let row = num_kv_heads * head_dim;
        let mut k = vec![f64::NAN; num_blocks * block_size * row];
        let mut v = vec![f64::NAN; num_blocks * block_size * row];
        let mut next = ids.into_iter();
        for (s, &len) in lens.iter().enumerate() {
            for b in 0..(len as usize).div_ceil(block_size) {
                let id = next.next().unwrap_or(0);
                tables[s * table_width + b] = id;
                let used = (len as usize - b * block_size).min(block_size);
                let start = id as usize * block_size * row;
                for e in start..start + used * row {
                    k[e] = round_to::<T>(rng.random_range(-1.0..1.0));
                    v[e] = round_to::<T>(rng.random_range(-1.0..1.0));
                }
            }
        }
        // Large enough that the softmax is far from uniform.
        let q = (0..num_seqs * num_heads * head_dim)
            .map(|_| round_to::<T>(rng.random_range(-3.0..3.0)))
            .collect();
        Case {
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            num_blocks,
            table_width,
            tables,
            lens,
            q,
            k,
            v,
            scale: 1.0 / (head_dim as f64).sqrt(),
        }
    }

    fn num_seqs(&self) -> usize {
        self.lens.len()
    }

    fn max_len(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0) as usize
    }

    fn describe(&self) -> String {
        format!(
            "heads {}/{} head_dim {} block_size {} blocks {} lens {:?}",
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.block_size,
            self.num_blocks,
            self.lens
        )
    }

    fn reference(&self) -> Vec<f64> {
        reference::paged_decode_attention(
            &self.q,
            &self.k,
            &self.v,
            &self.tables,
            &self.lens,
            self.table_width,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.block_size,
            self.scale,
        )
    }

    fn tensors<T: Element>(&self, dev: &Device) -> Operands {
        let cache = [self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim];
        Operands {
            q: tensor::<T>(&self.q, &[self.num_seqs(), self.num_heads, self.head_dim], dev),
            k: tensor::<T>(&self.k, &cache, dev),
            v: tensor::<T>(&self.v, &cache, dev),
            tables: Tensor::from_vec(
                self.tables.clone(),
                (self.num_seqs(), self.table_width),
                &Device::Cpu,
            )
            .unwrap(),
            lens: Tensor::from_vec(self.lens.clone(), self.num_seqs(), &Device::Cpu).unwrap(),
        }
    }
}

struct Operands {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tables: Tensor,
    lens: Tensor,
}

fn tolerance<T: Element>() -> f64 {
    match T::DTYPE {
        DType::F32 => 1e-5,
        DType::F16 => 1e-2,
        _ => 2e-2,
    }
}

fn check<T: Element>(dev: &Device, max_len: usize) {
    let mut rng = rng(&format!("paged attention {:?} on {dev:?}", T::DTYPE));
    for _ in 0..cases() {
        let case = Case::random::<T>(&mut rng, max_len);
        let ops = case.tensors::<T>(dev);
        let blocks =
            DecodeBlocks::new(&ops.tables, &ops.lens, case.block_size, case.max_len()).unwrap();
        // Poisoned: an element the kernel does not write stays NaN and fails the check.
        let out = Tensor::full(f32::NAN, ops.q.dims(), dev).unwrap().to_dtype(T::DTYPE).unwrap();
        paged_decode_attention_into(&out, &ops.q, &ops.k, &ops.v, &blocks, case.scale as f32)
            .unwrap();
        let want = case.reference();
        let got = values(&out);
        assert!(
            got.iter().all(|x| x.is_finite()),
            "non-finite output on {dev:?}: {}",
            case.describe()
        );
        let err = relative_error(&got, &want);
        assert!(
            err < tolerance::<T>(),
            "relative error {err:e} on {dev:?} for {}",
            case.describe()
        );

        // The allocating call, with the tables validated inside, gives the same bits.
        let again = paged_decode_attention(
            &ops.q,
            &ops.k,
            &ops.v,
            &ops.tables,
            &ops.lens,
            case.scale as f32,
            case.max_len(),
        )
        .unwrap();
        assert_eq!(values(&again), got, "allocating call differs on {dev:?}: {}", case.describe());
    }
}

#[test]
fn f32_matches_reference() {
    for dev in devices() {
        check::<f32>(&dev, 1100);
    }
}

#[test]
fn bf16_matches_reference() {
    for dev in devices() {
        check::<bf16>(&dev, 1100);
    }
}

#[test]
fn f16_matches_reference() {
    for dev in devices() {
        check::<f16>(&dev, 600);
    }
}

/// A sequence gets the same bits alone as in a batch (ragged neighbours, long and short).
#[test]
fn batch_invariant() {
    let mut rng = rng("batch invariance");
    for dev in devices() {
        for _ in 0..cases().div_ceil(3) {
            let case = Case::random::<bf16>(&mut rng, 1100);
            let ops = case.tensors::<bf16>(&dev);
            let scale = case.scale as f32;
            let all = paged_decode_attention(
                &ops.q,
                &ops.k,
                &ops.v,
                &ops.tables,
                &ops.lens,
                scale,
                case.max_len(),
            )
            .unwrap();
            for s in 0..case.num_seqs() {
                let q = ops.q.narrow(0, s, 1).unwrap().contiguous().unwrap();
                let tables = ops.tables.narrow(0, s, 1).unwrap().contiguous().unwrap();
                let lens = ops.lens.narrow(0, s, 1).unwrap().contiguous().unwrap();
                // A different max_context_len changes the scratch layout, not the result.
                let one = paged_decode_attention(
                    &q,
                    &ops.k,
                    &ops.v,
                    &tables,
                    &lens,
                    scale,
                    case.lens[s] as usize + 300,
                )
                .unwrap();
                let alone = values(&one);
                let within = values(&all.narrow(0, s, 1).unwrap());
                assert_eq!(
                    alone,
                    within,
                    "sequence {s} differs alone on {dev:?}: {}",
                    case.describe()
                );
            }
        }
    }
}

/// An empty context (a padding row) gives zeros, next to real sequences.
#[test]
fn empty_context_gives_zeros() {
    for dev in devices() {
        let mut rng = rng("empty context");
        let mut case = Case::random::<f32>(&mut rng, 300);
        case.lens[0] = 0;
        let ops = case.tensors::<f32>(&dev);
        let out = paged_decode_attention(
            &ops.q,
            &ops.k,
            &ops.v,
            &ops.tables,
            &ops.lens,
            case.scale as f32,
            case.max_len(),
        )
        .unwrap();
        let got = values(&out);
        let want = case.reference();
        let row = case.num_heads * case.head_dim;
        assert!(got[..row].iter().all(|&x| x == 0.0), "padding row not zero on {dev:?}");
        assert!(relative_error(&got, &want) < 1e-5, "on {dev:?}: {}", case.describe());
    }
}

/// Bad input is an error naming the problem, never a panic or a read out of bounds.
#[test]
fn bad_input_is_an_error() {
    for dev in devices() {
        let (seqs, heads, kv, hd, bs, blocks) = (2, 8, 2, 64, 16, 6);
        let q = Tensor::zeros((seqs, heads, hd), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((blocks, bs, kv, hd), DType::F32, &dev).unwrap();
        let tables = Tensor::from_vec(vec![0u32, 1, 2, 3, 4, 5], (2, 3), &Device::Cpu).unwrap();
        let lens = Tensor::from_vec(vec![40u32, 17], 2, &Device::Cpu).unwrap();
        let call = |q: &Tensor, k: &Tensor, tables: &Tensor, lens: &Tensor, max: usize| {
            paged_decode_attention(q, k, k, tables, lens, 0.125, max)
        };
        assert!(call(&q, &k, &tables, &lens, 64).is_ok());

        let bad_block = Tensor::from_vec(vec![0u32, 1, 2, 3, 5, 9], (2, 3), &Device::Cpu).unwrap();
        let lens_b = Tensor::from_vec(vec![40u32, 33], 2, &Device::Cpu).unwrap();
        assert!(matches!(
            call(&q, &k, &bad_block, &lens_b, 64),
            Err(KernelError::BlockOutOfRange { seq: 1, index: 2, block: 9, num_blocks: 6 })
        ));
        // The same out-of-range block past the context is never read: fine.
        assert!(call(&q, &k, &bad_block, &lens, 64).is_ok());

        let too_long = Tensor::from_vec(vec![49u32, 1], 2, &Device::Cpu).unwrap();
        assert!(matches!(
            call(&q, &k, &tables, &too_long, 64),
            Err(KernelError::ContextOverCapacity { seq: 0, context_len: 49, capacity: 48, .. })
        ));
        assert!(matches!(
            call(&q, &k, &tables, &lens, 39),
            Err(KernelError::ContextOverMax { seq: 0, context_len: 40, max_context_len: 39 })
        ));

        let q96 = Tensor::zeros((seqs, heads, 96), DType::F32, &dev).unwrap();
        let k96 = Tensor::zeros((blocks, bs, kv, 96), DType::F32, &dev).unwrap();
        assert!(matches!(
            call(&q96, &k96, &tables, &lens, 64),
            Err(KernelError::UnsupportedHeadDim(96))
        ));
        let q_odd = Tensor::zeros((seqs, 7, hd), DType::F32, &dev).unwrap();
        assert!(matches!(
            call(&q_odd, &k, &tables, &lens, 64),
            Err(KernelError::HeadGroups { num_heads: 7, num_kv_heads: 2 })
        ));
        let k_wide = Tensor::zeros((blocks, bs, kv, 128), DType::F32, &dev).unwrap();
        assert!(matches!(call(&q, &k_wide, &tables, &lens, 64), Err(KernelError::Shape { .. })));
        let q_three = Tensor::zeros((3, heads, hd), DType::F32, &dev).unwrap();
        assert!(matches!(call(&q_three, &k, &tables, &lens, 64), Err(KernelError::Shape { .. })));
        let k12 = Tensor::zeros((blocks, 12, kv, hd), DType::F32, &dev).unwrap();
        assert!(matches!(call(&q, &k12, &tables, &lens, 64), Err(KernelError::BlockSize(12))));
        let lens_f = Tensor::from_vec(vec![40f32, 17.0], 2, &Device::Cpu).unwrap();
        assert!(matches!(call(&q, &k, &tables, &lens_f, 64), Err(KernelError::DType { .. })));
        let k_bf = k.to_dtype(DType::BF16).unwrap();
        assert!(matches!(call(&q, &k_bf, &tables, &lens, 64), Err(KernelError::DType { .. })));

        // Tables checked for one block size, used with a cache of another.
        let checked = DecodeBlocks::new(&tables, &lens, 32, 64).unwrap();
        let k32 = Tensor::zeros((blocks, 32, kv, hd), DType::F32, &dev).unwrap();
        assert!(paged_decode_attention_with(&q, &k32, &k32, &checked, 0.1).is_ok());
        assert!(matches!(
            paged_decode_attention_with(&q, &k, &k, &checked, 0.1),
            Err(KernelError::BlockSizeMismatch { expected: 32, actual: 16 })
        ));
    }
}
