// SGMV v3: shrink and expand of a whole batch in one launch (bf16 / f16, ranks <= 128).
//
// Work unit: a tile = up to 16 * MT tokens of one segment. Each tile is one cluster of
// CLUSTER blocks (thread block clusters, sm_90):
//   shrink  v_part = x[tile rows, k slice] @ lora_A[:, k slice]^T   (each block a k slice)
//   reduce  v = sum of the blocks' partials, read through distributed shared memory, in
//           block order, then rounded to T (as a framework's bf16 x @ A would be)
//   expand  y[tile rows, n slice] += scale * v @ lora_B[n slice, :]^T (each block an n slice)
// so the tile's v never leaves the chip, and neither a second launch nor a global
// reduction is needed.
//
// Loads: every operand element is fetched by the thread that feeds it to the tensor cores
// (mma.sync m16n8k16, f32 accumulate), 16 bytes at a time, through a per-thread ring of
// NS shared-memory slots filled with cp.async: a thread's loads form one sequence (its
// shrink chunks, then its expand column groups), issued up to NS slots ahead of use, so the
// lora_B and y loads of the expand are in flight while the shrink and the reduction run.
// A slot is written and read by the same thread: no barrier inside the loops.
//
// 16-byte loads give each thread 8 consecutive k; the mma's k order is permuted to match
// (thread t holds physical k 8t..8t+7 of a 32-wide chunk: the first mma takes 8t..8t+3 as its
// k slots {2t, 2t+1, 2t+8, 2t+9}, the second 8t+4..8t+7), the same permutation on both
// operands, so the products summed are the right ones. Likewise the expand's output columns
// are permuted inside each 32-column group so that a thread ends with 8 consecutive columns
// of a row (one 16-byte read-modify-write of y).
//
// Determinism and batch invariance: the d_in split (which k chunks a warp sums, in which
// order; how warps and blocks are combined) depends on d_in and the segment's rank alone,
// and each token row of a tile is computed independently of the others (mma rows), so a
// request gets the same bits whatever the batch around it and whatever the tile size.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

constexpr int CLUSTER = 8;   // blocks per tile (cluster size; fixed: the d_in split uses it)
constexpr int WARPS = 8;
constexpr int THREADS = 32 * WARPS;
constexpr int NTW = 4;       // rank tiles of 8 per shrink warp
constexpr int PLD = 128;     // row stride (floats) of a block's partial v
constexpr int VLD = 160;     // row stride (elements) of the rounded v: 16-byte reads spread over banks

// Per tile, 32 bytes: slot, rank, scale (f32 bits), start, end (sorted positions), padding.
struct Params {
    const void* x;                    // [num_rows, d_in]
    void* y;                          // [num_rows, d_out]
    float* v;                         // [num_tokens, width]: output (mode 1) or input (mode 2)
    const unsigned long long* table;  // [slots][2]: lora_A, lora_B
    const unsigned int* rows;         // [num_tokens]: batch row of each sorted position
    const uint4* tiles;               // [num_tiles][2]
    int d_in, d_out, width;
    int mode;   // 0: lora_delta (fused), 1: shrink only (v out, f32), 2: expand only (v in)
    int flags;  // 1: x rows 16-byte loadable; 2: every lora_A row; 4: every lora_B start; 8: y rows
};

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

// Both k halves of a 32-wide chunk: a_lo / a_hi are the A operand's rows g and g + 8.
template <typename T>
__device__ __forceinline__ void mma_chunk(float (&d)[4], uint4 a_lo, uint4 a_hi, uint4 b) {
    mma16816<T>(d, a_lo.x, a_hi.x, a_lo.y, a_hi.y, b.x, b.y);
    mma16816<T>(d, a_lo.z, a_hi.z, a_lo.w, a_hi.w, b.z, b.w);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most n of this thread's cp.async groups are pending (n < 24).
__device__ __forceinline__ void cp_async_wait(int n) {
#define SGMV_WAIT(N) \
    case N: asm volatile("cp.async.wait_group " #N ";\n" ::: "memory"); break;
    switch (n) {
        SGMV_WAIT(0) SGMV_WAIT(1) SGMV_WAIT(2) SGMV_WAIT(3) SGMV_WAIT(4) SGMV_WAIT(5) SGMV_WAIT(6)
        SGMV_WAIT(7) SGMV_WAIT(8) SGMV_WAIT(9) SGMV_WAIT(10) SGMV_WAIT(11) SGMV_WAIT(12)
        SGMV_WAIT(13) SGMV_WAIT(14) SGMV_WAIT(15) SGMV_WAIT(16) SGMV_WAIT(17) SGMV_WAIT(18)
        SGMV_WAIT(19) SGMV_WAIT(20) SGMV_WAIT(21) SGMV_WAIT(22)
        default: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    }
#undef SGMV_WAIT
}

__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
// The address of `p` (this block's shared memory) in block `rank` of the cluster.
__device__ __forceinline__ const float* cluster_map(const float* p, unsigned rank) {
    uint64_t out;
    asm volatile("mapa.u64 %0, %1, %2;\n" : "=l"(out) : "l"(p), "r"(rank));
    return reinterpret_cast<const float*>(out);
}

template <int MT> struct Layout {
    static constexpr int NS = MT == 1 ? 20 : 16;                  // ring slots per thread
    static constexpr int RING = NS * THREADS * 16;
    static constexpr int WPART = WARPS * MT * NTW * 32 * 16;      // warps' partials (float4 each)
    static constexpr int PART = 16 * MT * PLD * 4;                // the block's partial v
    static constexpr int BYTES = RING + WPART + PART;
    static_assert(16 * MT * VLD * 2 <= WPART, "rounded v fits where the warps' partials were");
};

// A thread's load sequence: its shrink chunks (4 lora_A rows, then 2 MT x rows, each 8 k),
// then its expand groups (4 nq lora_B slices, then 2 MT y rows, each 8 elements).
template <typename T, int MT> struct Loader {
    uint4* ring;
    int issued, total;
    // shrink
    const T* a_rows;     // lora_A row 8 * (first rank tile) + g
    const T* x_rows[2 * MT];
    int k, k_end, d_in, a_left;  // a_left: rank rows left from this thread's first tile
    int n_s, ls;
    // expand
    const T* b;
    T* y_rows[2 * MT];
    int col, col_step, d_out, rank, nq, le;
    bool m_ok[2 * MT];
    bool vec_x, vec_a, vec_b, vec_y;
    // position
    int phase, sub, chunk;

    __device__ __forceinline__ void put(uint4* slot, const T* src, int n, bool vec) {
        if (n >= 8 && vec) {
            cp_async16(slot, src);
        } else {
            __align__(16) T tmp[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) tmp[e] = e < n ? src[e] : from_f<T>(0.f);
            *slot = *reinterpret_cast<uint4*>(tmp);
        }
    }

    __device__ __forceinline__ void issue_one() {
        uint4* slot = ring + (issued % Layout<MT>::NS) * THREADS + threadIdx.x;
        const T* src = nullptr;
        int n = 0;
        bool vec = false;
        if (phase == 0) {
            const int kn = min(8, k_end - k);
            if (sub < NTW) {
                if (sub * 8 < a_left) src = a_rows + (size_t)sub * 8 * d_in;
                vec = vec_a;
            } else {
                const int r = sub - NTW;
#pragma unroll
                for (int i = 0; i < 2 * MT; ++i)
                    if (i == r && m_ok[i]) src = x_rows[i];
                vec = vec_x;
            }
            n = kn;
            if (src) src += k;
            if (++sub == ls) {
                sub = 0;
                k += 32;
                if (++chunk == n_s) phase = 1, chunk = 0;
            }
        } else {
            if (sub < 4 * nq) {
                const int j = sub & 3, q = sub >> 2;
                const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
                const int nn = col - 8 * t + 8 * (g / 2) + 2 * j + (g % 2);  // this group's column P(j, g)
                const int kk = 32 * q + 8 * t;
                if (nn < d_out && kk < rank) {
                    src = b + (size_t)nn * rank + kk;
                    n = rank - kk;
                }
                vec = vec_b;
            } else {
                const int r = sub - 4 * nq;
#pragma unroll
                for (int i = 0; i < 2 * MT; ++i)
                    if (i == r && m_ok[i]) src = y_rows[i];
                if (src) {
                    src += col;
                    n = d_out - col;
                }
                vec = vec_y;
            }
            if (++sub == le) {
                sub = 0;
                col += col_step;
            }
        }
        if (src && n > 0) {
            put(slot, src, n, vec);
        } else {
            *slot = make_uint4(0, 0, 0, 0);
        }
        cp_async_commit();
        ++issued;
    }

    // Issues loads until `limit` (exclusive) or the end of the sequence.
    __device__ __forceinline__ void issue_until(int limit) {
        limit = min(limit, total);
        while (issued < limit) issue_one();
    }

    // Waits for item `last` and everything before it.
    __device__ __forceinline__ void wait_for(int last) { cp_async_wait(issued - last - 1); }

    __device__ __forceinline__ uint4 slot(int item) const {
        return ring[(item % Layout<MT>::NS) * THREADS + threadIdx.x];
    }
};

template <typename T, int MT>
__device__ void sgmv_v3(const Params& p) {
    using L = Layout<MT>;
    extern __shared__ __align__(16) unsigned char smem[];
    uint4* ring = reinterpret_cast<uint4*>(smem);
    float4* wpart = reinterpret_cast<float4*>(smem + L::RING);
    T* vsm = reinterpret_cast<T*>(smem + L::RING);  // after the partials are summed
    float* part = reinterpret_cast<float*>(smem + L::RING + L::WPART);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int crank = cluster_rank();
    const int tile = blockIdx.x / CLUSTER;
    const uint4 rec = p.tiles[2 * tile];
    const int rank = rec.y, start = rec.w;
    const float scale = __uint_as_float(rec.z);
    const int mrows = p.tiles[2 * tile + 1].x - start;
    const ulonglong2 w = reinterpret_cast<const ulonglong2*>(p.table)[rec.x];
    const T* a = reinterpret_cast<const T*>(w.x);
    const T* b = reinterpret_cast<const T*>(w.y);
    const int d_in = p.d_in, d_out = p.d_out;
    const int nt = (rank + 7) / 8, nq = (rank + 31) / 32;

    Loader<T, MT> ld;
    ld.ring = ring;
    ld.issued = 0;
    ld.d_in = d_in;
    ld.d_out = d_out;
    ld.rank = rank;
    ld.nq = nq;
#pragma unroll
    for (int i = 0; i < 2 * MT; ++i) {
        const int m = 8 * i + g;  // rows g, g + 8 of m tile i / 2
        ld.m_ok[i] = m < mrows;
        const size_t row = ld.m_ok[i] ? p.rows[start + m] : 0;
        ld.x_rows[i] = static_cast<const T*>(p.x) + row * d_in;
        ld.y_rows[i] = static_cast<T*>(p.y) + row * d_out;
    }

    // Shrink split (a function of d_in and rank only): the rank tiles in NG groups of up to
    // NTW, each group's d_in cut into CLUSTER * KS contiguous runs of 32-wide chunks; warp
    // (group, kk) of block c sums run c * KS + kk.
    const int ng = nt <= NTW ? 1 : nt <= 2 * NTW ? 2 : 4;
    const int ks = WARPS / ng;
    const int grp = warp / ks, kk = warp % ks;
    const int nchunks = (d_in + 31) / 32;
    const int workers = CLUSTER * ks;
    const int per = (nchunks + workers - 1) / workers;
    const int c0 = min(nchunks, (crank * ks + kk) * per);
    const int n_s = p.mode == 2 ? 0 : min(nchunks, c0 + per) - c0;
    ld.a_rows = a + (size_t)(8 * NTW * grp + g) * d_in;
    ld.a_left = rank - (8 * NTW * grp + g);
    ld.k = 32 * c0 + 8 * t;
    ld.k_end = d_in;
    ld.n_s = n_s;
    ld.ls = NTW + 2 * MT;
    ld.vec_x = p.flags & 1;
    ld.vec_a = p.flags & 2;

    // Expand split (free to choose: each output element is one mma chain): 32-column groups,
    // a contiguous run of them per block, dealt round-robin to its warps.
    const int ngroups = (d_out + 31) / 32;
    const int gper = (ngroups + CLUSTER - 1) / CLUSTER;
    const int gfirst = min(ngroups, crank * gper + warp), gend = min(ngroups, (crank + 1) * gper);
    const int n_e = p.mode == 1 ? 0 : (gfirst < gend ? (gend - gfirst + WARPS - 1) / WARPS : 0);
    ld.b = b;
    ld.col = 32 * gfirst + 8 * t;
    ld.col_step = 32 * WARPS;
    ld.le = 4 * nq + 2 * MT;
    ld.vec_b = (p.flags & 4) && rank % 8 == 0;
    ld.vec_y = p.flags & 8;

    ld.total = n_s * ld.ls + n_e * ld.le;
    ld.phase = n_s > 0 ? 0 : 1;
    ld.sub = 0;
    ld.chunk = 0;
    ld.issue_until(L::NS);

    // ---- shrink: this warp's k run for its rank tiles
    float acc[MT][NTW][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NTW; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
    for (int c = 0; c < n_s; ++c) {
        const int base = c * ld.ls;
        ld.wait_for(base + ld.ls - 1);
        uint4 xs[2 * MT], as[NTW];
#pragma unroll
        for (int j = 0; j < NTW; ++j) as[j] = ld.slot(base + j);
#pragma unroll
        for (int i = 0; i < 2 * MT; ++i) xs[i] = ld.slot(base + NTW + i);
#pragma unroll
        for (int j = 0; j < NTW; ++j)
            if (NTW * grp + j < nt)
#pragma unroll
                for (int i = 0; i < MT; ++i) mma_chunk<T>(acc[i][j], xs[2 * i], xs[2 * i + 1], as[j]);
        ld.issue_until(base + ld.ls + L::NS);
    }

    // ---- reduce: warps of a group in kk order, then blocks in cluster-rank order
    if (p.mode != 2) {
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NTW; ++j)
                wpart[((warp * MT + i) * NTW + j) * 32 + lane] =
                    make_float4(acc[i][j][0], acc[i][j][1], acc[i][j][2], acc[i][j][3]);
        __syncthreads();
        for (int idx = tid; idx < MT * nt * 32; idx += THREADS) {
            const int l = idx % 32, ij = idx / 32, i = ij / nt, j = ij % nt;
            const int gw = j / NTW, jj = j % NTW;
            float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int q = 0; q < ks; ++q) {
                const float4 pq = wpart[(((gw * ks + q) * MT + i) * NTW + jj) * 32 + l];
                s.x += pq.x, s.y += pq.y, s.z += pq.z, s.w += pq.w;
            }
            const int m = 16 * i + l / 4, n = 8 * j + 2 * (l % 4);
            part[m * PLD + n] = s.x;
            part[m * PLD + n + 1] = s.y;
            part[(m + 8) * PLD + n] = s.z;
            part[(m + 8) * PLD + n + 1] = s.w;
        }
    }
    cluster_arrive();
    cluster_wait();  // every block's partial is written

    const int vcols = 32 * nq;
    if (p.mode == 1) {
        // shrink alone: block 0 writes v in f32 (zero beyond the rank)
        if (crank == 0) {
            const float* parts[CLUSTER];
#pragma unroll
            for (int c = 0; c < CLUSTER; ++c) parts[c] = cluster_map(part, c);
            for (int e = tid; e < mrows * p.width; e += THREADS) {
                const int m = e / p.width, n = e % p.width;
                float s = 0.f;
                if (n < rank) {
                    float pc[CLUSTER];
#pragma unroll
                    for (int c = 0; c < CLUSTER; ++c) pc[c] = parts[c][m * PLD + n];
#pragma unroll
                    for (int c = 0; c < CLUSTER; ++c) s += pc[c];
                }
                p.v[(size_t)(start + m) * p.width + n] = s;
            }
        }
    } else {
        const float* parts[CLUSTER];
#pragma unroll
        for (int c = 0; c < CLUSTER; ++c) parts[c] = cluster_map(part, c);
        for (int e = tid; e < 16 * MT * vcols; e += THREADS) {
            const int m = e / vcols, n = e % vcols;
            float s = 0.f;
            if (m < mrows && n < rank) {
                if (p.mode == 2) {
                    s = p.v[(size_t)(start + m) * p.width + n];
                } else {
                    float pc[CLUSTER];
#pragma unroll
                    for (int c = 0; c < CLUSTER; ++c) pc[c] = parts[c][m * PLD + n];
#pragma unroll
                    for (int c = 0; c < CLUSTER; ++c) s += pc[c];
                }
            }
            vsm[m * VLD + n] = from_f<T>(s);
        }
    }
    cluster_arrive();  // done reading the other blocks' shared memory
    __syncthreads();

    // ---- expand: this warp's 32-column groups
    for (int ge = 0; ge < n_e; ++ge) {
        const int base = n_s * ld.ls + ge * ld.le;
        ld.wait_for(base + ld.le - 1);
        const int col = 32 * (gfirst + WARPS * ge) + 8 * t;
        float o[MT][4][4];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) o[i][j][e] = 0.f;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            if (q >= nq) break;
            uint4 vl[MT], vh[MT];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                vl[i] = *reinterpret_cast<const uint4*>(&vsm[(16 * i + g) * VLD + 32 * q + 8 * t]);
                vh[i] = *reinterpret_cast<const uint4*>(&vsm[(16 * i + g + 8) * VLD + 32 * q + 8 * t]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const uint4 bq = ld.slot(base + 4 * q + j);
#pragma unroll
                for (int i = 0; i < MT; ++i) mma_chunk<T>(o[i][j], vl[i], vh[i], bq);
            }
        }
#pragma unroll
        for (int r = 0; r < 2 * MT; ++r) {
            if (!ld.m_ok[r] || col >= d_out) continue;
            const uint4 old = ld.slot(base + 4 * nq + r);
            const T* ov = reinterpret_cast<const T*>(&old);
            __align__(16) T nv[8];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    nv[2 * j + e] = from_f<T>(to_f<T>(ov[2 * j + e]) + scale * o[r / 2][j][2 * (r % 2) + e]);
            T* dst = ld.y_rows[r] + col;
            if (ld.vec_y && col + 8 <= d_out) {
                *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(nv);
            } else {
                for (int e = 0; e < 8 && col + e < d_out; ++e) dst[e] = nv[e];
            }
        }
        ld.issue_until(base + ld.le + L::NS);
    }
    cluster_wait();  // no block leaves while another may still read its partial
}

#define SGMV_V3(NAME, T, MT)                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS, 2) sgmv_v3_##NAME##_mt##MT(Params p) { \
        sgmv_v3<T, MT>(p);                                                                     \
    }
SGMV_V3(bf16, __nv_bfloat16, 1)
SGMV_V3(bf16, __nv_bfloat16, 2)
SGMV_V3(f16, __half, 1)
SGMV_V3(f16, __half, 2)
