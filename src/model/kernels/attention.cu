// Fused causal softmax for s3mem's attention on CUDA (built to PTX by build.rs with the `cuda`
// feature; src/model/softmax.rs loads it). It replaces four passes over the attention scores
// (scale, mask add, candle's one-warp softmax with its extra read) by one read-mostly pass.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// In place over `rows` rows of `cols` scores: row r holds the scores of query position
// start + (r % seq) against key positions 0..cols. Each row becomes softmax(scale * x) over the
// keys the query may see (positions up to its own), and 0 for the keys after it. One warp per
// row, arithmetic in f32.
template <typename T>
__device__ void causal_softmax(T *x, int rows, int cols, int seq, int start, float scale) {
    const int warps = blockDim.x / 32;
    const int row = blockIdx.x * warps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    T *p = x + (size_t)row * cols;
    const int visible = min(cols, start + row % seq + 1);
    float m = -INFINITY;
    for (int j = lane; j < visible; j += 32) m = fmaxf(m, static_cast<float>(p[j]) * scale);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    float s = 0.f;
    for (int j = lane; j < visible; j += 32) s += __expf(static_cast<float>(p[j]) * scale - m);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    const float inv = 1.f / s;
    for (int j = lane; j < cols; j += 32) {
        const float v = j < visible ? __expf(static_cast<float>(p[j]) * scale - m) * inv : 0.f;
        p[j] = static_cast<T>(v);
    }
}

extern "C" __global__ void causal_softmax_bf16(__nv_bfloat16 *x, int rows, int cols, int seq,
                                               int start, float scale) {
    causal_softmax(x, rows, cols, seq, start, scale);
}

extern "C" __global__ void causal_softmax_f16(__half *x, int rows, int cols, int seq, int start,
                                              float scale) {
    causal_softmax(x, rows, cols, seq, start, scale);
}

extern "C" __global__ void causal_softmax_f32(float *x, int rows, int cols, int seq, int start,
                                              float scale) {
    causal_softmax(x, rows, cols, seq, start, scale);
}
