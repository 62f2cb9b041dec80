"""Time the companion beside the library call a user would pick instead: `make bench`.

Each row computes the same thing twice, once with the companion and once with the
*anchor* (``torch.nn.utils``, ``tf.clip_by_global_norm``, BackPACK, a plain training
loop), and prints both median times and their ratio. The two calls of a pair alternate
within one process (after a warm-up call each, which pays for TensorFlow's tracing), so
a busy machine slows both alike and the ratio stays meaningful; the absolute times do
not. Speed is measured here, never asserted in tests (tests check that each fast path
gives the same numbers as the exact one).

Usage: python tools/bench.py [--repeats 7] [--only SECTION] [--json FILE] [--markdown FILE] [--only SECTION]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import companion  # noqa: F401  (sets TensorFlow's environment, imports triton first)
import keras
import numpy as np
import tensorflow as tf
import torch
from companion import data
from companion import tensorflow as ctf
from companion import torch as ct


def interleaved(companion_call, anchor_call, repeats: int) -> tuple:
    """Median seconds of each call, the two alternating ``repeats`` times after a warm-up."""
    companion_call(), anchor_call()
    times = ([], [])
    for _ in range(repeats):
        for sample, call in zip(times, (companion_call, anchor_call)):
            start = time.perf_counter()
            call()
            sample.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def resnet_like_gradients(framework: str):
    """161 tensors, 22.2M floats in all: shapes like a ResNet-50's parameters."""
    rng = np.random.default_rng(0)
    shapes = ([(64, 3, 7, 7)] + [(256, 64, 1, 1)] * 10 + [(64, 64, 3, 3)] * 10
              + [(512, 128, 1, 1)] * 12 + [(128, 128, 3, 3)] * 12 + [(1024, 256, 1, 1)] * 8
              + [(256, 256, 3, 3)] * 8 + [(2048, 512, 1, 1)] * 3 + [(512, 512, 3, 3)] * 3
              + [(1000, 2048)] + [(256,)] * 93)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    if framework == "torch":
        return [torch.from_numpy(a) for a in arrays]
    return [tf.constant(a) for a in arrays]


def clipping_rows(repeats: int) -> list:
    grads = resnet_like_gradients("torch")
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]

    def companion_clip():
        for p, g in zip(params, grads):
            p.grad = g.clone()
        ct.clip_grads_(params_module, ct.Clip("global_norm", 1.0))

    def anchor_clip():
        for p, g in zip(params, grads):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, 1.0)

    params_module = torch.nn.ParameterList(params)
    rows = [("global-norm clip in place, 161 tensors / 22.2M floats",
             "torch.nn.utils.clip_grad_norm_", *interleaved(companion_clip, anchor_clip,
                                                            repeats)),
            ("global 2-norm of those gradients", "torch.nn.utils.get_total_norm",
             *interleaved(lambda: ct.global_norm(grads),
                          lambda: float(torch.nn.utils.get_total_norm(grads)), repeats))]
    tf_grads = resnet_like_gradients("tensorflow")
    rows.append(("ctf.clip_by_global_norm, eager, same tensors", "tf.clip_by_global_norm",
                 *interleaved(lambda: ctf.clip_by_global_norm(tf_grads, 1.0),
                              lambda: tf.clip_by_global_norm(tf_grads, 1.0), repeats)))
    compiled = tf.function(lambda g: ctf.clip_by_global_norm(g, 1.0)[0])
    anchor = tf.function(lambda g: tf.clip_by_global_norm(g, 1.0)[0])
    rows.append(("ctf.clip_by_global_norm in tf.function", "tf.clip_by_global_norm",
                 *interleaved(lambda: compiled(tf_grads), lambda: anchor(tf_grads), repeats)))
    return rows


def pruning_rows(repeats: int) -> list:
    import torch.nn.utils.prune as torch_prune

    def big_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 2048))

    model, twin = big_model(), big_model()

    def anchor():
        layers = [(m, "weight") for m in twin if isinstance(m, torch.nn.Linear)]
        torch_prune.global_unstructured(layers, torch_prune.L1Unstructured, amount=0.9)
        for m, name in layers:
            torch_prune.remove(m, name)

    return [("global magnitude masks at 90%, 8.4M weights",
             "torch.nn.utils.prune.global_unstructured",
             *interleaved(lambda: ct.masks_from_scores(model, ct.magnitude_scores(model), 0.9),
                          anchor, repeats))]


def training_rows(repeats: int) -> list:
    mnist = data.load_mnist1d()
    x, y = mnist.x_train, mnist.y_train
    model = ct.mlp([40, 300, 100, 10], seed=0)
    twin = ct.mlp([40, 300, 100, 10], seed=0)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)

    def plain_loop():
        optimizer = torch.optim.SGD(twin.parameters(), lr=0.01)
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(twin(xt[batch]), yt[batch]).backward()
            optimizer.step()

    keras_model, keras_twin = (ctf.mlp([40, 300, 100, 10], seed=0) for _ in range(2))
    keras_twin.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return [("ct.train, 1 epoch, MLP 40-300-100-10, batch 64", "plain PyTorch loop",
             *interleaved(lambda: ct.train(model, x, y, epochs=1, lr=0.01, batch_size=64,
                                           progress=False), plain_loop, repeats)),
            ("ctf.train, the same", "Keras model.fit",
             *interleaved(lambda: ctf.train(keras_model, x, y, epochs=1, lr=0.01,
                                            batch_size=64, progress=False),
                          lambda: keras_twin.fit(x, y, batch_size=64, epochs=1, verbose=0),
                          repeats))]


def curvature_rows(repeats: int) -> list:
    """The closed-form diagonals beside BackPACK (``torch``); the TensorFlow rows have no
    TensorFlow anchor, so they stand beside the same BackPACK call, labelled as such."""
    mnist = data.load_mnist1d()
    x, y = mnist.x_train[:1000], mnist.y_train[:1000]
    try:
        from backpack import backpack, extend
        from backpack.extensions import DiagGGNExact, DiagHessian, SumGradSquared
    except ImportError:
        print("BackPACK is not installed (pip install backpack-for-pytorch torch==2.13.0): "
              "the curvature rows are skipped")
        return []
    model, tf_model = ct.mlp([40, 300, 100, 10], seed=0), ctf.mlp([40, 300, 100, 10], seed=0)
    smooth = ct.mlp([40, 300, 100, 10], activation="tanh", seed=0)
    twins = {"relu": extend(ct.mlp([40, 300, 100, 10], seed=0)),
             "tanh": extend(ct.mlp([40, 300, 100, 10], activation="tanh", seed=0))}
    loss_function = extend(torch.nn.CrossEntropyLoss(reduction="sum"))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)

    def with_backpack(extension, activation="relu"):
        def call():
            twins[activation].zero_grad()
            with backpack(extension()):
                loss_function(twins[activation](xt), yt).backward()
        return call

    label = "MLP 40-300-100-10, 1,000 examples"
    pairs = [
        (f"empirical Fisher diagonal, {label}", "BackPACK SumGradSquared",
         lambda: ct.hessian_diagonal(model, x, y, method="fisher"), SumGradSquared),
        (f"exact Hessian diagonal, {label}", "BackPACK DiagHessian",
         lambda: ct.hessian_diagonal(model, x, y, method="exact"), DiagHessian),
        (f"ct.ggn_diagonal, {label}", "BackPACK DiagGGNExact",
         lambda: ct.ggn_diagonal(model, x, y), DiagGGNExact),
        ("ctf empirical Fisher diagonal, same", "BackPACK SumGradSquared (torch)",
         lambda: ctf.hessian_diagonal(tf_model, x, y, method="fisher"), SumGradSquared),
        ("ctf exact Hessian diagonal, same", "BackPACK DiagHessian (torch)",
         lambda: ctf.hessian_diagonal(tf_model, x, y, method="exact"), DiagHessian)]
    rows = [(name, anchor, *interleaved(mine, with_backpack(extension), repeats))
            for name, anchor, mine, extension in pairs]
    # tanh has a second derivative: the Hessian's extra terms are backpropagated too
    rows.append(("exact Hessian diagonal, the same MLP with tanh", "BackPACK DiagHessian",
                 *interleaved(lambda: ct.hessian_diagonal(smooth, x, y, method="exact"),
                              with_backpack(DiagHessian, "tanh"), repeats)))
    return rows + convolution_rows(repeats, backpack, extend)


def small_cnn():
    """Conv(1->16, 3x3) ReLU Conv(16->16, 3x3) ReLU Flatten Linear(1024->10): 12,730
    parameters, for 8x8 images."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 8 * 8, 10))


def convolution_rows(repeats: int, backpack, extend) -> list:
    """The closed forms on a small CNN (per-example weight gradients from unfolded
    patches), beside BackPACK on 1,000 random 8x8 images."""
    from backpack.extensions import DiagHessian, SumGradSquared
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 1000)
    model, twin = small_cnn(), extend(small_cnn())
    loss_function = extend(torch.nn.CrossEntropyLoss(reduction="sum"))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)

    def with_backpack(extension):
        def call():
            twin.zero_grad()
            with backpack(extension()):
                loss_function(twin(xt), yt).backward()
        return call

    label = "CNN 12.7k weights, 1,000 images"
    return [(f"empirical Fisher diagonal, {label}", "BackPACK SumGradSquared",
             *interleaved(lambda: ct.hessian_diagonal(model, x, y, method="fisher"),
                          with_backpack(SumGradSquared), repeats)),
            (f"exact Hessian diagonal, {label}", "BackPACK DiagHessian",
             *interleaved(lambda: ct.hessian_diagonal(model, x, y, method="exact"),
                          with_backpack(DiagHessian), repeats))]


# One obs_prune call in a fresh interpreter, so that its peak memory is its own. The peak
# is Linux's VmHWM (KiB): ru_maxrss would include the parent's peak at fork.
OBS_PRUNE_CHILD = """
import time
from companion import data
from companion import {framework} as backend
def peak():
    with open("/proc/self/status") as status:
        return next(line.split()[1] for line in status if line.startswith("VmHWM"))
mnist = data.load_mnist1d()
model = backend.mlp({sizes}, seed=0)
start = time.perf_counter()
backend.obs_prune(model, mnist.x_train[:{examples}], mnist.y_train[:{examples}], 0.9,
                  block_size={block_size}, batch_size={batch_size}, max_bytes=2**32)
print(time.perf_counter() - start, peak())
"""

# (label, sizes, examples, block_size, batch_size): the MLP of Chapters 3-4, and one of a
# million weights, with blocks of 64 and chunks of 64 examples to stay within 4 GB.
OBS_CASES = [("MLP 40-300-100-10, 4,000 examples", [40, 300, 100, 10], 4000, 128, 256),
             ("MLP 40-1024-1024-10 (1.09M weights), 1,000 examples, blocks of 64",
              [40, 1024, 1024, 10], 1000, 64, 64)]


def obs_prune_cost(framework: str, sizes, examples: int, block_size: int,
                   batch_size: int) -> tuple:
    """Seconds and peak resident memory (MiB) of one ``obs_prune`` call, the first in a
    fresh process (TensorFlow's tracing included)."""
    code = OBS_PRUNE_CHILD.format(framework=framework, sizes=sizes, examples=examples,
                                  block_size=block_size, batch_size=batch_size)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    seconds, peak = result.stdout.split()[-2:]
    return float(seconds), int(peak) / 1024


SECTIONS = {"clipping": clipping_rows, "pruning": pruning_rows, "training": training_rows,
            "curvature": curvature_rows, "obs": lambda repeats: []}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--markdown", help="also write the rows as a markdown table here")
    parser.add_argument("--only", choices=SECTIONS, help="run only this section")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'operation':62s} {'companion':>10s} {'anchor':>10s} {'ratio':>6s}  anchor")
    for name, section in SECTIONS.items():
        if args.only not in (None, name):
            continue
        for label, anchor_name, mine, theirs in section(args.repeats):
            rows.append({"operation": label, "anchor": anchor_name,
                         "companion_s": mine, "anchor_s": theirs, "ratio": mine / theirs})
            print(f"{label:62s} {mine * 1e3:8.1f}ms {theirs * 1e3:8.1f}ms "
                  f"{mine / theirs:5.1f}x  {anchor_name}", flush=True)
    for label, *case in OBS_CASES if args.only in (None, "obs") else ():
        for framework in ("torch", "tensorflow"):
            seconds, peak = obs_prune_cost(framework, *case)
            rows.append({"operation": f"obs_prune 90%, {label} ({framework})",
                         "seconds": seconds, "peak_mib": peak})
            print(f"obs_prune 90%, {label}, {framework:10s} {seconds:7.1f}s, "
                  f"peak memory {peak:.0f} MiB", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown_table(rows))


def markdown_table(rows) -> str:
    """The rows as the markdown tables the book's testing page includes."""
    timed = [r for r in rows if "ratio" in r]
    lines = ["| operation | companion | anchor | ratio | anchor call |",
             "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['operation']} | {r['companion_s'] * 1e3:.1f} ms | "
              f"{r['anchor_s'] * 1e3:.1f} ms | {r['ratio']:.2f}x | {r['anchor']} |"
              for r in timed]
    lines += ["", "| one-shot OBS | seconds | peak memory |", "| --- | ---: | ---: |"]
    lines += [f"| {r['operation']} | {r['seconds']:.1f} s | {r['peak_mib']:.0f} MiB |"
              for r in rows if "seconds" in r]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
