"""Time the companion's hot paths in both back ends: `make bench`.

Prints the median wall time of each operation over a few repeats, after one warm-up call
(which pays for TensorFlow's tracing). Speed is measured here, never asserted in tests.
"""

import statistics
import subprocess
import sys
import time

from companion import data
from companion import tensorflow as ctf
from companion import torch as ct

REPEATS = 5


def median_seconds(function, repeats: int = REPEATS) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# Run in a fresh interpreter per framework, so that its peak memory is this call's own.
# The peak is Linux's VmHWM (KiB): ru_maxrss would include the parent's peak at fork.
OBS_PRUNE_CHILD = """
import time
from companion import data
from companion import {framework} as backend
def peak():
    with open("/proc/self/status") as status:
        return next(line.split()[1] for line in status if line.startswith("VmHWM"))
mnist = data.load_mnist1d()
model = backend.mlp([40, 300, 100, 10], seed=0)
before = peak()
start = time.perf_counter()
backend.obs_prune(model, mnist.x_train, mnist.y_train, 0.9)
print(time.perf_counter() - start, before, peak())
"""


def obs_prune_cost(framework: str) -> tuple:
    """Seconds and peak resident memory (MiB) of one ``obs_prune`` call, the first in a fresh
    process (so TensorFlow's tracing is included), and the peak before the call (imports,
    data, model). Budget (issue 5): 60 s and 2 GB on the 2-core machine."""
    result = subprocess.run([sys.executable, "-c", OBS_PRUNE_CHILD.format(framework=framework)],
                            capture_output=True, text=True, check=True)
    seconds, before, peak = result.stdout.split()[-3:]
    return float(seconds), int(before) / 1024, int(peak) / 1024


def main() -> None:
    mnist = data.load_mnist1d()
    adding = data.adding_problem(n_train=64, n_test=1, seq_len=100)
    print(f"{'operation':55s} {'PyTorch':>10s} {'TensorFlow':>11s}")
    for label, make_call in [
        ("gradients, MLP 40-300-100-10, 1,000 examples",
         lambda b, m: lambda: b.gradients(m, mnist.x_train[:1000], mnist.y_train[:1000])),
        ("train 1 epoch, MLP 40-300-100-10, batch 64",
         lambda b, m: lambda: b.train(m, mnist.x_train, mnist.y_train, epochs=1, lr=0.01,
                                      batch_size=64, progress=False)),
        ("evaluate, MLP 40-300-100-10, 1,000 examples",
         lambda b, m: lambda: b.evaluate(m, mnist.x_test, mnist.y_test)),
        ("magnitude masks, MLP 40-300-100-10, 90% global",
         lambda b, m: lambda: b.masks_from_scores(m, b.magnitude_scores(m), 0.9)),
    ]:
        row = [median_seconds(make_call(b, b.mlp([40, 300, 100, 10], seed=0))) for b in (ct, ctf)]
        print(f"{label:55s} {row[0] * 1e3:8.1f}ms {row[1] * 1e3:9.1f}ms")
    row = []
    for b in (ct, ctf):
        model = b.rnn(2, 32, 1, gain=1.0, seed=0)
        row.append(median_seconds(
            lambda: b.gradients(model, adding.x_train, adding.y_train, loss="mse")))
    print(f"{'gradients, RNN 32 units, 64 sequences of 100 steps':55s} "
          f"{row[0] * 1e3:8.1f}ms {row[1] * 1e3:9.1f}ms")
    costs = [obs_prune_cost(framework) for framework in ("torch", "tensorflow")]
    print(f"{'obs_prune 90%, MLP 40-300-100-10, 4,000 examples':55s} "
          f"{costs[0][0]:9.1f}s {costs[1][0]:10.1f}s")
    print(f"{'  peak memory of that process (before the call)':55s} "
          f"{costs[0][2]:7.0f}MiB {costs[1][2]:8.0f}MiB  "
          f"({costs[0][1]:.0f} / {costs[1][1]:.0f} MiB)")


if __name__ == "__main__":
    main()
