// Runs topk.cu on the CPU against a full sort, for checking the kernel on a machine without a
// GPU: one std::thread per lane, the warp intrinsics through a barrier. From this folder:
//   g++ -std=c++20 -O1 -Wno-unknown-pragmas -pthread -o /tmp/topk-check topk_check.cpp && /tmp/topk-check
// (a few minutes on two busy cores: the lanes meet at a barrier at every shuffle).
// It covers every list width, k above 32, dictionaries narrower than a warp, rows that do not
// fill the last block, ties, -0.0, and rows holding NaN or infinities; it prints "ok: ..." or the
// first difference and exits 1.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __global__
#define __restrict__
struct Dim { unsigned x = 0, y = 0, z = 0; };
thread_local Dim threadIdx, blockIdx;
Dim blockDim;
static std::barrier<> *bar;
static float fbuf[32];
static unsigned ubuf[32];
static int ibuf[32];
static int lane_of() { return threadIdx.x % 32; }
float __shfl_xor_sync(unsigned, float v, int o) { int l = lane_of(); fbuf[l] = v; bar->arrive_and_wait(); float r = fbuf[l ^ o]; bar->arrive_and_wait(); return r; }
unsigned __shfl_xor_sync(unsigned, unsigned v, int o) { int l = lane_of(); ubuf[l] = v; bar->arrive_and_wait(); unsigned r = ubuf[l ^ o]; bar->arrive_and_wait(); return r; }
int __any_sync(unsigned, int p) { int l = lane_of(); ibuf[l] = p; bar->arrive_and_wait(); int r = 0; for (int i = 0; i < 32; ++i) r |= ibuf[i]; bar->arrive_and_wait(); return r; }
unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
using std::isfinite;
#include "topk.cu"

typedef void (*Kern)(const float *, const float *, unsigned *, int, int, int);

// One thread per lane for the whole launch; each walks every warp of the grid in the same
// order, so the 32 stay in step at every shuffle (a warp past the last row returns on all lanes).
void launch(Kern kern, int rows_per_block, const float *pre, const float *bias, unsigned *out,
            int rows, int m, int k) {
    blockDim.x = 32 * rows_per_block;
    int grid = (rows + rows_per_block - 1) / rows_per_block;
    std::barrier b(32);
    bar = &b;
    std::vector<std::thread> lanes;
    for (int l = 0; l < 32; ++l)
        lanes.emplace_back([=] {
            for (int bx = 0; bx < grid; ++bx)
                for (int w = 0; w < rows_per_block; ++w) {
                    blockIdx.x = bx;
                    threadIdx.x = w * 32 + l;
                    kern(pre, bias, out, rows, m, k);
                }
        });
    for (auto &t : lanes) t.join();
}

int main() {
    std::mt19937_64 rng(1);
    int cases = 0, rows_checked = 0, poisoned_rows = 0, tie_rows = 0;
    struct C { int m, k; };
    std::vector<C> shapes = {{2048, 16}, {4096, 16}, {2048, 64}, {2048, 40}, {1, 1}, {5, 5}, {31, 16}, {33, 33}, {64, 64}, {100, 64}, {300, 17}, {40, 1}, {2048, 1}, {129, 32}};
    for (int t = 0; t < 30; ++t) { int m = 1 + rng() % 400; int k = 1 + rng() % std::min(m, 64); shapes.push_back({m, k}); }
    for (auto [m, k] : shapes) {
        int width = k <= 16 ? 16 : k <= 32 ? 32 : 64;
        Kern kern = width == 16 ? sae_top_k_16 : width == 32 ? sae_top_k_32 : sae_top_k_64;
        int rows = 1 + rng() % 11;  // often not a multiple of the block's 4 rows
        bool coarse = rng() % 2;
        std::vector<float> pre(rows * m), bias(m);
        auto draw = [&] { return coarse ? float((int)(rng() % 7) - 3) : float(std::normal_distribution<double>(0, 1)(rng)); };
        for (auto &v : pre) v = draw();
        for (auto &v : bias) v = draw();
        // Some -0.0 and a poisoned row or two.
        for (int i = 0; i < rows * m; i += 13) if (pre[i] == 0.f) pre[i] = -0.f;
        std::vector<bool> poisoned(rows);
        if (rows > 2) { int r = rng() % rows; pre[r * m + rng() % m] = (rng() % 2) ? NAN : -INFINITY; poisoned[r] = true; }
        if (rows > 4) { int r = rng() % rows; pre[r * m + rng() % m] = INFINITY; poisoned[r] = true; }
        // Canary past the end of the output.
        std::vector<unsigned> out(2 * rows * k + 8, 0xdeadbeef);
        launch(kern, (cases % 2) ? 4 : 1, pre.data(), bias.data(), out.data(), rows, m, k);
        for (int i = 0; i < 8; ++i) if (out[2 * rows * k + i] != 0xdeadbeef) { printf("FAIL overrun m %d k %d\n", m, k); return 1; }
        for (int r = 0; r < rows; ++r) {
            std::vector<std::pair<float, unsigned>> v;
            for (int j = 0; j < m; ++j) v.push_back({pre[r * m + j] + bias[j], (unsigned)j});
            std::stable_sort(v.begin(), v.end(), [](auto a, auto b) { return a.first > b.first; });
            for (int s = 0; s < k; ++s) {
                unsigned id = out[r * k + s];
                float act; unsigned bits = out[rows * k + r * k + s]; memcpy(&act, &bits, 4);
                if (poisoned[r]) {
                    if (!std::isnan(act)) { printf("FAIL poisoned row %d not NaN (m %d k %d)\n", r, m, k); return 1; }
                    continue;
                }
                float want = v[s].first > 0.f ? v[s].first : 0.f;
                if (id != v[s].second || act != want) {
                    printf("FAIL m %d k %d row %d slot %d: got (%u, %g) want (%u, %g)\n", m, k, r, s, id, act, v[s].second, want);
                    return 1;
                }
                if (s > 0 && v[s].first == v[s - 1].first) tie_rows++;
            }
            rows_checked++; poisoned_rows += poisoned[r];
        }
        cases++;
    }
    printf("ok: %d shapes, %d rows, %d poisoned, %d tied slots\n", cases, rows_checked, poisoned_rows, tie_rows);
}
