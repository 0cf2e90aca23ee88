//! The f64 reference the tests compare the CPU and CUDA paths against: naive and independent
//! of them (it walks positions one at a time and uses the natural-log softmax).

/// Decode attention in f64 with the module's layouts: `q` `[num_seqs, num_heads, head_dim]`,
/// caches `[num_blocks, block_size, num_kv_heads, head_dim]`, `tables` row-major
/// `[num_seqs, table_width]`. Returns `[num_seqs, num_heads, head_dim]`; zero rows for empty
/// contexts.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_attention(
    q: &[f64],
    k_cache: &[f64],
    v_cache: &[f64],
    tables: &[u32],
    context_lens: &[u32],
    table_width: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    scale: f64,
) -> Vec<f64> {
    let num_seqs = context_lens.len();
    let group = num_heads / num_kv_heads;
    let mut out = vec![0.0; num_seqs * num_heads * head_dim];
    for seq in 0..num_seqs {
        let len = context_lens[seq] as usize;
        for h in 0..num_heads {
            if len == 0 {
                continue;
            }
            let kv = h / group;
            let qv = &q[(seq * num_heads + h) * head_dim..][..head_dim];
            let at = |t: usize| {
                let block = tables[seq * table_width + t / block_size] as usize;
                ((block * block_size + t % block_size) * num_kv_heads + kv) * head_dim
            };
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    let k = &k_cache[at(t)..][..head_dim];
                    qv.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let o = &mut out[(seq * num_heads + h) * head_dim..][..head_dim];
            for (t, w) in weights.iter().enumerate() {
                let v = &v_cache[at(t)..][..head_dim];
                for (o, v) in o.iter_mut().zip(v) {
                    *o += w / total * v;
                }
            }
        }
    }
    out
}

/// Causal prefill attention in f64: `q` `[q_rows, num_heads, head_dim]`, caches as above;
/// `chunks` (q_row, len, start, table) as [`crate::PrefillChunk`] has them. Returns
/// `[rows, num_heads, head_dim]`, the chunks' rows in order: row `i` of a chunk attends to
/// positions `0..=start + i` of its table.
#[allow(clippy::too_many_arguments)]
pub fn paged_prefill_attention(
    q: &[f64],
    k_cache: &[f64],
    v_cache: &[f64],
    chunks: &[(usize, usize, usize, &[u32])],
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    scale: f64,
) -> Vec<f64> {
    let mut out = Vec::new();
    for &(q_row, len, start, table) in chunks {
        for i in 0..len {
            let context = start + i + 1;
            let row = &q[(q_row + i) * num_heads * head_dim..][..num_heads * head_dim];
            out.extend(paged_decode_attention(
                row,
                k_cache,
                v_cache,
                table,
                &[context as u32],
                table.len(),
                num_heads,
                num_kv_heads,
                head_dim,
                block_size,
                scale,
            ));
        }
    }
    out
}
