// SGMV fused: shrink and expand of a whole batch in one launch (bf16 / f16, ranks <= 128).
//
// Work unit: a tile = up to 16 * MT tokens of one segment (MT = 1 in the kernels built).
// d_in is cut into CLUSTER "leaves"; a tile's blocks share them out:
//   shrink  v_part = x[tile rows, leaf's k] @ lora_A[:, leaf's k]^T   (per leaf)
//   reduce  v = the leaves' partials summed in a fixed binary tree, across blocks through
//           distributed shared memory (thread-block clusters, sm_90), then rounded to T (as
//           a framework's bf16 x @ A would be)
//   expand  y[tile rows, n slice] += scale * v @ lora_B[n slice, :]^T (each block an n slice)
// so the tile's v never leaves the chip, and neither a second launch nor a global
// reduction is needed. Three variants, chosen per launch by the host from the number of
// tiles: "cluster" (8 blocks of one leaf each), "pair" (4 blocks of two leaves, ranks <= 64)
// and "solo" (one block, one leaf per warp), so that few tiles spread over many SMs and
// many tiles do not wait for rounds of clusters.
//
// Loads: every operand element is fetched by the thread that feeds it to the tensor cores
// (mma.sync m16n8k16, f32 accumulate), 16 bytes at a time, through a per-thread ring of
// shared-memory slots filled with cp.async. A thread's loads come in units of one commit
// group each (a 32-wide k chunk of the shrink: 4 lora_A rows and 2 MT x rows; 32 ranks of a
// 32-column group of the expand: 4 lora_B slices, and 2 MT y rows with a group's last unit),
// issued up to S units ahead of use, so the lora_B and y loads of the expand are in flight
// while the shrink, the reduction and the cluster barrier run. A slot is written and read
// by the same thread: no barrier inside the loops.
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
// request gets the same bits whatever the batch around it and whatever the variant.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

constexpr int CLUSTER = 8;   // blocks per tile (cluster size; fixed: the d_in split uses it)
constexpr int WARPS = 8;
constexpr int THREADS = 32 * WARPS;
constexpr int NTW = 4;       // rank tiles of 8 per shrink warp
constexpr int VLD = 160;     // row stride (elements) of the rounded v: 16-byte reads spread over banks

// Per tile, 32 bytes: slot, rank, scale (f32 bits), start, end (sorted positions), padding;
// start == end: an empty tile, which does nothing.
// MT = 1: 16-token tiles, 2 blocks per SM (MT = 4, 64-token tiles at 1 block per SM, is
// supported by the code but not built: see the kernels at the end).
struct Params {
    const void* x;                    // [num_rows, d_in]
    void* y;                          // [num_rows, d_out], rows ldy elements apart
    float* v;                         // [num_tokens, width]: output (mode 1) or input (mode 2)
    const unsigned long long* table;  // [slots][2]: lora_A, lora_B
    const unsigned int* rows;         // [num_tokens]: batch row of each sorted position
    const uint4* tiles;               // [num_tiles][2]
    int d_in, d_out, width;
    int mode;   // 0: lora_delta (fused), 1: shrink only (v out, f32), 2: expand only (v in)
    int flags;  // 1: x rows 16-byte loadable; 2: every lora_A row; 4: every lora_B start; 8: y rows
    int ldy;    // y's row stride (d_out, or more when y is some columns of a wider output)
    int col_blocks;  // "cols" kernels (expand alone, mode 2): blocks per tile, each a column run
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

// Waits until at most n (0..3) of this thread's cp.async groups are pending.
__device__ __forceinline__ void cp_async_wait(int n) {
    switch (n) {
        case 3: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
        case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
        case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
        default: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    }
}

// Programmatic dependent launch (sm_90): a shrink lets the expand launched behind it start
// (which then streams lora_B and y while the shrink runs); the expand waits for the shrink's
// v before reading it. Both are no-ops in launches without such a dependency.
__device__ __forceinline__ void launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
__device__ __forceinline__ void wait_prerequisites() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

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

// Shared memory of the kernel for tiles of 16 * MT tokens.
template <int MT> struct Layout {
    static constexpr int U = NTW + 2 * MT;        // ring slots per load unit (per thread)
    static constexpr int S = MT == 1 ? 4 : 3;      // units in flight
    static constexpr int NG_MAX = MT == 1 ? 4 : 2; // rank groups: ranks <= 128 (MT 1), <= 64 (MT 4)
    static constexpr int RING = S * U * THREADS * 16;
    static constexpr int RED = NG_MAX * MT * NTW * 32 * 16;  // a group's partial, fragment layout
    static constexpr int VSM = 16 * MT * VLD * 2;
    static constexpr int BYTES = RING + RED + VSM;
};

__device__ __forceinline__ void zero16(uint4* slot) { *slot = make_uint4(0, 0, 0, 0); }

// 8 elements from src (n of them valid, the rest zero) into a ring slot: one cp.async when
// the 16 bytes are whole and aligned, else element by element.
template <typename T>
__device__ __forceinline__ void fetch8(uint4* slot, const T* src, int n, bool vec) {
    if (n >= 8 && vec) {
        cp_async16(slot, src);
    } else if (n <= 0) {
        zero16(slot);
    } else {
        __align__(16) T tmp[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) tmp[e] = e < n ? src[e] : from_f<T>(0.f);
        *slot = *reinterpret_cast<uint4*>(tmp);
    }
}

// Sums the warps' shrink partials (fragment layout) into the block's partial.
// Element (m, n) of group g's partial: see `red_index`.
__device__ __forceinline__ int red_index(int m, int n, int mt) {
    const int j = n / 8, grp = j / NTW, jj = j % NTW, i = m / 16, mm = m % 16;
    const int lane = 4 * (mm % 8) + (n % 8) / 2, reg = (n % 2) + 2 * (mm / 8);
    return ((((grp * mt + i) * NTW + jj) * 32 + lane) * 4) + reg;
}

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// One tile, whose d_in split has CLUSTER "leaves" (see below); each block takes LPB of them:
// LPB = 1: the tile is a cluster of CLUSTER blocks, block c summing leaf c;
// LPB = 2: a cluster of CLUSTER / 2 blocks, each summing two leaves with four warps each
//          (ranks <= 64), for batches of more tiles than clusters of 8 fit at once;
// LPB = 8 ("solo"): one block whose warp w sums leaf w, for many more tiles still.
// All sum the same runs in the same order and combine them in the same tree, so they give
// the same bits (module comment).
// LPB = 0 ("cols"): the expand alone (mode 2, v from a shrink launched just before), a tile
// spread over p.col_blocks blocks of one column run each, no cluster: for launches of few
// tiles, whose expand would otherwise stream all of lora_B through one cluster's 8 SMs. Each
// output element is the same mma chain as in the other variants, so the bits are too.
template <typename T, int MT, int LPB>
__device__ __forceinline__ void sgmv_fused(const Params& p, const int tile) {
    constexpr bool COLS = LPB == 0;
    constexpr bool SOLO = LPB == CLUSTER;
    constexpr int NBLK = COLS ? 1 : CLUSTER / LPB;  // blocks per tile (a cluster)
    static_assert(MT == 1 || LPB == 1, "64-token tiles come in clusters of 8");
    using L = Layout<MT>;
    extern __shared__ __align__(16) unsigned char smem[];
    uint4* ring = reinterpret_cast<uint4*>(smem);
    float4* red = reinterpret_cast<float4*>(smem + L::RING);
    T* vsm = reinterpret_cast<T*>(smem + L::RING + L::RED);

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int crank = COLS ? blockIdx.x % p.col_blocks : SOLO ? 0 : cluster_rank();
    const int nblk = COLS ? p.col_blocks : NBLK;  // blocks the expand's columns are dealt to
    if (p.mode == 1) launch_dependents();
    const uint4 rec = p.tiles[2 * tile];
    const int rank = rec.y, start = rec.w;
    const float scale = __uint_as_float(rec.z);
    const int mrows = p.tiles[2 * tile + 1].x - start;
    // An empty tile (start == end) pads a launch whose grid is fixed for a CUDA graph to
    // the most tiles its rows could make: every block of its cluster leaves here, before
    // any barrier and without reading its slot's weights.
    if (mrows <= 0) return;
    const ulonglong2 tab = reinterpret_cast<const ulonglong2*>(p.table)[rec.x];
    const T* a = reinterpret_cast<const T*>(tab.x);
    const T* b = reinterpret_cast<const T*>(tab.y);
    const int d_in = p.d_in, d_out = p.d_out;
    const int nt = (rank + 7) / 8, nq = (rank + 31) / 32;

    // This thread's token rows: 8 i + g (rows g and g + 8 of each 16-row m tile).
    const T* x_row[2 * MT];
    T* y_row[2 * MT];
    bool m_ok[2 * MT];
#pragma unroll
    for (int i = 0; i < 2 * MT; ++i) {
        const int m = 8 * i + g;
        m_ok[i] = m < mrows;
        const size_t row = m_ok[i] ? p.rows[start + m] : 0;
        x_row[i] = static_cast<const T*>(p.x) + row * d_in;
        y_row[i] = static_cast<T*>(p.y) + row * p.ldy;
    }

    // Shrink split (a function of d_in and rank only): the rank tiles in NG groups of up to
    // NTW, each group's d_in cut into CLUSTER * KS contiguous runs of 32-wide chunks, run
    // c * KS + kk belonging to leaf c; a leaf is summed over kk in order, the leaves in a
    // binary tree. LPB = 1: warp (group, kk) of block c sums run c * KS + kk of its group.
    // LPB = 2: warps 4 h .. 4 h + 3 of block c sum leaf 2 c + h, each two runs (kk, kk + 1)
    // of one group. LPB = 8: warp w sums every run of leaf w, group by group, kk ascending.
    // Each run is summed chunk by chunk in order.
    const int ng = nt <= NTW ? 1 : nt <= 2 * NTW ? 2 : 4;
    const int ks = WARPS / ng;
    const int wpg = 4 / ng;  // LPB = 2: warps per group of a leaf (ng <= 2)
    const int grp = LPB == 1 ? warp / ks : (warp % 4) / wpg;
    const int kk = LPB == 1 ? warp % ks : 2 * ((warp % 4) % wpg);  // the first run
    const int leaf = LPB == 1 ? crank : LPB == 2 ? 2 * crank + warp / 4 : warp;
    const int nchunks = (d_in + 31) / 32;
    const int per = (nchunks + CLUSTER * ks - 1) / (CLUSTER * ks);
    const int nruns = SOLO ? ng * ks : LPB;  // runs this warp sums
    auto run_group = [&](int j) { return SOLO ? j / ks : grp; };
    auto run_first = [&](int j) {
        const int ri = leaf * ks + (SOLO ? j % ks : kk + j);
        return min(nchunks, ri * per);
    };
    auto run_end = [&](int j) { return min(nchunks, run_first(j) + per); };
    int n_s = 0;
    if (p.mode != 2)
        for (int j = 0; j < nruns; ++j) n_s += run_end(j) - run_first(j);
    auto tiles_in = [&](int gr) { return max(0, min(NTW, nt - NTW * gr)); };  // rank tiles of a group
    const bool vec_x = p.flags & 1, vec_a = p.flags & 2;

    // Expand split (free: each output element is one mma chain): 32-column groups, a
    // contiguous run per block, dealt round-robin to its warps; each group in nq units of
    // 32 ranks.
    const int ngroups = (d_out + 31) / 32;
    const int gper = (ngroups + nblk - 1) / nblk;
    const int gfirst = min(ngroups, crank * gper + warp), gend = min(ngroups, (crank + 1) * gper);
    const int n_e = p.mode == 1 ? 0 : (gfirst < gend ? (gend - gfirst + WARPS - 1) / WARPS : 0);
    const bool vec_b = (p.flags & 4) && rank % 8 == 0, vec_y = p.flags & 8;
    // Column P(j, g) of a group (see the file comment): lora_B rows this thread loads.
    int pcol[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) pcol[j] = 8 * (g / 2) + 2 * j + (g % 2);

    const int total = n_s + n_e * nq;
    int issued = 0;
    int s_run = 0, s_chunk = run_first(0);  // the next shrink unit to issue
    int e_group = 0, e_q = 0;               // the next expand unit to issue
    auto issue = [&]() {
        uint4* st = ring + (issued % L::S) * L::U * THREADS + tid;
        if (issued < n_s) {
            while (s_chunk >= run_end(s_run)) s_chunk = run_first(++s_run);
            const int gr = run_group(s_run), row0 = 8 * NTW * gr + g;
            const int here = tiles_in(gr), a_rows_left = rank - row0;
            const T* a_row = a + (size_t)row0 * d_in;
            const int k = 32 * s_chunk + 8 * t;
            const int kn = d_in - k;
#pragma unroll
            for (int jj = 0; jj < NTW; ++jj)
                if (jj < here && 8 * jj < a_rows_left)
                    fetch8(st + jj * THREADS, a_row + (size_t)jj * 8 * d_in + k, kn, vec_a);
#pragma unroll
            for (int i = 0; i < 2 * MT; ++i)
                if (m_ok[i] || kn <= 0) fetch8(st + (NTW + i) * THREADS, x_row[i] + k, kn, vec_x);
            ++s_chunk;
        } else {
            const int col0 = 32 * (gfirst + WARPS * e_group);
            const int kk2 = 32 * e_q + 8 * t;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = col0 + pcol[j];
                if (n < d_out) fetch8(st + j * THREADS, b + (size_t)n * rank + kk2, rank - kk2, vec_b);
            }
            if (e_q == nq - 1) {
                const int col = col0 + 8 * t;
#pragma unroll
                for (int i = 0; i < 2 * MT; ++i)
                    if (m_ok[i] && col < d_out) fetch8(st + (NTW + i) * THREADS, y_row[i] + col, d_out - col, vec_y);
                e_q = 0;
                ++e_group;
            } else {
                ++e_q;
            }
        }
        cp_async_commit();
        ++issued;
    };
    auto issue_until = [&](int limit) {
        limit = min(limit, total);
        while (issued < limit) issue();
    };
    auto slot = [&](int unit, int sub) -> uint4 {
        return ring[((unit % L::S) * L::U + sub) * THREADS + tid];
    };
    issue_until(L::S);

    // v rounded to T for the expand, from a sum function of (row, rank) or from p.v (mode 2)
    const int vcols = 32 * nq;
    auto fill_v = [&](auto sum) {
        for (int e = tid; e < 16 * MT * vcols; e += THREADS) {
            const int m = e / vcols, n = e % vcols;
            float s = 0.f;
            if (m < mrows && n < rank) s = p.mode == 2 ? p.v[(size_t)(start + m) * p.width + n] : sum(m, n);
            vsm[m * VLD + n] = from_f<T>(s);
        }
    };

    // ---- shrink: this warp's runs, each chunk by chunk
    float acc[MT][NTW][4];
    float4 tot[NTW];  // LPB > 1: the sum of this warp's runs so far (fragment layout)
    int u = 0;
    for (int j = 0; j < (p.mode == 2 ? 0 : nruns); ++j) {
        const int here = tiles_in(run_group(j));
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int jj = 0; jj < NTW; ++jj)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][jj][e] = 0.f;
        const int cend = run_end(j);
        for (int c = run_first(j); c < cend; ++c, ++u) {
            cp_async_wait(issued - u - 1);
            uint4 xs[2 * MT];
#pragma unroll
            for (int i = 0; i < 2 * MT; ++i) xs[i] = slot(u, NTW + i);
#pragma unroll
            for (int jj = 0; jj < NTW; ++jj)
                if (jj < here) {
                    const uint4 as = slot(u, jj);
#pragma unroll
                    for (int i = 0; i < MT; ++i) mma_chunk<T>(acc[i][jj], xs[2 * i], xs[2 * i + 1], as);
                }
            issue_until(u + 1 + L::S);
        }
        if constexpr (LPB == 2) {
            if (j == 0)
#pragma unroll
                for (int jj = 0; jj < NTW; ++jj)
                    tot[jj] = make_float4(acc[0][jj][0], acc[0][jj][1], acc[0][jj][2], acc[0][jj][3]);
        }
        if constexpr (SOLO) {
            // the leaf's runs in kk order, as a cluster block's warps are summed below
            const int r = j % ks;
#pragma unroll
            for (int jj = 0; jj < NTW; ++jj) {
                const float4 s = make_float4(acc[0][jj][0], acc[0][jj][1], acc[0][jj][2], acc[0][jj][3]);
                tot[jj] = r == 0 ? s : add4(tot[jj], s);
            }
            if (r == ks - 1) {
                // the 8 leaves (warps) in a binary tree, as the cluster's blocks below
                const int gr = run_group(j);
                auto put = [&](int s) {
#pragma unroll
                    for (int jj = 0; jj < NTW; ++jj) red[(s * NTW + jj) * 32 + lane] = tot[jj];
                };
                auto take = [&](int s) {
#pragma unroll
                    for (int jj = 0; jj < NTW; ++jj) tot[jj] = add4(tot[jj], red[(s * NTW + jj) * 32 + lane]);
                };
#pragma unroll
                for (int level = 1; level < WARPS; level *= 2) {
                    __syncthreads();
                    if (warp % (2 * level) == level) put(warp / (2 * level));
                    __syncthreads();
                    if (warp % (2 * level) == 0) take(warp / (2 * level));
                }
                if (warp == 0) {
#pragma unroll
                    for (int jj = 0; jj < NTW; ++jj)
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const int m = g + 8 * (e / 2), n = 32 * gr + 8 * jj + 2 * t + e % 2;
                            const float4 v4 = tot[jj];
                            const float val = e == 0 ? v4.x : e == 1 ? v4.y : e == 2 ? v4.z : v4.w;
                            const bool ok = m < mrows && n < rank;
                            if (p.mode == 1) {
                                if (m < mrows && n < p.width) p.v[(size_t)(start + m) * p.width + n] = ok ? val : 0.f;
                            } else {
                                vsm[m * VLD + n] = from_f<T>(ok ? val : 0.f);
                            }
                        }
                }
            }
        }
    }

    if constexpr (COLS) {
        wait_prerequisites();  // the shrink's v is complete and visible
        fill_v([](int, int) { return 0.f; });
    } else if constexpr (SOLO) {
        if (p.mode == 2) fill_v([](int, int) { return 0.f; });
        if (p.mode == 1)  // ranks past this segment's groups, up to the batch's widest
            for (int e = tid; e < mrows * p.width; e += THREADS) {
                const int m = e / p.width, n = e % p.width;
                if (n >= 32 * ng) p.v[(size_t)(start + m) * p.width + n] = 0.f;
            }
    } else {
        // ---- reduce: a leaf's runs in kk order into `red` (LPB = 2: each leaf into its half,
        // then the two leaves' sum into the first), then the blocks in a binary tree over
        // cluster ranks
        if (LPB == 2 && p.mode != 2) {
            float4* half = red + (warp / 4) * (2 * NTW * 32);
            for (int step = 0; step < wpg; ++step) {
                if (kk == 2 * step)
#pragma unroll
                    for (int jj = 0; jj < NTW; ++jj) {
                        float4* r = &half[(grp * NTW + jj) * 32 + lane];
                        const float4 s = make_float4(acc[0][jj][0], acc[0][jj][1], acc[0][jj][2], acc[0][jj][3]);
                        *r = step == 0 ? add4(tot[jj], s) : add4(add4(*r, tot[jj]), s);
                    }
                __syncthreads();
            }
            for (int e = tid; e < 2 * NTW * 32; e += THREADS) red[e] = add4(red[e], red[e + 2 * NTW * 32]);
        }
        if (LPB == 1 && p.mode != 2) {
            for (int step = 0; step < ks; ++step) {
                if (kk == step)
#pragma unroll
                    for (int i = 0; i < MT; ++i)
#pragma unroll
                        for (int jj = 0; jj < NTW; ++jj) {
                            float4* r = &red[((grp * MT + i) * NTW + jj) * 32 + lane];
                            const float4 s = make_float4(acc[i][jj][0], acc[i][jj][1], acc[i][jj][2], acc[i][jj][3]);
                            *r = step > 0 ? add4(*r, s) : s;
                        }
                __syncthreads();
            }
        }
        cluster_arrive();
        cluster_wait();  // every block's partial is complete

        const float* reds[NBLK];
#pragma unroll
        for (int c = 0; c < NBLK; ++c) reds[c] = cluster_map(reinterpret_cast<const float*>(red), c);
        auto cluster_sum = [&](int m, int n) {
            const int ri = red_index(m, n, MT);
            float pc[NBLK];
#pragma unroll
            for (int c = 0; c < NBLK; ++c) pc[c] = reds[c][ri];
#pragma unroll
            for (int w = 1; w < NBLK; w *= 2)
#pragma unroll
                for (int c = 0; c < NBLK; c += 2 * w) pc[c] += pc[c + w];
            return pc[0];
        };
        if (p.mode == 1) {
            // shrink alone: block 0 writes v in f32 (zero beyond the rank)
            if (crank == 0)
                for (int e = tid; e < mrows * p.width; e += THREADS) {
                    const int m = e / p.width, n = e % p.width;
                    p.v[(size_t)(start + m) * p.width + n] = n < rank ? cluster_sum(m, n) : 0.f;
                }
        } else {
            fill_v(cluster_sum);
        }
        cluster_arrive();  // done reading the other blocks' shared memory
    }
    __syncthreads();

    // ---- expand: this warp's 32-column groups, nq units each
    float o[MT][4][4];
    for (int u = n_s; u < total; ++u) {
        const int e = u - n_s, ge = e / nq, q = e % nq;
        cp_async_wait(issued - u - 1);
        if (q == 0)
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int c = 0; c < 4; ++c) o[i][j][c] = 0.f;
        uint4 vl[MT], vh[MT];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            vl[i] = *reinterpret_cast<const uint4*>(&vsm[(16 * i + g) * VLD + 32 * q + 8 * t]);
            vh[i] = *reinterpret_cast<const uint4*>(&vsm[(16 * i + g + 8) * VLD + 32 * q + 8 * t]);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const uint4 bq = slot(u, j);
#pragma unroll
            for (int i = 0; i < MT; ++i) mma_chunk<T>(o[i][j], vl[i], vh[i], bq);
        }
        if (q == nq - 1) {
            const int col = 32 * (gfirst + WARPS * ge) + 8 * t;
#pragma unroll
            for (int r = 0; r < 2 * MT; ++r) {
                if (!m_ok[r] || col >= d_out) continue;
                const uint4 old = slot(u, NTW + r);
                const T* ov = reinterpret_cast<const T*>(&old);
                __align__(16) T nv[8];
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int c = 0; c < 2; ++c)
                        nv[2 * j + c] = from_f<T>(to_f<T>(ov[2 * j + c]) + scale * o[r / 2][j][2 * (r % 2) + c]);
                T* dst = y_row[r] + col;
                if (vec_y && col + 8 <= d_out) {
                    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(nv);
                } else {
                    for (int c = 0; c < 8 && col + c < d_out; ++c) dst[c] = nv[c];
                }
            }
        }
        issue_until(u + 1 + L::S);
    }
    if constexpr (!SOLO && !COLS) cluster_wait();  // no block leaves while another may still read its partial
}

// Tiles of 16 tokens, two blocks per SM, in clusters of 8 or 4 or solo. (The kernel also
// takes MT = 4, 64-token tiles in clusters of 8 blocks of one per SM, for long segments; that
// variant was slower than one of these on every benchmark shape on the H200 and is no longer
// built: kernels/NOTES.md.)
// Stacked launches: up to 3 projections that read the same x (q, k, v; gate, up) in one
// grid, part k's tiles after part k-1's; each part has its own table, rows, tiles, y
// columns and d_out. A block computes what it would in its part's own launch (the tile's
// arithmetic depends on d_in and the segment's rank alone), so the bits are the same.
constexpr int MAX_PARTS = 3;
struct MultiParams {
    Params part[MAX_PARTS];
    int end[MAX_PARTS];  // tiles of parts 0..k together
};

template <typename T, int LPB>
__device__ __forceinline__ void sgmv_fused_multi(const MultiParams& m) {
    const int tile = blockIdx.x / (CLUSTER / LPB);
    const int k = tile < m.end[0] ? 0 : tile < m.end[1] ? 1 : 2;
    sgmv_fused<T, 1, LPB>(m.part[k], tile - (k == 0 ? 0 : m.end[k - 1]));
}

#define SGMV_FUSED(NAME, T)                                                                        \
    extern "C" __global__ void __launch_bounds__(THREADS, 2) sgmv_fused_##NAME##_cluster(Params p) {   \
        sgmv_fused<T, 1, 1>(p, blockIdx.x / CLUSTER);                                              \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, 2) sgmv_fused_##NAME##_pair(Params p) {  \
        sgmv_fused<T, 1, 2>(p, blockIdx.x / (CLUSTER / 2));                                        \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, 2) sgmv_fused_##NAME##_solo(Params p) {  \
        sgmv_fused<T, 1, CLUSTER>(p, blockIdx.x);                                                  \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, 2) sgmv_fused_##NAME##_cols(Params p) {  \
        sgmv_fused<T, 1, 0>(p, blockIdx.x / p.col_blocks);                                         \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                    \
        sgmv_fused_##NAME##_cluster_multi(const __grid_constant__ MultiParams m) {              \
        sgmv_fused_multi<T, 1>(m);                                                              \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                    \
        sgmv_fused_##NAME##_pair_multi(const __grid_constant__ MultiParams m) {                 \
        sgmv_fused_multi<T, 2>(m);                                                              \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                    \
        sgmv_fused_##NAME##_solo_multi(const __grid_constant__ MultiParams m) {                 \
        sgmv_fused_multi<T, CLUSTER>(m);                                                        \
    }
SGMV_FUSED(bf16, __nv_bfloat16)
SGMV_FUSED(f16, __half)
