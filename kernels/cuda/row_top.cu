// The two entries of largest magnitude of each row, packed into one u32 each: the entry's
// column in the low `index_bits` bits, above them the value's f32 bits shortened to
// 32 - index_bits bits (rounded to nearest even; NaN stays NaN). Largest first; equal
// magnitudes go to the lower column; NaN counts as smaller than any number.
//
// This is the row encoding of the engine's activation commitments (engine/src/commitment.rs,
// `top_dims` and `shorten`), computed where the rows are so that 8 bytes a row cross to the
// host instead of the row. The order is total (magnitude, then column), so the result does
// not depend on how the row is split among threads.
//
// One block of 256 threads per row: each thread keeps the best two of its strided columns,
// then warps and the block merge their pairs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
// A NaN widens as the host's conversion (the `half` crate, F16C) widens it: quiet, with its
// payload, so that both sides shorten the same bits (`__half2float` gives a canonical NaN).
__device__ __forceinline__ float to_float(__half x) {
    const unsigned short h = __half_as_ushort(x);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0) {
        return __uint_as_float(((uint32_t)(h & 0x8000) << 16) | 0x7fc00000u | ((uint32_t)(h & 0x03ff) << 13));
    }
    return __half2float(x);
}

// A candidate: its magnitude key (-1 for NaN, -2 for none) and its column.
struct Cand {
    float key;
    int col;
};

__device__ __forceinline__ bool better(Cand a, Cand b) {
    return a.key > b.key || (a.key == b.key && a.col < b.col);
}

// Merges pair (b1, b2) into pair (a1, a2); each pair is ordered best first.
__device__ __forceinline__ void merge(Cand& a1, Cand& a2, Cand b1, Cand b2) {
    if (better(b1, a1)) {
        // b1 leads; the second is the better of a1 and b2.
        a2 = better(b2, a1) ? b2 : a1;
        a1 = b1;
    } else if (better(b1, a2)) {
        a2 = b1;
    }
}

__device__ __forceinline__ Cand shfl(Cand c, int mask) {
    Cand o;
    o.key = __shfl_xor_sync(0xffffffff, c.key, mask, 32);
    o.col = __shfl_xor_sync(0xffffffff, c.col, mask, 32);
    return o;
}

// engine/src/commitment.rs `shorten`, for a shortening by `drop` bits.
__device__ __forceinline__ uint32_t shorten(float v, int drop) {
    const uint32_t bits = __float_as_uint(v);
    if (isnan(v)) return (bits >> drop) | (1u << (32 - drop - 2));
    const uint32_t half = (1u << (drop - 1)) - 1;
    const uint32_t round = half + ((bits >> drop) & 1);
    return (bits + round) >> drop;
}

constexpr int THREADS = 256;

template <typename T>
__device__ void packed_top2(const T* __restrict__ x, uint32_t* __restrict__ out, int cols,
                            int index_bits) {
    const int row = blockIdx.x;
    const T* r = x + (size_t)row * cols;
    Cand a1 = {-2.0f, 0x7fffffff}, a2 = {-2.0f, 0x7fffffff};
    for (int c = threadIdx.x; c < cols; c += THREADS) {
        const float v = to_float(r[c]);
        const Cand k = {isnan(v) ? -1.0f : fabsf(v), c};
        // Columns rise within a thread: a later equal magnitude never displaces.
        if (better(k, a1)) {
            a2 = a1;
            a1 = k;
        } else if (better(k, a2)) {
            a2 = k;
        }
    }
#pragma unroll
    for (int mask = 16; mask > 0; mask >>= 1) {
        const Cand b1 = shfl(a1, mask), b2 = shfl(a2, mask);
        merge(a1, a2, b1, b2);
    }
    __shared__ Cand warp_best[THREADS / 32][2];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        warp_best[warp][0] = a1;
        warp_best[warp][1] = a2;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < THREADS / 32; ++w) merge(a1, a2, warp_best[w][0], warp_best[w][1]);
        const int drop = index_bits;
        out[2 * (size_t)row] = (shorten(to_float(r[a1.col]), drop) << index_bits) | (uint32_t)a1.col;
        out[2 * (size_t)row + 1] =
            (shorten(to_float(r[a2.col]), drop) << index_bits) | (uint32_t)a2.col;
    }
}

#define ROW_TOP(T, SUFFIX)                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS)                                    \
        packed_top2_##SUFFIX(const T* x, uint32_t* out, int cols, int index_bits) {          \
        packed_top2<T>(x, out, cols, index_bits);                                            \
    }

ROW_TOP(float, f32)
ROW_TOP(__nv_bfloat16, bf16)
ROW_TOP(__half, f16)
