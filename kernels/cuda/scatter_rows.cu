// Row scatter for the paged KV cache: dst[index[i]] = src[i] for every row i of src, rows
// of `width` vectors. One thread per vector (grid-stride), so a step's rows are written in
// parallel whatever their number (candle's scatter loops over the rows in each thread).
// Vectors are 16, 4 or 2 bytes: the host picks the widest that the row size and the
// pointers' alignment allow.
#include <stdint.h>

template <typename V>
__device__ __forceinline__ void scatter_rows(const V* __restrict__ src, V* __restrict__ dst,
                                             const uint32_t* __restrict__ index, long long n,
                                             long long width) {
    const long long total = n * width;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long i = t / width;
        const long long j = t - i * width;
        dst[(long long)index[i] * width + j] = src[t];
    }
}

extern "C" __global__ void scatter_rows_16(const uint4* src, uint4* dst, const uint32_t* index,
                                           long long n, long long width) {
    scatter_rows(src, dst, index, n, width);
}

extern "C" __global__ void scatter_rows_4(const uint32_t* src, uint32_t* dst,
                                          const uint32_t* index, long long n, long long width) {
    scatter_rows(src, dst, index, n, width);
}

extern "C" __global__ void scatter_rows_2(const uint16_t* src, uint16_t* dst,
                                          const uint32_t* index, long long n, long long width) {
    scatter_rows(src, dst, index, n, width);
}
