// Fused top-k of SAE pre-activations on CUDA (built to PTX by build.rs with the `cuda` feature;
// src/sae/topk.rs loads it). It replaces k rounds of tensor ops (row maximum, lowest id holding
// it, mask), each a few passes over the [rows, m] pre-activations, by one read of them.
//
// The selection is the host's `top_k_into`: the k largest of pre[r][j] + bias[j], ordered by
// value, largest first, ties to the lower feature id; the ReLU is applied after selection. A row
// holding a NaN or an infinity gets NaN in every activation slot, which the host reports as a
// non-finite input (a real activation, finite and after the ReLU, is never NaN).
//
// One warp per row. Lane l reads features l, l + 32, l + 64, ... (coalesced, in ascending id
// order) and keeps the K best of them in registers, sorted. Every feature of the row's top k is
// in its lane's top K (K >= k: fewer than k features of the whole row beat it, so fewer than K
// of its lane do), so k rounds of a warp arg-max over the lanes' heads, the winning lane popping
// its head, give the row's top k in order.
//
// Output: one u32 buffer of 2 * rows * k, the feature ids [rows, k] then the activations'
// f32 bits [rows, k].

#define FULL_MASK 0xffffffffu
#define WARP 32
// The id of an empty slot (value -inf): larger than any feature id, so it loses every tie.
#define EMPTY_ID 0xffffffffu

// The host's order: a larger value first, then a lower id.
__device__ __forceinline__ bool beats(float v, unsigned id, float w, unsigned jd) {
    return v > w || (v == w && id < jd);
}

template <int K>
__device__ void sae_top_k(const float *__restrict__ pre, const float *__restrict__ bias,
                          unsigned *__restrict__ out, int rows, int m, int k) {
    const int warps = blockDim.x / WARP;
    const int row = blockIdx.x * warps + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    // Whole warps leave together: the shuffles below need all 32 lanes.
    if (row >= rows) return;
    const float *p = pre + (size_t)row * m;

    // Constant indices only (unrolled loops), so the lists stay in registers.
    float val[K];
    unsigned ids[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
        val[i] = -INFINITY;
        ids[i] = EMPTY_ID;
    }
    bool finite = true;
    for (int j = lane; j < m; j += WARP) {
        const float v = p[j] + bias[j];
        finite = finite && isfinite(v);
        // Ids ascend within a lane, so a value equal to a kept one never displaces it and never
        // passes it below: ties go to the lower id. NaN fails the test and is never kept.
        if (v > val[K - 1]) {
            val[K - 1] = v;
            ids[K - 1] = (unsigned)j;
#pragma unroll
            for (int i = K - 1; i > 0; --i) {
                if (val[i] > val[i - 1]) {
                    const float tv = val[i];
                    val[i] = val[i - 1];
                    val[i - 1] = tv;
                    const unsigned ti = ids[i];
                    ids[i] = ids[i - 1];
                    ids[i - 1] = ti;
                }
            }
        }
    }
    const bool poisoned = __any_sync(FULL_MASK, !finite);

    unsigned *out_ids = out + (size_t)row * k;
    unsigned *out_acts = out + (size_t)rows * k + (size_t)row * k;
    for (int r = 0; r < k; ++r) {
        // Butterfly arg-max: `beats` is a total order on the heads (real ids are distinct), so
        // every lane ends with the same winner.
        float v = val[0];
        unsigned id = ids[0];
#pragma unroll
        for (int o = WARP / 2; o > 0; o >>= 1) {
            const float w = __shfl_xor_sync(FULL_MASK, v, o);
            const unsigned jd = __shfl_xor_sync(FULL_MASK, id, o);
            if (beats(w, jd, v, id)) {
                v = w;
                id = jd;
            }
        }
        if (lane == (r % WARP)) {
            out_ids[r] = id;
            out_acts[r] = __float_as_uint(poisoned ? NAN : (v > 0.f ? v : 0.f));
        }
        // The owner pops its head. Only a poisoned row can run out of real entries, and there
        // several lanes popping an empty head changes nothing that is kept.
        if (ids[0] == id) {
#pragma unroll
            for (int i = 0; i < K - 1; ++i) {
                val[i] = val[i + 1];
                ids[i] = ids[i + 1];
            }
            val[K - 1] = -INFINITY;
            ids[K - 1] = EMPTY_ID;
        }
    }
}

// One kernel per list width K; the host picks the narrowest with K >= k.
extern "C" __global__ void sae_top_k_16(const float *pre, const float *bias, unsigned *out,
                                        int rows, int m, int k) {
    sae_top_k<16>(pre, bias, out, rows, m, k);
}

extern "C" __global__ void sae_top_k_32(const float *pre, const float *bias, unsigned *out,
                                        int rows, int m, int k) {
    sae_top_k<32>(pre, bias, out, rows, m, k);
}

extern "C" __global__ void sae_top_k_64(const float *pre, const float *bias, unsigned *out,
                                        int rows, int m, int k) {
    sae_top_k<64>(pre, bias, out, rows, m, k);
}
