// Version 1 (kept for comparison runs; see kernels/NOTES.md): no software pipelining,
// element-wise epilogue, serial partial reduction. The engine uses sgmv.cu.
//
// SGMV shrink and expand for a batch of segments, each segment with its own LoRA adapter.
//
// Both stages are one tiled product  out[tile rows, n] = sum_k in[tile rows, k] * w[n, k]
// over a tile of at most TILE_M tokens of one segment:
//   shrink: in = x rows (gathered through `rows`), w = lora_A [rank, d_in], k over a
//           KSPLIT_K-wide slice of d_in (grid.y); the last slice block of a tile sums the
//           f32 partials in slice order (deterministic) into v [num_tokens, width].
//   expand: in = v (f32, rounded to T), w = lora_B [d_out, rank], k over the rank,
//           n over a TILE_N-wide slice of d_out (grid.y); y[row, n] += scale * out.
// Operands are staged through shared memory in KSTEP-wide slices; 16-bit types multiply on
// the tensor cores (WMMA m16n16k16, f32 accumulate), f32 on the CUDA cores in f32.
// Adapter weights are read in place through `table` (per slot: lora_A, lora_B pointers).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

constexpr int TILE_M = 64;     // tokens per tile (must match TILE_TOKENS on the host)
constexpr int TILE_N = 128;    // output columns (rank rows or d_out columns) per block
constexpr int KSPLIT_K = 256;  // d_in per shrink block (must match the host)
constexpr int THREADS = 128;   // 4 warps

struct SgmvParams {
    const void* x;                       // [num_rows, d_in]
    void* y;                             // [num_rows, d_out]
    float* partial;                      // [ksplit, num_tokens, width]
    float* v;                            // [num_tokens, width]
    unsigned int* counters;              // [num_tiles * rank_chunks], zero between launches
    const unsigned long long* table;     // [slots][2]: lora_A, lora_B
    const unsigned int* rows;            // [num_tokens]
    const unsigned int* tiles;           // [num_tiles][3]: segment, start, end
    const unsigned int* seg_slot;        // [segments]
    const unsigned int* seg_rank;        // [segments]
    const float* seg_scale;              // [segments]
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

// Row padding of the shared tiles: 16 bytes keeps 16-byte stores aligned and spreads rows
// over banks.
template <typename T> struct Smem {
    // k staged per step: 64 for 16-bit types, 32 for f32, so either fits in 28 KB.
    static constexpr int KSTEP = sizeof(T) == 4 ? 32 : 64;
    static constexpr int PAD = 16 / sizeof(T);
    static constexpr int LD = KSTEP + PAD;
    T in[TILE_M][LD];
    T w[TILE_N][LD];
};

// Rows of a shared tile that a product reads: whole 16-row fragments for the tensor cores,
// every row for the f32 path (which reads all of them).
template <typename T, int CAP>
__device__ __forceinline__ int rows_read(int nrows) {
    return sizeof(T) == 4 ? CAP : min(CAP, (nrows + 15) / 16 * 16);
}

// Copies rows [0, nrows) x k in [k0, k0 + KSTEP) of a row-major operand into `dst`, zero
// elsewhere (rows up to those the product reads, k beyond `klen`). `row_ptr(r)` is the
// start of row r.
template <typename T, int CAP, typename RowPtr>
__device__ __forceinline__ void stage_rows(T (*dst)[Smem<T>::LD], int nrows, int k0, int klen,
                                           bool vec, RowPtr row_ptr) {
    constexpr int VEC = 16 / sizeof(T);
    constexpr int CHUNKS = Smem<T>::KSTEP / VEC;
    const int cap = rows_read<T, CAP>(nrows);
    for (int i = threadIdx.x; i < cap * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, c = (i % CHUNKS) * VEC, k = k0 + c;
        T* d = &dst[r][c];
        if (r < nrows && vec && k + VEC <= klen) {
            *reinterpret_cast<uint4*>(d) = __ldg(reinterpret_cast<const uint4*>(row_ptr(r) + k));
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                d[e] = (r < nrows && k + e < klen) ? row_ptr(r)[k + e] : from_f<T>(0.f);
        }
    }
}

// out[m, n] = sum over the staged k of in[m, k] * w[n, k] for m < TILE_M, n < TILE_N,
// accumulated over all KSTEP slices, then handed to `emit(m, n, value)` for m < mrows and
// n < nvalid. `load(k0)` stages one slice of both operands.
template <typename T, typename Load, typename Emit>
__device__ __forceinline__ void tile_product(Smem<T>& s, int mrows, int nvalid, int klen,
                                             Load load, Emit emit) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int mtiles = (mrows + 15) / 16;
    if constexpr (sizeof(T) == 2) {
        // Warp w owns column tiles 2w and 2w+1 and every row tile.
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
        for (int k0 = 0; k0 < klen; k0 += Smem<T>::KSTEP) {
            load(k0);
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < Smem<T>::KSTEP; kk += 16) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
                for (int j = 0; j < 2; ++j)
                    if ((warp * 2 + j) * 16 < nvalid)
                        wmma::load_matrix_sync(b[j], &s.w[(warp * 2 + j) * 16][kk], Smem<T>::LD);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    if (i >= mtiles) break;
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                    wmma::load_matrix_sync(a, &s.in[i * 16][kk], Smem<T>::LD);
#pragma unroll
                    for (int j = 0; j < 2; ++j)
                        if ((warp * 2 + j) * 16 < nvalid) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
                }
            }
            __syncthreads();
        }
        // Each warp stages one 16x16 result at a time in the (now free) operand memory.
        float* stage = reinterpret_cast<float*>(&s.in[0][0]) + warp * 256;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int n0 = (warp * 2 + j) * 16;
                if (i >= mtiles || n0 >= nvalid) continue;
                wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
                __syncwarp();
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const int idx = lane * 8 + e, m = i * 16 + idx / 16, n = n0 + idx % 16;
                    if (m < mrows && n < nvalid) emit(m, n, stage[idx]);
                }
                __syncwarp();
            }
    } else {
        // f32: CUDA cores, thread t owns column t and every row (exact f32 arithmetic).
        float acc[TILE_M];
#pragma unroll
        for (int m = 0; m < TILE_M; ++m) acc[m] = 0.f;
        const int n = threadIdx.x;
        for (int k0 = 0; k0 < klen; k0 += Smem<T>::KSTEP) {
            load(k0);
            __syncthreads();
            for (int kk = 0; kk < Smem<T>::KSTEP; ++kk) {
                const float wv = s.w[n][kk];
#pragma unroll
                for (int m = 0; m < TILE_M; ++m) acc[m] += s.in[m][kk] * wv;
            }
            __syncthreads();
        }
        if (n < nvalid)
#pragma unroll
            for (int m = 0; m < TILE_M; ++m)
                if (m < mrows) emit(m, n, acc[m]);
    }
}

template <typename T>
__device__ void shrink(const SgmvParams& p) {
    __shared__ __align__(128) Smem<T> s;
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

    // Partials of columns [0, nvalid); columns [nvalid, TILE_N) are zero by definition.
    if (nvalid > 0) {
        auto load = [&](int k0) {
            stage_rows<T, TILE_M>(s.in, mrows, k0, klen, vec,
                                  [&](int r) { return x + (size_t)p.rows[start + r] * p.d_in; });
            stage_rows<T, TILE_N>(s.w, nvalid, k0, klen, vec,
                                  [&](int r) { return a + (size_t)r * p.d_in; });
        };
        tile_product<T>(s, mrows, nvalid, klen, load,
                        [&](int m, int n, float val) { part[(size_t)m * p.width + n] = val; });
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
    for (int i = threadIdx.x; i < mrows * ncols; i += THREADS) {
        const int m = i / ncols, n = i % ncols;
        float sum = 0.f;
        if (n < nvalid) {
            const float* src = p.partial + (size_t)(start + m) * p.width + n0 + n;
            const size_t stride = (size_t)p.num_tokens * p.width;
            for (int ks = 0; ks < p.ksplit; ++ks) sum += __ldcg(src + ks * stride);
        }
        p.v[(size_t)(start + m) * p.width + n0 + n] = sum;
    }
    if (threadIdx.x == 0) *counter = 0u;  // ready for the next launch on this map
}

template <typename T>
__device__ void expand(const SgmvParams& p) {
    __shared__ __align__(128) Smem<T> s;
    const unsigned int* tile = p.tiles + 3 * blockIdx.x;
    const int seg = tile[0], start = tile[1], mrows = tile[2] - tile[1];
    const int rank = p.seg_rank[seg];
    const float scale = p.seg_scale[seg];
    const int n0 = blockIdx.y * TILE_N;
    const int nvalid = min(TILE_N, p.d_out - n0);
    const T* b = reinterpret_cast<const T*>(p.table[2 * p.seg_slot[seg] + 1]) + (size_t)n0 * rank;
    const bool vec = (p.vec_ok & 2) && rank % (16 / sizeof(T)) == 0;
    T* y = static_cast<T*>(p.y) + n0;

    auto load = [&](int k0) {
        // v is f32 and small; it is rounded to T here, as a framework's bf16 x @ A would be.
        constexpr int CH = Smem<T>::KSTEP;
        const int cap = rows_read<T, TILE_M>(mrows);
        for (int i = threadIdx.x; i < cap * CH; i += THREADS) {
            const int r = i / CH, c = i % CH, k = k0 + c;
            const float val = (r < mrows && k < rank) ? p.v[(size_t)(start + r) * p.width + k] : 0.f;
            s.in[r][c] = from_f<T>(val);
        }
        stage_rows<T, TILE_N>(s.w, nvalid, k0, rank, vec, [&](int r) { return b + (size_t)r * rank; });
    };
    tile_product<T>(s, mrows, nvalid, rank, load, [&](int m, int n, float val) {
        T* dst = y + (size_t)p.rows[start + m] * p.d_out + n;
        *dst = from_f<T>(to_f<T>(*dst) + scale * val);
    });
}

#define SGMV_KERNELS(NAME, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS) sgmv_shrink_v1_##NAME(SgmvParams p) {   \
        shrink<T>(p);                                                                           \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS) sgmv_expand_v1_##NAME(SgmvParams p) {   \
        expand<T>(p);                                                                           \
    }

SGMV_KERNELS(bf16, __nv_bfloat16)
SGMV_KERNELS(f16, __half)
SGMV_KERNELS(f32, float)
