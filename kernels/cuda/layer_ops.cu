// The decoder layer's elementwise steps, fused so that a decode step launches fewer kernels
// (the step is bound by the host's launch rate below batch ~64, see kernels/NOTES.md):
//
//   add_rms_norm   x' = x + delta; h = rmsnorm(x') * w        (residual + the next norm)
//   silu_mul       act = silu(gate) * up, from one [n, 2f] gate|up projection (16-bit
//                  types with f % 8 == 0: silu_mul_vec8, 16-byte accesses, same bits)
//   rope_store_kv  q and k rotated, q written out, k and v written to their KV-cache rows,
//                  from one [n, (heads + 2 kv_heads) * head_dim] q|k|v projection
//   widen_f32_vec8 16-bit values to f32, 16-byte accesses (the logits' cast)
//
// Each output element is computed with the operations, in the element type and order, of
// the candle kernels these replace (binary add, rmsnorm with a 32- or 1024-thread row
// reduction, silu then mul, rope), so a row's result does not depend on the batch and
// matches the unfused composition.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int mask = 16; mask > 0; mask >>= 1) x += __shfl_xor_sync(0xffffffff, x, mask, 32);
    return x;
}

// The RMSNorm scale of a row of ncols values whose squares the block's threads summed into
// `part` each: the warp sums, then (more than one warp) the warps' sums in warp order through
// shared memory, as candle's rmsnorm reduces.
__device__ __forceinline__ float rms_scale(float part, int ncols, float eps) {
    float tmp = warp_sum(part);
    if (blockDim.x > 32) {
        __shared__ float s_sum[32];
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        if (lane == 0) s_sum[warp] = tmp;
        __syncthreads();
        tmp = s_sum[lane];
        tmp = warp_sum(tmp);
    }
    const float mean = tmp / ncols;
    return rsqrtf(mean + eps);
}

// One block per row; blockDim.x is 32 (ncols < 1024) or 1024, as candle's rmsnorm launch.
// out is [2, rows, ncols]: the new residual, then the normed row.
template <typename T>
__device__ void add_rms_norm(const T* __restrict__ x, const T* __restrict__ delta,
                             const T* __restrict__ w, T* __restrict__ out, int rows, int ncols,
                             float eps) {
    const int row = blockIdx.x;
    const int tid = threadIdx.x;
    const size_t base = (size_t)row * ncols;
    T* res = out + base;
    T* normed = out + (size_t)rows * ncols + base;
    // Rows of up to KEEP values a thread (every Llama-family width with 1024 threads) keep
    // the sums and the weights in registers, the weights loaded before the reduction, so
    // the second pass reads nothing: the same operations in the same order as the loop
    // below, fewer dependent memory round trips (a decode step's single block is a chain).
    constexpr int KEEP = 8;
    if (ncols <= KEEP * (int)blockDim.x) {
        T kept[KEEP];
        float wk[KEEP];
        float tmp = 0.0f;
#pragma unroll
        for (int k = 0; k < KEEP; ++k) {
            const int col = tid + k * blockDim.x;
            if (col < ncols) {
                const T s = x[base + col] + delta[base + col];
                kept[k] = s;
                wk[k] = to_float(w[col]);
                res[col] = s;
                const float xi = to_float(s);
                tmp += xi * xi;
            }
        }
        const float scale = rms_scale(tmp, ncols, eps);
#pragma unroll
        for (int k = 0; k < KEEP; ++k) {
            const int col = tid + k * blockDim.x;
            if (col < ncols) normed[col] = from_float<T>(scale * to_float(kept[k]) * wk[k]);
        }
        return;
    }
    float tmp = 0.0f;
    for (int col = tid; col < ncols; col += blockDim.x) {
        const T s = x[base + col] + delta[base + col];
        res[col] = s;
        const float xi = to_float(s);
        tmp += xi * xi;
    }
    const float scale = rms_scale(tmp, ncols, eps);
    // Each thread reads back the columns it wrote itself: no barrier needed.
    for (int col = tid; col < ncols; col += blockDim.x) {
        const float a = to_float(w[col]);
        normed[col] = from_float<T>(scale * to_float(res[col]) * a);
    }
}

// act[r, j] = silu(gu[r, j]) * gu[r, f + j], rounded to T after the silu and after the
// product (as silu then mul).
template <typename T>
__device__ void silu_mul(const T* __restrict__ gu, T* __restrict__ act, long long rows, int f) {
    const long long total = rows * f;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long r = t / f;
        const int j = (int)(t - r * f);
        const float g = to_float(gu[r * 2 * f + j]);
        const T s = from_float<T>(g / (1.0f + expf(-g)));
        act[t] = s * gu[r * 2 * f + f + j];
    }
}

template <>
__device__ void silu_mul<float>(const float* __restrict__ gu, float* __restrict__ act,
                                long long rows, int f) {
    const long long total = rows * f;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long r = t / f;
        const int j = (int)(t - r * f);
        const float g = gu[r * 2 * f + j];
        const float s = g / (1.0f + expf(-g));
        act[t] = s * gu[r * 2 * f + f + j];
    }
}

// silu_mul for 16-bit types with f % 8 == 0 and 16-byte aligned rows: 8 elements per
// thread through 16-byte loads and stores, rows on grid y (no 64-bit division per element).
// Each element takes the scalar kernel's operations in its order, so the bits are the same.
// The scalar kernel ran a 512-token prefill's gate|up (512 x 28672) at ~1.2 TB/s (ncu, H100),
// issue-bound on the division and the 2-byte accesses.
template <typename T>
__device__ void silu_mul_vec8(const T* __restrict__ gu, T* __restrict__ act, int rows, int f) {
    const int vecs = f / 8;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const T* g_row = gu + (size_t)r * 2 * f;
        const T* u_row = g_row + f;
        T* out_row = act + (size_t)r * f;
        for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < vecs; v += gridDim.x * blockDim.x) {
            const uint4 gv = *reinterpret_cast<const uint4*>(g_row + v * 8);
            const uint4 uv = *reinterpret_cast<const uint4*>(u_row + v * 8);
            const T* g8 = reinterpret_cast<const T*>(&gv);
            const T* u8 = reinterpret_cast<const T*>(&uv);
            uint4 ov;
            T* o8 = reinterpret_cast<T*>(&ov);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const float g = to_float(g8[e]);
                const T s = from_float<T>(g / (1.0f + expf(-g)));
                o8[e] = s * u8[e];
            }
            *reinterpret_cast<uint4*>(out_row + v * 8) = ov;
        }
    }
}

// Rows of qkv ([rows, (nh + 2 nkv) * hd], row stride `ld`) on grid y, each row's work items
// spread over grid x (one item a thread: a decode step's few rows would otherwise leave one
// block walking a row's ~3,000 items, a chain of dependent loads). Work items: the rotation
// pairs of the nh query heads, then of the nkv key heads, then pairs of value elements.
// interleaved = 0: dimension i pairs with i + hd / 2; 1: 2i with 2i + 1. cos / sin:
// [rows, hd / 2]. Keys and values go to row slots[row] of the caches ([*, nkv * hd]). An
// element's arithmetic does not depend on which thread computes it.
template <typename T>
__device__ void rope_store_kv(const T* __restrict__ qkv, const T* __restrict__ cos,
                              const T* __restrict__ sin, const uint32_t* __restrict__ slots,
                              T* __restrict__ q_out, T* __restrict__ k_cache,
                              T* __restrict__ v_cache, long long ld, int rows, int nh, int nkv,
                              int hd, int interleaved) {
    const int half = hd / 2;
    const int q_pairs = nh * half, k_pairs = nkv * half, v_pairs = nkv * half;
    for (int row = blockIdx.y; row < rows; row += gridDim.y) {
        const T* src = qkv + (size_t)row * ld;
        const size_t slot = slots[row];
        const T* c_row = cos + (size_t)row * half;
        const T* s_row = sin + (size_t)row * half;
        for (int item = blockIdx.x * blockDim.x + threadIdx.x; item < q_pairs + k_pairs + v_pairs;
             item += gridDim.x * blockDim.x) {
            if (item < q_pairs + k_pairs) {
                const bool is_q = item < q_pairs;
                const int p = is_q ? item : item - q_pairs;
                const int head = p / half, i = p - head * half;
                const int i1 = head * hd + (interleaved ? 2 * i : i);
                const int i2 = i1 + (interleaved ? 1 : half);
                const T* x = src + (is_q ? 0 : nh * hd);
                T* dst = is_q ? q_out + (size_t)row * nh * hd : k_cache + slot * nkv * hd;
                const T c = c_row[i], s = s_row[i];
                const T x1 = x[i1], x2 = x[i2];
                dst[i1] = x1 * c - x2 * s;
                dst[i2] = x1 * s + x2 * c;
            } else {
                const int e = 2 * (item - q_pairs - k_pairs);
                const T* v = src + (nh + nkv) * hd;
                v_cache[slot * nkv * hd + e] = v[e];
                v_cache[slot * nkv * hd + e + 1] = v[e + 1];
            }
        }
    }
}

#define LAYER_OPS(T, SUFFIX)                                                                   \
    extern "C" __global__ void add_rms_norm_##SUFFIX(const T* x, const T* delta, const T* w,  \
                                                     T* out, int rows, int ncols, float eps) { \
        add_rms_norm<T>(x, delta, w, out, rows, ncols, eps);                                   \
    }                                                                                          \
    extern "C" __global__ void silu_mul_##SUFFIX(const T* gu, T* act, long long rows, int f) { \
        silu_mul<T>(gu, act, rows, f);                                                         \
    }                                                                                          \
    extern "C" __global__ void rope_store_kv_##SUFFIX(                                        \
        const T* qkv, const T* cos, const T* sin, const uint32_t* slots, T* q_out,             \
        T* k_cache, T* v_cache, long long ld, int rows, int nh, int nkv, int hd,               \
        int interleaved) {                                                                     \
        rope_store_kv<T>(qkv, cos, sin, slots, q_out, k_cache, v_cache, ld, rows, nh, nkv, hd, \
                         interleaved);                                                         \
    }

// out[i] = (float)in[i] for vecs x 8 elements (exact): one 16-byte load of 8 elements and
// two 16-byte stores a thread (in and out 16-byte aligned). What candle's element-wise cast
// does one element a thread; the logits of a decode step cross it every step.
template <typename T>
__device__ void widen_vec8(const T* __restrict__ in, float* __restrict__ out, long long vecs) {
    for (long long v = blockIdx.x * (long long)blockDim.x + threadIdx.x; v < vecs;
         v += (long long)gridDim.x * blockDim.x) {
        const uint4 packed = reinterpret_cast<const uint4*>(in)[v];
        const T* e = reinterpret_cast<const T*>(&packed);
        float4* o = reinterpret_cast<float4*>(out) + 2 * v;
        o[0] = make_float4(to_float(e[0]), to_float(e[1]), to_float(e[2]), to_float(e[3]));
        o[1] = make_float4(to_float(e[4]), to_float(e[5]), to_float(e[6]), to_float(e[7]));
    }
}

#define SILU_VEC8(T, SUFFIX)                                                                   \
    extern "C" __global__ void silu_mul_vec8_##SUFFIX(const T* gu, T* act, int rows, int f) {  \
        silu_mul_vec8<T>(gu, act, rows, f);                                                    \
    }                                                                                          \
    extern "C" __global__ void widen_f32_vec8_##SUFFIX(const T* in, float* out, long long vecs) { \
        widen_vec8<T>(in, out, vecs);                                                          \
    }

SILU_VEC8(__nv_bfloat16, bf16)
SILU_VEC8(__half, f16)
LAYER_OPS(float, f32)
LAYER_OPS(__nv_bfloat16, bf16)
LAYER_OPS(__half, f16)
