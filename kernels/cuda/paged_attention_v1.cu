// Decode attention over the paged KV cache, FIRST VERSION (two passes per partition, merge in
// a second launch), kept for comparison runs (OPENLEDGER_ATTN_KERNEL=v1); kernels/NOTES.md.
//
// Grid: x = context partition (PART positions each, fixed per model shape so results do not
// depend on the batch), y = key/value head x query-head subgroup, z = sequence. A block of
// NW warps reads one partition of one key/value head once for GH query heads:
//   1. q (scaled by scale * log2 e) and the partition's block numbers into shared memory;
//   2. scores: each warp takes chunks of positions; a key row is read by KL lanes (16-byte
//      loads, all of a chunk's loads issued before the first use), the KL partial dots are
//      summed with shuffles, and one lane stores the score;
//   3. the partition's max and sum of exp2(score - max) per head;
//   4. values: a row is read by VL lanes (one 16-byte vector each) and accumulated into
//      per-lane f32 sums for all GH heads, then summed over the warp's rows (shuffles) and
//      over warps (shared memory, fixed order).
// A sequence with one partition writes its output directly; longer ones write unnormalised
// partial sums with their max and sum, which paged_attn_reduce merges in partition order.
// Every read is in bounds for validated tables (the host checks block numbers against the
// cache and context lengths against the table), and positions past a context are neither
// read nor summed.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

constexpr int NW = 4;
constexpr int NT = NW * 32;
// Largest partition; the host picks PART <= MAX_PART, a multiple of 32.
constexpr int MAX_PART = 256;

struct AttnParams {
    const void* q;               // [num_seqs, num_heads, HD]
    const void* k_cache;         // [num_blocks, block_size, num_kv_heads, HD]
    const void* v_cache;
    const uint32_t* tables;      // [num_seqs, table_width]
    const uint32_t* context_lens;  // [num_seqs]
    void* out;                   // [num_seqs, num_heads, HD]
    float* part_acc;             // [num_seqs, num_heads, max_parts, HD]
    float* part_ml;              // [num_seqs, num_heads, max_parts, 2]: max, sum (log2 domain)
    float scale_log2;            // softmax scale * log2(e)
    int num_heads;
    int num_kv_heads;
    int table_width;
    int max_parts;
    int log2_block;              // log2(block_size)
    int part;                    // positions per partition
};

template <typename T> struct Elem;
template <> struct Elem<float> {
    static constexpr int VEC = 4;
    __device__ static float to_f(float x) { return x; }
    __device__ static float from_f(float x) { return x; }
    __device__ static void widen(const uint4& u, float* f) {
        f[0] = __uint_as_float(u.x); f[1] = __uint_as_float(u.y);
        f[2] = __uint_as_float(u.z); f[3] = __uint_as_float(u.w);
    }
};
template <> struct Elem<__nv_bfloat16> {
    static constexpr int VEC = 8;
    __device__ static float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
    __device__ static __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
    __device__ static void widen(const uint4& u, float* f) {
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <> struct Elem<__half> {
    static constexpr int VEC = 8;
    __device__ static float to_f(__half x) { return __half2float(x); }
    __device__ static __half from_f(float x) { return __float2half_rn(x); }
    __device__ static void widen(const uint4& u, float* f) {
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            __half2 h = *reinterpret_cast<const __half2*>(&w[i]);
            float2 v = __half22float2(h);
            f[2 * i] = v.x;
            f[2 * i + 1] = v.y;
        }
    }
};

__device__ __forceinline__ uint4 load16(const uint4* p) {
    return __ldg(p);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T, int HD, int GH>
__device__ __forceinline__ void paged_attn(const AttnParams& p) {
    using E = Elem<T>;
    constexpr int VEC = E::VEC;
    constexpr int ROW_VECS = HD / VEC;   // 16-byte vectors per key/value row
    // Scores: KL lanes per key row, KJ vectors each; KROWS rows per load; TPL rows per lane.
    constexpr int KL = 4;
    constexpr int KJ = ROW_VECS / KL;
    constexpr int KROWS = 32 / KL;
    constexpr int TPL = (8 / KJ) > 0 ? 8 / KJ : 1;
    constexpr int CHUNK = KROWS * TPL;   // positions per warp step (8, 16 or 32)
    // Values: VL lanes per row, one vector each; VROWS rows per load.
    constexpr int VL = ROW_VECS;
    constexpr int VROWS = 32 / VL;
    constexpr int VLOADS = CHUNK / VROWS;
    static_assert(KJ * KL == ROW_VECS && VL * VROWS == 32 && VLOADS * VROWS == CHUNK, "tiling");
    static_assert(MAX_PART % CHUNK == 0, "partition");

    __shared__ __align__(16) float q_s[GH][HD];
    __shared__ float s_s[GH][MAX_PART];
    __shared__ __align__(16) float red_s[NW][GH][HD];
    __shared__ uint32_t blk_s[MAX_PART];
    __shared__ float m_s[GH], l_s[GH];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int part = blockIdx.x;
    const int seq = blockIdx.z;
    const int group = p.num_heads / p.num_kv_heads;
    const int subgroups = group / GH;
    const int kv_head = blockIdx.y / subgroups;
    const int head0 = kv_head * group + (blockIdx.y % subgroups) * GH;
    const int ctx = (int)p.context_lens[seq];
    const int num_parts = (ctx + p.part - 1) / p.part;
    const size_t out_row = ((size_t)seq * p.num_heads + head0) * HD;
    T* out = reinterpret_cast<T*>(p.out) + out_row;

    if (ctx == 0) {
        if (part == 0) {
            for (int i = tid; i < GH * HD; i += NT) out[i] = E::from_f(0.f);
        }
        return;
    }
    if (part >= num_parts) return;
    const int t_begin = part * p.part;
    const int n = min(ctx - t_begin, p.part);

    // 1. q and the block numbers of this partition.
    const T* q = reinterpret_cast<const T*>(p.q) + out_row;
    for (int i = tid; i < GH * HD; i += NT) q_s[i / HD][i % HD] = E::to_f(q[i]) * p.scale_log2;
    const int first_blk = t_begin >> p.log2_block;
    const int num_blk = ((t_begin + n - 1) >> p.log2_block) - first_blk + 1;
    const uint32_t* table = p.tables + (size_t)seq * p.table_width + first_blk;
    for (int i = tid; i < num_blk; i += NT) blk_s[i] = table[i];
    __syncthreads();

    const int block_mask = (1 << p.log2_block) - 1;
    // Index (in 16-byte vectors) of position t's row for this key/value head.
    auto row_vec = [&](int t) -> size_t {
        const uint32_t blk = blk_s[(t >> p.log2_block) - first_blk];
        const size_t slot = ((size_t)blk << p.log2_block) + (t & block_mask);
        return (slot * p.num_kv_heads + kv_head) * ROW_VECS;
    };
    const uint4* kc = reinterpret_cast<const uint4*>(p.k_cache);
    const uint4* vc = reinterpret_cast<const uint4*>(p.v_cache);
    const int t_end = t_begin + n;

    // 2. Scores.
    {
        const int kr = lane / KL, kl = lane % KL;
        for (int c0 = t_begin + warp * CHUNK; c0 < t_end; c0 += NW * CHUNK) {
            uint4 kv[TPL][KJ];
#pragma unroll
            for (int i = 0; i < TPL; ++i) {
                const int t = c0 + i * KROWS + kr;
                const bool valid = t < t_end;
                const size_t r = valid ? row_vec(t) : 0;
#pragma unroll
                for (int j = 0; j < KJ; ++j)
                    kv[i][j] = valid ? load16(kc + r + kl + j * KL) : make_uint4(0, 0, 0, 0);
            }
            float acc[TPL][GH];
#pragma unroll
            for (int i = 0; i < TPL; ++i)
#pragma unroll
                for (int h = 0; h < GH; ++h) acc[i][h] = 0.f;
#pragma unroll
            for (int j = 0; j < KJ; ++j) {
                float kf[TPL][VEC];
#pragma unroll
                for (int i = 0; i < TPL; ++i) E::widen(kv[i][j], kf[i]);
                const int d0 = (kl + j * KL) * VEC;
#pragma unroll
                for (int h = 0; h < GH; ++h) {
#pragma unroll
                    for (int e = 0; e < VEC; e += 4) {
                        const float4 qv = *reinterpret_cast<const float4*>(&q_s[h][d0 + e]);
#pragma unroll
                        for (int i = 0; i < TPL; ++i) {
                            acc[i][h] = fmaf(qv.x, kf[i][e], acc[i][h]);
                            acc[i][h] = fmaf(qv.y, kf[i][e + 1], acc[i][h]);
                            acc[i][h] = fmaf(qv.z, kf[i][e + 2], acc[i][h]);
                            acc[i][h] = fmaf(qv.w, kf[i][e + 3], acc[i][h]);
                        }
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < TPL; ++i)
#pragma unroll
                for (int h = 0; h < GH; ++h)
#pragma unroll
                    for (int o = KL / 2; o > 0; o >>= 1)
                        acc[i][h] += __shfl_xor_sync(0xffffffffu, acc[i][h], o);
            if (kl == 0) {
#pragma unroll
                for (int i = 0; i < TPL; ++i) {
                    const int t = c0 + i * KROWS + kr;
                    if (t < t_end) {
#pragma unroll
                        for (int h = 0; h < GH; ++h) s_s[h][t - t_begin] = acc[i][h];
                    }
                }
            }
        }
    }
    __syncthreads();

    // 3. Softmax statistics of the partition (log2 domain); scores become weights.
    for (int h = warp; h < GH; h += NW) {
        float m = -__int_as_float(0x7f800000);
        for (int i = lane; i < n; i += 32) m = fmaxf(m, s_s[h][i]);
        m = warp_max(m);
        float l = 0.f;
        for (int i = lane; i < n; i += 32) {
            const float e = exp2f(s_s[h][i] - m);
            s_s[h][i] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            m_s[h] = m;
            l_s[h] = l;
        }
    }
    __syncthreads();

    // 4. Values.
    float acc[GH][VEC];
#pragma unroll
    for (int h = 0; h < GH; ++h)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[h][e] = 0.f;
    const int vr = lane / VL, vl = lane % VL;
    for (int c0 = t_begin + warp * CHUNK; c0 < t_end; c0 += NW * CHUNK) {
        uint4 vv[VLOADS];
#pragma unroll
        for (int i = 0; i < VLOADS; ++i) {
            const int t = c0 + i * VROWS + vr;
            vv[i] = t < t_end ? load16(vc + row_vec(t) + vl) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int i = 0; i < VLOADS; ++i) {
            const int t = c0 + i * VROWS + vr;
            if (t < t_end) {
                float vf[VEC];
                E::widen(vv[i], vf);
#pragma unroll
                for (int h = 0; h < GH; ++h) {
                    const float w = s_s[h][t - t_begin];
#pragma unroll
                    for (int e = 0; e < VEC; ++e) acc[h][e] = fmaf(w, vf[e], acc[h][e]);
                }
            }
        }
    }
#pragma unroll
    for (int o = VL; o < 32; o <<= 1)
#pragma unroll
        for (int h = 0; h < GH; ++h)
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[h][e] += __shfl_xor_sync(0xffffffffu, acc[h][e], o);
    if (vr == 0) {
#pragma unroll
        for (int h = 0; h < GH; ++h)
#pragma unroll
            for (int e = 0; e < VEC; e += 4)
                *reinterpret_cast<float4*>(&red_s[warp][h][vl * VEC + e]) =
                    make_float4(acc[h][e], acc[h][e + 1], acc[h][e + 2], acc[h][e + 3]);
    }
    __syncthreads();

    if (num_parts == 1) {
        for (int i = tid; i < GH * HD; i += NT) {
            const int h = i / HD, d = i % HD;
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < NW; ++w) s += red_s[w][h][d];
            out[i] = E::from_f(s / l_s[h]);
        }
    } else {
        for (int i = tid; i < GH * HD; i += NT) {
            const int h = i / HD, d = i % HD;
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < NW; ++w) s += red_s[w][h][d];
            const size_t slot = ((size_t)seq * p.num_heads + head0 + h) * p.max_parts + part;
            p.part_acc[slot * HD + d] = s;
            if (d == 0) {
                p.part_ml[2 * slot] = m_s[h];
                p.part_ml[2 * slot + 1] = l_s[h];
            }
        }
    }
}

// Merges the partitions of each (sequence, head) with more than one, in partition order.
// Grid (num_heads, num_seqs), HD threads.
template <typename T, int HD>
__device__ __forceinline__ void paged_attn_reduce(const AttnParams& p) {
    using E = Elem<T>;
    const int head = blockIdx.x, seq = blockIdx.y, d = threadIdx.x;
    const int ctx = (int)p.context_lens[seq];
    const int num_parts = (ctx + p.part - 1) / p.part;
    if (num_parts <= 1) return;
    const size_t base = ((size_t)seq * p.num_heads + head) * p.max_parts;
    const float* ml = p.part_ml + 2 * base;
    float m = -__int_as_float(0x7f800000);
    for (int i = 0; i < num_parts; ++i) m = fmaxf(m, ml[2 * i]);
    float l = 0.f, acc = 0.f;
    for (int i = 0; i < num_parts; ++i) {
        const float w = exp2f(ml[2 * i] - m);
        l = fmaf(w, ml[2 * i + 1], l);
        acc = fmaf(w, p.part_acc[(base + i) * HD + d], acc);
    }
    T* out = reinterpret_cast<T*>(p.out);
    out[((size_t)seq * p.num_heads + head) * HD + d] = E::from_f(acc / l);
}

}  // namespace

#define ATTN(NAME, T, HD, GH)                                                             \
    extern "C" __global__ void __launch_bounds__(NT) paged_attn_##NAME##_hd##HD##_g##GH( \
        const AttnParams p) {                                                             \
        paged_attn<T, HD, GH>(p);                                                         \
    }
#define ATTN_GROUPS(NAME, T, HD) \
    ATTN(NAME, T, HD, 1)         \
    ATTN(NAME, T, HD, 2)         \
    ATTN(NAME, T, HD, 3)         \
    ATTN(NAME, T, HD, 4)         \
    ATTN(NAME, T, HD, 5)         \
    ATTN(NAME, T, HD, 6)         \
    ATTN(NAME, T, HD, 7)         \
    ATTN(NAME, T, HD, 8)         \
    extern "C" __global__ void paged_attn_reduce_##NAME##_hd##HD(const AttnParams p) { \
        paged_attn_reduce<T, HD>(p);                                                    \
    }

ATTN_GROUPS(f32, float, 64)
ATTN_GROUPS(f32, float, 128)
ATTN_GROUPS(bf16, __nv_bfloat16, 64)
ATTN_GROUPS(bf16, __nv_bfloat16, 128)
ATTN_GROUPS(f16, __half, 64)
ATTN_GROUPS(f16, __half, 128)
