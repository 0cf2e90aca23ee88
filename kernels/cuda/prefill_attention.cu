// Causal prefill attention over the paged KV cache, flash style (kernels/src/attention/prefill.rs,
// design in kernels/NOTES.md "Prefill attention").
//
// A prompt chunk of `len` tokens at positions start..start+len attends to its sequence's
// cached positions 0..start+len (the chunk's own keys and values are already in the pool:
// rope_store_kv writes them before attention), each row causally. Several chunks of
// different sequences and lengths go in one launch.
//
// Grid: x = work tile, y = key/value head. A tile is BM = 64 "rows" of one chunk, where row
// m stands for (token m / group, query head kv_head * group + m % group): the group's query
// heads share the tile, so each key/value tile is read once for all of them (GQA). A block of
// 4 warps, 16 rows each, walks the keys in tiles of BN = 64 positions:
//   S = Q K^T with mma.sync m16n8k16 (bf16 or f16 in, f32 accumulate), the causal mask,
//   online softmax in the log2 domain (running max and sum per row, the accumulator rescaled),
//   O += P V with P rounded to the input type.
// Q is staged once through shared memory into registers; K and V tiles come through
// cp.async (16-byte copies, zero-filled past the block's last position, so nothing outside a
// context is read and no garbage reaches an exp), K(j+1) in flight during P V(j), V(j) during
// S(j). Shared rows are padded by 16 bytes, so ldmatrix's 8 row addresses fall in distinct
// banks. Results depend on the chunk alone (its tiles, its key order), never on the batch.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

constexpr int NW = 4;
constexpr int NT = NW * 32;
constexpr int BM = NW * 16;
constexpr int BN = 64;

struct Chunk {
    uint32_t q_row;      // first row of the chunk in q
    uint32_t out_row;    // first row of the chunk in out
    uint32_t len;        // tokens
    uint32_t start;      // cached positions before the chunk
    uint32_t table_off;  // offset of the chunk's block table in `tables`
    uint32_t pad[3];
};

struct PrefillParams {
    const void* q;            // [rows, q_stride] (query head h at columns h * HD ..)
    const void* k_cache;      // [num_blocks * block_size, num_kv_heads * HD]
    const void* v_cache;
    const uint32_t* tables;   // block tables, each chunk's at its table_off
    const Chunk* chunks;
    const uint2* tiles;       // (chunk, first row of the tile)
    void* out;                // [out rows, num_heads * HD]
    float scale_log2;         // softmax scale * log2(e)
    int q_stride;             // elements between q rows
    int num_heads;
    int num_kv_heads;
    int log2_block;
};

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
    __device__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ static uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};
template <> struct Mma<__half> {
    __device__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ static uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared; zero-filled (nothing read) when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

template <typename T, int HD>
__device__ __forceinline__ void prefill_attn(const PrefillParams& p) {
    constexpr int LD = HD + 8;           // padded shared row (elements)
    constexpr int VECS = HD / 8;         // 16-byte vectors per row
    constexpr int KSTEPS = HD / 16;      // k-steps of S = Q K^T
    constexpr int DTILES = HD / 8;       // n-tiles of O
    constexpr int NTILES = BN / 8;       // n-tiles of S
    __shared__ __align__(16) T sk[BN * LD];
    __shared__ __align__(16) T sv[BN * LD];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t4 = lane % 4;
    const uint2 tile = p.tiles[blockIdx.x];
    const Chunk c = p.chunks[tile.x];
    const int kvh = blockIdx.y;
    const int group = p.num_heads / p.num_kv_heads;
    const int rows = static_cast<int>(c.len) * group;
    const int m0 = static_cast<int>(tile.y);
    const int start = static_cast<int>(c.start);
    // Keys the tile reads: up to its last valid row's position.
    const int last_row = min(m0 + BM, rows) - 1;
    const int kv_len = start + last_row / group + 1;
    const int key_tiles = (kv_len + BN - 1) / BN;
    const size_t kv_stride = static_cast<size_t>(p.num_kv_heads) * HD;
    const T* kc = static_cast<const T*>(p.k_cache) + static_cast<size_t>(kvh) * HD;
    const T* vc = static_cast<const T*>(p.v_cache) + static_cast<size_t>(kvh) * HD;
    const uint32_t* table = p.tables + c.table_off;
    const int block_mask = (1 << p.log2_block) - 1;

    // Q tile into sv (rows past the chunk zero-filled).
    const T* q = static_cast<const T*>(p.q);
#pragma unroll
    for (int i = tid; i < BM * VECS; i += NT) {
        const int r = i / VECS, v = i % VECS;
        const int m = m0 + r;
        const bool valid = m < rows;
        const int tok = valid ? m / group : 0;
        const int head = kvh * group + (valid ? m % group : 0);
        const T* src = q + static_cast<size_t>(c.q_row + tok) * p.q_stride + head * HD + v * 8;
        cp_async16(&sv[r * LD + v * 8], valid ? src : q, valid);
    }
    cp_commit();
    auto load_kv = [&](T* dst, const T* base, int kt) {
#pragma unroll
        for (int i = tid; i < BN * VECS; i += NT) {
            const int r = i / VECS, v = i % VECS;
            const int pos = kt * BN + r;
            const bool valid = pos < kv_len;
            const T* src = base;
            if (valid) {
                const size_t slot = (static_cast<size_t>(table[pos >> p.log2_block]) << p.log2_block) |
                                    static_cast<size_t>(pos & block_mask);
                src = base + slot * kv_stride + v * 8;
            }
            cp_async16(&dst[r * LD + v * 8], src, valid);
        }
    };
    load_kv(sk, kc, 0);
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    uint32_t qf[KSTEPS][4];
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        ldmatrix_x4(qf[ks], &sv[(warp * 16 + lane % 16) * LD + ks * 16 + (lane / 16) * 8]);
    }

    // This thread's two rows (g and g + 8 of the warp's 16): the last key each may see.
    int lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int m = m0 + warp * 16 + g + h * 8;
        lim[h] = m < rows ? start + m / group : start + static_cast<int>(c.len) - 1;
    }
    float o[DTILES][4];
#pragma unroll
    for (int d = 0; d < DTILES; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};

    for (int kt = 0; kt < key_tiles; ++kt) {
        cp_wait<0>();
        __syncthreads();  // K(kt) visible; every warp is done with sv (Q or V(kt-1))
        load_kv(sv, vc, kt);
        cp_commit();

        float s[NTILES][4];
#pragma unroll
        for (int n = 0; n < NTILES; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
#pragma unroll
            for (int n = 0; n < NTILES; n += 2) {
                uint32_t b[4];
                const int key = n * 8 + (lane % 8) + (lane / 16) * 8;
                ldmatrix_x4(b, &sk[key * LD + ks * 16 + ((lane / 8) % 2) * 8]);
                Mma<T>::run(s[n], qf[ks], b[0], b[1]);
                Mma<T>::run(s[n + 1], qf[ks], b[2], b[3]);
            }
        }
        // Scale, mask and the running max.
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < NTILES; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int h = e / 2;
                const int key = kt * BN + n * 8 + t4 * 2 + (e % 2);
                const float x = key <= lim[h] ? s[n][e] * p.scale_log2 : -INFINITY;
                s[n][e] = x;
                tile_max[h] = fmaxf(tile_max[h], x);
            }
        }
        float alpha[2], base[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
            const float m_new = fmaxf(row_max[h], tile_max[h]);
            // A row with every key so far masked keeps -inf: subtract 0 instead (all its
            // exponentials are then exp2(-inf) = 0).
            base[h] = m_new == -INFINITY ? 0.f : m_new;
            alpha[h] = exp2f(row_max[h] - base[h]);
            row_max[h] = m_new;
            row_sum[h] *= alpha[h];
        }
#pragma unroll
        for (int d = 0; d < DTILES; ++d) {
            o[d][0] *= alpha[0];
            o[d][1] *= alpha[0];
            o[d][2] *= alpha[1];
            o[d][3] *= alpha[1];
        }
        uint32_t pf[BN / 16][4];
#pragma unroll
        for (int n = 0; n < NTILES; ++n) {
            const float p0 = exp2f(s[n][0] - base[0]), p1 = exp2f(s[n][1] - base[0]);
            const float p2 = exp2f(s[n][2] - base[1]), p3 = exp2f(s[n][3] - base[1]);
            row_sum[0] += p0 + p1;
            row_sum[1] += p2 + p3;
            // S n-tiles 2k and 2k+1 are the A fragment of P V's k-step k.
            pf[n / 2][(n % 2) * 2 + 0] = Mma<T>::pack(p0, p1);
            pf[n / 2][(n % 2) * 2 + 1] = Mma<T>::pack(p2, p3);
        }

        cp_wait<0>();
        __syncthreads();  // V(kt) visible; every warp is done with sk
        if (kt + 1 < key_tiles) {
            load_kv(sk, kc, kt + 1);
            cp_commit();
        }
#pragma unroll
        for (int ks = 0; ks < BN / 16; ++ks) {
#pragma unroll
            for (int d = 0; d < DTILES; d += 2) {
                uint32_t b[4];
                const int key = ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                ldmatrix_x4_trans(b, &sv[key * LD + d * 8 + (lane / 16) * 8]);
                Mma<T>::run(o[d], pf[ks], b[0], b[1]);
                Mma<T>::run(o[d + 1], pf[ks], b[2], b[3]);
            }
        }
    }

    // Normalise and store this thread's rows.
    T* out = static_cast<T*>(p.out);
    const size_t out_stride = static_cast<size_t>(p.num_heads) * HD;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float sum = row_sum[h];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv = 1.f / sum;
        const int m = m0 + warp * 16 + g + h * 8;
        if (m >= rows) continue;
        const int tok = m / group, head = kvh * group + m % group;
        T* dst = out + static_cast<size_t>(c.out_row + tok) * out_stride + head * HD + t4 * 2;
#pragma unroll
        for (int d = 0; d < DTILES; ++d) {
            *reinterpret_cast<uint32_t*>(dst + d * 8) =
                Mma<T>::pack(o[d][h * 2] * inv, o[d][h * 2 + 1] * inv);
        }
    }
}

}  // namespace

#define PREFILL_KERNEL(NAME, T, HD)                                                  \
    extern "C" __global__ void __launch_bounds__(NT) NAME(const __grid_constant__ PrefillParams p) { \
        prefill_attn<T, HD>(p);                                                      \
    }

PREFILL_KERNEL(prefill_attn_bf16_hd64, __nv_bfloat16, 64)
PREFILL_KERNEL(prefill_attn_bf16_hd128, __nv_bfloat16, 128)
PREFILL_KERNEL(prefill_attn_f16_hd64, __half, 64)
PREFILL_KERNEL(prefill_attn_f16_hd128, __half, 128)
