"""The card's bf16 matrix-product rate, as an outsider measures it (run 18 part g): an
8192x8192x8192 product on random data, first as a burst (3 warm-ups, the mean of 10 timed
products: how KINDS.md measured 769-798 TFLOP/s), then sustained for SECONDS (default 40) with
the rate of each second, so it can be read beside the scan's sustained MFU under the same power
cap. Prints one JSON line."""
import json, sys, time
import torch

n = 8192
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 40.0
a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
flop = 2 * n**3
for _ in range(3):
    a @ b
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(10):
    a @ b
end.record()
torch.cuda.synchronize()
burst = 10 * flop / (start.elapsed_time(end) / 1e3) / 1e12
per_second = []
t0 = time.time()
while time.time() - t0 < seconds:
    s = time.time()
    k = 0
    while time.time() - s < 1.0:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
        k += 20
    per_second.append(k * flop / (time.time() - s) / 1e12)
tail = sorted(per_second[len(per_second) // 4:])
print(json.dumps({
    "device": torch.cuda.get_device_name(),
    "burst_tflops": round(burst, 1),
    "sustained_tflops_median": round(tail[len(tail) // 2], 1),
    "sustained_tflops_min_max": [round(tail[0], 1), round(tail[-1], 1)],
    "per_second": [round(x, 1) for x in per_second],
}))
