"""The measurements behind each fast path (README "Speed"), interleaved A/B in one process.

    # the kernels: a 1x1 convolution as conv2d (NCHW) vs a matmul on (N, H, W, C) at aligned and unaligned
    # widths, that matmul and its gradients through MKL (torch.mm) vs oneDNN (models/onednn.py), the
    # depthwise 3x3 in NCHW vs channels_last, the FFN's gelu gate plain vs fused into the depthwise
    # convolutions, q/k norms by vector_norm vs a sum of squares
    OMP_NUM_THREADS=2 python tools/bench_fastpath.py ops
    # one transformer block of an earlier models/restormer.py vs this one, per attention kind
    git show REV:models/restormer.py > /tmp/restormer_before.py
    OMP_NUM_THREADS=2 python tools/bench_fastpath.py blocks --before /tmp/restormer_before.py
    # DarkIR and NAFNet (bench.py's configurations) with NCHW vs channels_last weights and input
    OMP_NUM_THREADS=2 python tools/bench_fastpath.py convnets

Times are the lower quartile (``ops``) or the median (``blocks``, ``convnets``) of interleaved repeats;
on a machine shared with other jobs compare the rows of one run only.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import models.restormer as restormer  # noqa: E402
from models.onednn import depthwise_gelu_gate, onednn_matmul  # noqa: E402


def lower_quartile_ms(function, repeats=21):
    function()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return sorted(durations)[repeats // 4] * 1e3


@torch.inference_mode()
def ops(args):
    side = args.size
    for inputs, outputs in ((48, 254), (48, 256), (96, 508), (96, 512)):
        x = torch.randn(1, inputs, side, side)
        weight = torch.randn(outputs, inputs, 1, 1)
        nhwc = x.permute(0, 2, 3, 1).contiguous()
        conv = lower_quartile_ms(lambda: F.conv2d(x, weight))
        matmul = lower_quartile_ms(lambda: F.linear(nhwc, weight.view(outputs, inputs)))
        print(f"1x1 {inputs}->{outputs} at {side}²: conv2d NCHW {conv:.2f} ms, matmul NHWC {matmul:.2f} ms", flush=True)
    # Restormer Base's pixel-sized 1x1 convolutions: qkv at levels 1 and 2, an FFN half in and out at level 1.
    for inputs, outputs in ((48, 144), (96, 288), (96, 256), (256, 96)):
        x, grad = torch.randn(side * side, inputs), torch.randn(side * side, outputs)
        weight = torch.randn(outputs, inputs)
        times = {
            "forward": (lambda: x @ weight.t(), lambda: onednn_matmul(x, weight, None, None)),
            "input gradient": (lambda: grad @ weight, lambda: onednn_matmul(grad, weight.t(), None, None)),
            "weight gradient": (lambda: grad.t() @ x, lambda: onednn_matmul(grad.t(), x.t(), None, None)),
        }
        print(f"1x1 {inputs}->{outputs} at {side}² as a matmul: " + "; ".join(
            f"{what} MKL {lower_quartile_ms(mkl):.2f} ms, oneDNN {lower_quartile_ms(onednn):.2f} ms"
            for what, (mkl, onednn) in times.items()), flush=True)
    for channels in (144, 256, 288):
        x = torch.randn(1, channels, side, side)
        weight = torch.randn(channels, 1, 3, 3)
        last = x.contiguous(memory_format=torch.channels_last)
        nchw = lower_quartile_ms(lambda: F.conv2d(x, weight, padding=1, groups=channels))
        channels_last = lower_quartile_ms(lambda: F.conv2d(last, weight, padding=1, groups=channels))
        print(f"depthwise 3x3, {channels} channels at {side}²: NCHW {nchw:.2f} ms, channels_last {channels_last:.2f} ms",
              flush=True)
    for channels in (128, 256):  # Restormer Base's FFN halves: encoder level 1; decoder level 1 and refinement
        gate, value = (torch.randn(1, side, side, channels).permute(0, 3, 1, 2) for _ in range(2))
        weights = [torch.randn(channels, 1, 3, 3) for _ in range(2)]
        plain = lower_quartile_ms(lambda: F.gelu(F.conv2d(gate, weights[0], padding=1, groups=channels))
                                  * F.conv2d(value, weights[1], padding=1, groups=channels))
        fused = lower_quartile_ms(lambda: depthwise_gelu_gate(gate, value, *weights))
        print(f"gelu(depthwise(gate)) * depthwise(value), {channels} channels at {side}²: plain ops {plain:.2f} ms, "
              f"fused {fused:.2f} ms", flush=True)
    for channels in (48, 96):
        qk = torch.randn(1, side * side, 3 * channels)[..., : 2 * channels]
        norm = lower_quartile_ms(lambda: torch.linalg.vector_norm(qk, dim=1))
        squares = lower_quartile_ms(lambda: qk.square().sum(dim=1).sqrt())
        print(f"q, k norms over {side}² pixels, C={channels}: vector_norm {norm:.2f} ms, sum of squares "
              f"{squares:.2f} ms", flush=True)


def blocks(args):
    before_module = bench.load_module(args.before, "models._restormer_before")
    for width, heads, side in ((48, 1, args.size), (96, 1, args.size), (384, 8, args.size // 8)):
        torch.manual_seed(0)
        reference = before_module.TransformerBlock(width, heads, 2.66, False, "WithBias")
        candidates = {"before": reference}
        for kind in restormer.ATTENTION_KINDS:
            candidates[kind] = restormer.TransformerBlock(width, heads, 2.66, False, "WithBias", kind)
            candidates[kind].load_state_dict(reference.state_dict(), strict=True)
        x = torch.randn(1, width, side, side)
        for mode in ("forward", "train"):
            times = {name: [] for name in candidates}
            for round_ in range(args.rounds + 1):
                for name, block in candidates.items():
                    start = time.perf_counter()
                    if mode == "forward":
                        with torch.inference_mode():
                            block(x)
                    else:
                        block(x.clone().requires_grad_()).sum().backward()
                    if round_:
                        times[name].append(time.perf_counter() - start)
            medians = {name: statistics.median(values) for name, values in times.items()}
            print(f"block C={width} heads={heads} at {side}², {mode}: " + ", ".join(
                f"{name} {seconds * 1e3:.1f} ms ({medians['before'] / seconds:.2f}x)" for name, seconds in medians.items()),
                flush=True)


def convnets(args):
    for name in ("nafnet", "darkir"):
        builder, config, _ = bench.MODELS[name]
        torch.manual_seed(0)
        plain = builder(**config)
        last = builder(**config)
        last.load_state_dict(plain.state_dict())
        last = last.to(memory_format=torch.channels_last)
        x, target = torch.rand(2, 3, args.size, args.size), torch.rand(2, 3, args.size, args.size)
        setups = {"NCHW": (plain, x), "channels_last": (last, x.contiguous(memory_format=torch.channels_last))}
        times = {(layout, what): [] for layout in setups for what in ("train", "forward")}
        for round_ in range(args.rounds + 1):
            for layout, (model, inputs) in setups.items():
                train = bench.time_train_steps(model.train(), inputs, target, 1, torch.float32, warmup=0)[0]
                forward = bench.time_forwards(model.eval(), inputs, 1, torch.float32, warmup=0)[0]
                if round_:
                    times[layout, "train"].append(train)
                    times[layout, "forward"].append(forward)
        medians = {key: statistics.median(values) for key, values in times.items()}
        print(f"{name} batch 2 at {args.size}²: " + "; ".join(
            f"{what} NCHW {medians['NCHW', what]:.3f} s, channels_last {medians['channels_last', what]:.3f} s "
            f"({medians['NCHW', what] / medians['channels_last', what]:.2f}x)" for what in ("train", "forward")),
            flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("what", choices=("ops", "blocks", "convnets"))
    parser.add_argument("--before", metavar="PATH", help="blocks: an earlier models/restormer.py")
    parser.add_argument("--size", type=int, default=128, help="square side in pixels")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (blocks, convnets)")
    args = parser.parse_args(argv)
    if args.what == "blocks" and not args.before:
        parser.error("blocks needs --before PATH")
    {"ops": ops, "blocks": blocks, "convnets": convnets}[args.what](args)


if __name__ == "__main__":
    main()
