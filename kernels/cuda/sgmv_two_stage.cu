// SGMV shrink and expand for a batch of segments, each segment with its own LoRA adapter.
//
// Both stages are one tiled product  out[tile rows, n] = sum_k in[tile rows, k] * w[n, k]
// over a tile of at most 64 tokens of one segment:
//   shrink: in = x rows (gathered through `rows`), w = lora_A [rank, d_in], k over a
//           KSPLIT_K-wide slice of d_in (grid.y); the last slice block of a tile sums the
//           f32 partials in slice order (deterministic) into v [num_tokens, width].
//   expand: in = v (f32, rounded to T), w = lora_B [d_out, rank], k over the rank,
//           n over a TILE_N-wide slice of d_out (grid.y); y[row, n] += scale * out.
// Operands go global -> registers -> shared memory in KSTEP-wide slices, the next slice's
// loads in flight while the tensor cores (WMMA m16n16k16, f32 accumulate) work on the
// current one; f32 multiplies on the CUDA cores in f32. Results leave through a per-warp
// staging buffer as 16-element row runs. Adapter weights are read in place through `table`
// (per slot: lora_A, lora_B pointers).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

// Tiles hold at most 64 tokens (TILE_TOKENS on the host): MT = 4 row tiles of 16. The
// "small" kernels, for batches whose segments all have <= 16 tokens (decode), take MT = 1:
// a quarter of the accumulators, so more blocks fit on an SM.
constexpr int TILE_N = 128;    // output columns (rank rows or d_out columns) per block
constexpr int KSPLIT_K = 256;  // d_in per shrink block (KSPLIT_K on the host)
constexpr int THREADS = 128;   // 4 warps

struct SgmvParams {
    const void* x;                    // [num_rows, d_in]
    void* y;                          // [num_rows, d_out]
    float* partial;                   // [ksplit, num_tokens, width]
    float* v;                         // [num_tokens, width]
    unsigned int* counters;           // [num_tiles * rank_chunks], zero between launches
    const unsigned long long* table;  // [slots][2]: lora_A, lora_B
    const unsigned int* rows;         // [num_tokens]
    const unsigned int* tiles;        // [num_tiles][3]: segment, start, end
    const unsigned int* seg_slot;     // [segments]
    const unsigned int* seg_rank;     // [segments]
    const float* seg_scale;           // [segments]
    // vec_ok bits: 1 x and every lora_A allow 16-byte loads along d_in; 2 every lora_B is
    // 16-byte aligned; 4 y allows 16-byte accesses along d_out.
    int d_in, d_out, num_tokens, width, ksplit, vec_ok;
};

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

template <typename T, int MT> struct Smem {
    // k staged per step: 64 for 16-bit types, 32 for f32, so either fits in 28 KB.
    static constexpr int KSTEP = sizeof(T) == 4 ? 32 : 64;
    static constexpr int PAD = 16 / sizeof(T);  // 16-byte row padding: aligned, bank-spread
    static constexpr int LD = KSTEP + PAD;
    T in[16 * MT][LD];
    T w[TILE_N][LD];
};

// Rows of a shared tile that a product reads: whole 16-row fragments for the tensor cores,
// every row for the f32 path.
template <typename T, int CAP>
__device__ __forceinline__ int rows_read(int nrows) {
    return sizeof(T) == 4 ? CAP : min(CAP, (nrows + 15) / 16 * 16);
}

// One KSTEP slice of a CAP-row operand, held in registers between its global loads and its
// shared-memory stores, so the next slice's loads overlap the current slice's product.
// Each 16-byte chunk is VEC consecutive k of one row; rows >= nrows and k >= klen are zero.
template <typename T, int CAP> struct Stage {
    static constexpr int VEC = 16 / sizeof(T);
    static constexpr int CHUNKS = Smem<T, 1>::KSTEP / VEC;
    static constexpr int ITERS = (CAP * CHUNKS + THREADS - 1) / THREADS;
    uint4 regs[ITERS];

    // Operand rows are row-major T; `row_ptr(r)` is the start of row r.
    template <typename RowPtr>
    __device__ __forceinline__ void fetch(int nrows, int k0, int klen, bool vec, RowPtr row_ptr) {
        const int cap = rows_read<T, CAP>(nrows);
#pragma unroll
        for (int it = 0; it < ITERS; ++it) {
            const int i = threadIdx.x + it * THREADS;
            const int r = i / CHUNKS, k = k0 + (i % CHUNKS) * VEC;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (i < cap * CHUNKS && r < nrows) {
                const T* src = row_ptr(r) + k;
                if (vec && k + VEC <= klen) {
                    val = __ldg(reinterpret_cast<const uint4*>(src));
                } else {
                    __align__(16) T tmp[VEC];
#pragma unroll
                    for (int e = 0; e < VEC; ++e) tmp[e] = k + e < klen ? src[e] : from_f<T>(0.f);
                    val = *reinterpret_cast<const uint4*>(tmp);
                }
            }
            regs[it] = val;
        }
    }

    // The operand is f32 rows (v), rounded to T on the way.
    __device__ __forceinline__ void fetch_f32(int nrows, int k0, int klen, const float* base, int ld) {
        const int cap = rows_read<T, CAP>(nrows);
#pragma unroll
        for (int it = 0; it < ITERS; ++it) {
            const int i = threadIdx.x + it * THREADS;
            const int r = i / CHUNKS, k = k0 + (i % CHUNKS) * VEC;
            __align__(16) T tmp[VEC];
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const bool ok = i < cap * CHUNKS && r < nrows && k + e < klen;
                tmp[e] = from_f<T>(ok ? base[(size_t)r * ld + k + e] : 0.f);
            }
            regs[it] = *reinterpret_cast<const uint4*>(tmp);
        }
    }

    __device__ __forceinline__ void store(T (*dst)[Smem<T, 1>::LD], int nrows) {
        const int cap = rows_read<T, CAP>(nrows);
#pragma unroll
        for (int it = 0; it < ITERS; ++it) {
            const int i = threadIdx.x + it * THREADS;
            if (i < cap * CHUNKS)
                *reinterpret_cast<uint4*>(&dst[i / CHUNKS][(i % CHUNKS) * VEC]) = regs[it];
        }
    }
};

// out[m, n] = sum_k in[m, k] w[n, k] for m < mrows, n < nvalid, k < klen. `fetch(k0)` loads
// slice k0 of both operands into `si` / `sw` (registers). Results go to
// `emit_row(m, n, vals, count)`: `count` (<= 16) consecutive columns of row m from n.
template <typename T, int MT, typename Fetch, typename EmitRow>
__device__ __forceinline__ void tile_product(Smem<T, MT>& s, Stage<T, 16 * MT>& si, Stage<T, TILE_N>& sw,
                                             int mrows, int nvalid, int klen, Fetch fetch,
                                             EmitRow emit_row) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int mtiles = (mrows + 15) / 16;
    constexpr int KSTEP = Smem<T, 1>::KSTEP;
    fetch(0);
    if constexpr (sizeof(T) == 2) {
        // Warp w owns column tiles 2w and 2w+1 and every row tile.
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[MT][2];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
        for (int k0 = 0; k0 < klen; k0 += KSTEP) {
            si.store(s.in, mrows);
            sw.store(s.w, nvalid);
            __syncthreads();
            if (k0 + KSTEP < klen) fetch(k0 + KSTEP);
#pragma unroll
            for (int kk = 0; kk < KSTEP; kk += 16) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
                for (int j = 0; j < 2; ++j)
                    if ((warp * 2 + j) * 16 < nvalid)
                        wmma::load_matrix_sync(b[j], &s.w[(warp * 2 + j) * 16][kk], Smem<T, 1>::LD);
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    if (i >= mtiles) break;
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                    wmma::load_matrix_sync(a, &s.in[i * 16][kk], Smem<T, 1>::LD);
#pragma unroll
                    for (int j = 0; j < 2; ++j)
                        if ((warp * 2 + j) * 16 < nvalid) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
                }
            }
            __syncthreads();
        }
        // Each warp stages a 16 x 32 strip (its two column tiles) in the operand memory, free
        // after the last barrier; lane l then hands on row l / 2, columns 16 (l % 2) .. + 16.
        static_assert(sizeof(Smem<T, MT>) >= 4 * 512 * sizeof(float), "staging fits");
        float* stage = reinterpret_cast<float*>(&s) + warp * 512;
        const int n_lane = warp * 32 + (lane % 2) * 16;
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            if (i >= mtiles) break;
#pragma unroll
            for (int j = 0; j < 2; ++j)
                if ((warp * 2 + j) * 16 < nvalid)
                    wmma::store_matrix_sync(stage + j * 16, acc[i][j], 32, wmma::mem_row_major);
            __syncwarp();
            const int m = i * 16 + lane / 2;
            if (m < mrows && n_lane < nvalid)
                emit_row(m, n_lane, stage + (lane / 2) * 32 + (lane % 2) * 16, min(16, nvalid - n_lane));
            __syncwarp();
        }
    } else {
        // f32: CUDA cores, thread t owns column t and every row (exact f32 arithmetic).
        float acc[16 * MT];
#pragma unroll
        for (int m = 0; m < 16 * MT; ++m) acc[m] = 0.f;
        const int n = threadIdx.x;
        for (int k0 = 0; k0 < klen; k0 += KSTEP) {
            si.store(s.in, mrows);
            sw.store(s.w, nvalid);
            __syncthreads();
            if (k0 + KSTEP < klen) fetch(k0 + KSTEP);
            for (int kk = 0; kk < KSTEP; ++kk) {
                const float wv = s.w[n][kk];
#pragma unroll
                for (int m = 0; m < 16 * MT; ++m) acc[m] += s.in[m][kk] * wv;
            }
            __syncthreads();
        }
        if (n < nvalid)
#pragma unroll
            for (int m = 0; m < 16 * MT; ++m)
                if (m < mrows) {
                    const float val = acc[m];
                    emit_row(m, n, &val, 1);
                }
    }
}

template <typename T, int MT>
__device__ void shrink(const SgmvParams& p) {
    __shared__ __align__(128) Smem<T, MT> s;
    __shared__ bool last_block;
    const unsigned int* tile = p.tiles + 3 * blockIdx.x;
    const int seg = tile[0], start = tile[1], mrows = tile[2] - tile[1];
    const int rank = p.seg_rank[seg];
    const int n0 = blockIdx.z * TILE_N;
    const int nvalid = max(0, min(TILE_N, rank - n0));
    const int kbase = blockIdx.y * KSPLIT_K;
    const int klen = min(KSPLIT_K, p.d_in - kbase);
    const T* x = static_cast<const T*>(p.x) + kbase;
    const T* a = reinterpret_cast<const T*>(p.table[2 * p.seg_slot[seg]]) + (size_t)n0 * p.d_in + kbase;
    const bool vec = p.vec_ok & 1;
    float* part = p.partial + ((size_t)blockIdx.y * p.num_tokens + start) * p.width + n0;

    // Partials of columns [0, nvalid); the reduction treats the others as zero.
    if (nvalid > 0) {
        Stage<T, 16 * MT> si;
        Stage<T, TILE_N> sw;
        auto fetch = [&](int k0) {
            si.fetch(mrows, k0, klen, vec, [&](int r) { return x + (size_t)p.rows[start + r] * p.d_in; });
            sw.fetch(nvalid, k0, klen, vec, [&](int r) { return a + (size_t)r * p.d_in; });
        };
        tile_product<T, MT>(s, si, sw, mrows, nvalid, klen, fetch,
                        [&](int m, int n, const float* vals, int count) {
                            float* dst = part + (size_t)m * p.width + n;
#pragma unroll
                            for (int e = 0; e < 16; ++e)
                                if (e < count) dst[e] = vals[e];
                        });
    }

    // The last of the ksplit blocks of this (tile, column chunk) reduces the partials in
    // slice order, so the result does not depend on which block finished first.
    __threadfence();
    __syncthreads();
    unsigned int* counter = p.counters + blockIdx.x * gridDim.z + blockIdx.z;
    if (threadIdx.x == 0) last_block = atomicAdd(counter, 1u) == (unsigned)p.ksplit - 1;
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    const int ncols = min(TILE_N, p.width - n0);
    const size_t stride = (size_t)p.num_tokens * p.width;
    for (int i = threadIdx.x; i < mrows * ncols; i += THREADS) {
        const int m = i / ncols, n = i % ncols;
        float sum = 0.f;
        if (n < nvalid) {
            const float* src = p.partial + (size_t)(start + m) * p.width + n0 + n;
            int ks = 0;
            for (; ks + 8 <= p.ksplit; ks += 8) {
                float t[8];  // eight loads in flight, summed in slice order
#pragma unroll
                for (int u = 0; u < 8; ++u) t[u] = __ldcg(src + (ks + u) * stride);
#pragma unroll
                for (int u = 0; u < 8; ++u) sum += t[u];
            }
            for (; ks < p.ksplit; ++ks) sum += __ldcg(src + ks * stride);
        }
        p.v[(size_t)(start + m) * p.width + n0 + n] = sum;
    }
    if (threadIdx.x == 0) *counter = 0u;  // ready for the next launch on this map
}

template <typename T, int MT>
__device__ void expand(const SgmvParams& p) {
    __shared__ __align__(128) Smem<T, MT> s;
    const unsigned int* tile = p.tiles + 3 * blockIdx.x;
    const int seg = tile[0], start = tile[1], mrows = tile[2] - tile[1];
    const int rank = p.seg_rank[seg];
    const float scale = p.seg_scale[seg];
    const int n0 = blockIdx.y * TILE_N;
    const int nvalid = min(TILE_N, p.d_out - n0);
    const T* b = reinterpret_cast<const T*>(p.table[2 * p.seg_slot[seg] + 1]) + (size_t)n0 * rank;
    const bool vec_b = (p.vec_ok & 2) && rank % (16 / sizeof(T)) == 0;
    const bool vec_y = p.vec_ok & 4;
    T* y = static_cast<T*>(p.y) + n0;
    const float* v = p.v + (size_t)start * p.width;

    Stage<T, 16 * MT> si;
    Stage<T, TILE_N> sw;
    auto fetch = [&](int k0) {
        // v is rounded to T, as a framework's bf16 x @ A would be.
        si.fetch_f32(mrows, k0, rank, v, p.width);
        sw.fetch(nvalid, k0, rank, vec_b, [&](int r) { return b + (size_t)r * rank; });
    };
    tile_product<T, MT>(s, si, sw, mrows, nvalid, rank, fetch, [&](int m, int n, const float* vals, int count) {
        T* dst = y + (size_t)p.rows[start + m] * p.d_out + n;
        if (sizeof(T) == 2 && vec_y && count == 16) {
            uint4 raw[2] = {reinterpret_cast<const uint4*>(dst)[0], reinterpret_cast<const uint4*>(dst)[1]};
            T* old = reinterpret_cast<T*>(raw);
#pragma unroll
            for (int e = 0; e < 16; ++e) old[e] = from_f<T>(to_f<T>(old[e]) + scale * vals[e]);
            reinterpret_cast<uint4*>(dst)[0] = raw[0];
            reinterpret_cast<uint4*>(dst)[1] = raw[1];
        } else {
#pragma unroll
            for (int e = 0; e < 16; ++e)
                if (e < count) dst[e] = from_f<T>(to_f<T>(dst[e]) + scale * vals[e]);
        }
    });
}

// The shrink runs many small blocks when segments are short: 3 blocks per SM (168 registers,
// a few bytes of spill) keep more loads in flight than 2 would. The small kernels need far
// fewer registers and take the compiler's choice.
#define SGMV_KERNELS(NAME, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS, 3) sgmv_shrink_##NAME(SgmvParams p) { \
        shrink<T, 4>(p);                                                                       \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) sgmv_expand_##NAME(SgmvParams p) {  \
        expand<T, 4>(p);                                                                       \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) sgmv_shrink_small_##NAME(SgmvParams p) { \
        shrink<T, 1>(p);                                                                       \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) sgmv_expand_small_##NAME(SgmvParams p) { \
        expand<T, 1>(p);                                                                       \
    }

SGMV_KERNELS(bf16, __nv_bfloat16)
SGMV_KERNELS(f16, __half)
SGMV_KERNELS(f32, float)
