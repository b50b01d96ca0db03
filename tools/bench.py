"""One benchmark for every model in the library, the data loader, and the official Restormer.

Per model: training-step seconds (forward + L1 backward + AdamW step) and images/s, peak memory
(CUDA ``max_memory_allocated``; on CPU the process's peak resident set during that model's steps,
reset through ``/proc/self/clear_refs``), forward seconds per megapixel (inference mode), forward
FLOPs from ``torch.utils.flop_counter`` and the achieved FLOP/s as a fraction of a large matmul timed
in the same run and dtype (an MFU-like figure), and ``EMA.update`` milliseconds against the same update
plus a copy of every buffer (what it did before it skipped static ones). The loader: samples/s of one worker (this process,
one OpenCV thread) cropping from 3296x2192 JPEG pairs it writes, without and with the pixel cache.

    OMP_NUM_THREADS=2 python tools/bench.py --json bench.json --markdown bench.md      # every model
    python tools/bench.py --quick                                                      # tiny, seconds
    python tools/bench.py --models restormer --official /tmp/restormer_arch.py         # vs official
    git show REV:models/restormer.py > /tmp/restormer_before.py                        # ... and vs REV
    python tools/bench.py --models --no-loader --official /tmp/restormer_arch.py --before /tmp/restormer_before.py
    python tools/bench.py --device cuda --crop 512 --amp bf16 --compile                # on a GPU

``--official PATH`` imports ``Restormer`` from the official ``basicsr/models/archs/restormer_arch.py``
at PATH (nothing of it is copied here) and times both Base models interleaved in one process, medians
over ``--rounds``; ``--before PATH`` adds an earlier revision of ``models/restormer.py`` to the same
rounds (the before/after ratio of the fast path). CPU timings on a shared machine are noisy: compare rows of one run only.
"""
import argparse
import importlib.util
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.dataset import PairedDataset  # noqa: E402
from data.pairs import ImagePair  # noqa: E402
from data.pixel_cache import PixelCache  # noqa: E402
from models.darkir import DarkIR  # noqa: E402
from models.dat import DAT  # noqa: E402
from models.gain import GainRestormer  # noqa: E402
from models.hat import HAT  # noqa: E402
from models.mambair import MambaIR, MambaIRUNet  # noqa: E402
from models.nafnet import NAFNet  # noqa: E402
from models.onednn import onednn_matmul, uses_onednn  # noqa: E402
from models.refiner import ColorRefiner  # noqa: E402
from models.restormer import Restormer  # noqa: E402
from models.retinexformer import RetinexFormer  # noqa: E402
from models.retinexmamba import RetinexMamba  # noqa: E402
from models.zero_conv import ZeroConvRestormer  # noqa: E402
from utils.training import EMA  # noqa: E402

TINY_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
HAT_X1 = dict(upscale=1, img_size=64, upsampler="pixelshuffle", resi_connection="1conv", img_range=1.0)
# name -> (builder, full configuration (the catalog's / recipes' defaults), tiny configuration for --quick)
MODELS = {
    "restormer": (Restormer, {}, TINY_RESTORMER),
    "gain_restormer": (GainRestormer, {}, TINY_RESTORMER),
    "zero_conv_restormer": (ZeroConvRestormer, {}, TINY_RESTORMER),
    "darkir": (DarkIR, {}, dict(width=8, middle_blk_num_enc=1, middle_blk_num_dec=1, enc_blk_nums=[1, 1, 1],
                                dec_blk_nums=[1, 1, 1])),
    "nafnet": (NAFNet, dict(width=32, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8], dec_blk_nums=[2, 2, 2, 2]),
               dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])),
    "color_refiner": (ColorRefiner, {}, dict(width=8, num_blocks=1)),
    "retinexformer": (RetinexFormer, dict(n_feat=40, stage=1, num_blocks=[1, 2, 2]),
                      dict(n_feat=8, stage=1, num_blocks=[1, 1, 1])),
    "retinexmamba": (RetinexMamba, dict(n_feat=40, stage=1, num_blocks=[1, 2, 2]),
                     dict(n_feat=4, stage=1, num_blocks=[1, 1, 1], d_state=2)),
    "mambair": (MambaIR, dict(upscale=1, embed_dim=180, depths=[6] * 6, mlp_ratio=1.2, d_state=16, upsampler=""),
                dict(upscale=1, embed_dim=30, depths=[1, 1], mlp_ratio=1.2, d_state=4, drop_path_rate=0.0)),
    "mambair_unet": (MambaIRUNet, dict(mlp_ratio=1.5), dict(dim=30, num_blocks=[1, 1, 1, 1],
                                                           num_refinement_blocks=1, mlp_ratio=1.5)),
    "hat": (HAT, dict(HAT_X1, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, window_size=16, mlp_ratio=2.0),
            dict(HAT_X1, img_size=32, window_size=8, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2,
                 squeeze_factor=4)),
    "dat": (DAT, dict(upscale=1, img_size=64, embed_dim=180, depth=[6] * 6, num_heads=[6] * 6, split_size=[8, 32]),
            dict(upscale=1, img_size=16, split_size=[4, 8], depth=[2, 1], embed_dim=64, num_heads=[2, 2],
                 expansion_factor=2)),
}
AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(model, inputs):
    """FLOPs of one forward of ``model`` on ``inputs`` as ``torch.utils.flop_counter`` counts them."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(inputs)
    return counter.get_total_flops()


def peak_matmul_flops(device, dtype, size, repeats=3):
    """FLOP/s of the fastest of ``repeats`` square matmuls of ``size`` in ``dtype``: the machine's peak here.

    On CPU each repeat times both torch's matmul (MKL) and oneDNN's, which the models' 1x1 convolutions use
    there (models/onednn.py), and the faster counts.
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    kernels = [lambda: a @ b]
    if uses_onednn(a, b):
        kernels.append(lambda: onednn_matmul(a, b, None, None))
    best = float("inf")
    for _ in range(repeats + 1):
        for kernel in kernels:
            synchronize(device)
            start = time.perf_counter()
            kernel()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


class PeakMemory:
    """Peak memory in bytes over a ``with`` block: CUDA allocations, or the CPU process's resident set."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                pass  # not Linux: the figure is then the peak since the process started
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            try:
                status = Path("/proc/self/status").read_text()
                self.peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024
            except (OSError, StopIteration):
                self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_train_steps(model, inputs, targets, steps, amp_dtype, warmup=1):
    """Seconds of each of ``steps`` training steps after ``warmup`` untimed ones."""
    device = inputs.device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = amp_dtype != torch.float32
    durations = []
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
            loss = F.l1_loss(model(inputs).float(), targets)
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= warmup:
            durations.append(time.perf_counter() - start)
    return durations


def time_forwards(model, inputs, repeats, amp_dtype, warmup=1):
    """Seconds of each of ``repeats`` inference forwards after ``warmup`` untimed ones."""
    durations = []
    with torch.inference_mode(), torch.autocast(inputs.device.type, dtype=amp_dtype,
                                                enabled=amp_dtype != torch.float32):
        for repeat in range(warmup + repeats):
            synchronize(inputs.device)
            start = time.perf_counter()
            model(inputs)
            synchronize(inputs.device)
            if repeat >= warmup:
                durations.append(time.perf_counter() - start)
    return durations


def time_ema_updates(model, repeats):
    """Median ms of ``EMA.update`` and of the same update plus a copy of every buffer (what it did before)."""
    ema = EMA(model, 0.999)
    buffers = list(zip(ema.module.buffers(), model.buffers()))

    def copy_all():
        ema.update()
        with torch.no_grad():
            for ema_buffer, buffer in buffers:
                ema_buffer.copy_(buffer)

    times = {"changed": [], "all": []}
    for _ in range(repeats):  # interleaved
        for key, update in (("all", copy_all), ("changed", ema.update)):
            synchronize(next(model.parameters()).device)
            start = time.perf_counter()
            update()
            synchronize(next(model.parameters()).device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) * 1e3 for key, values in times.items()}


def prepare(model, device, channels_last, compile_model):
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def bench_model(name, model, args, device, peak_flops):
    """One table row for ``model`` (already built) at the run's crop, batch and dtype."""
    amp_dtype = AMP_DTYPES[args.amp]
    generator = torch.Generator().manual_seed(0)
    in_channels = model.conv_in.in_channels if isinstance(model, ColorRefiner) else 3  # photo + base output
    inputs = torch.rand(args.batch, in_channels, args.crop, args.crop, generator=generator).to(device)
    targets = torch.rand(args.batch, 3, args.crop, args.crop, generator=generator).to(device)
    if args.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    parameters = sum(p.numel() for p in model.parameters())
    flops = count_flops(model.to(device), inputs)
    runnable = prepare(model, device, args.channels_last, args.compile)
    with PeakMemory(device) as memory:
        train = statistics.median(time_train_steps(runnable.train(), inputs, targets, args.steps, amp_dtype))
    forward = statistics.median(time_forwards(runnable.eval(), inputs, args.steps, amp_dtype))
    ema = time_ema_updates(model, args.steps + 2)
    megapixels = args.batch * args.crop * args.crop / 1e6
    return dict(model=name, parameters=parameters, train_step_s=train, images_per_s=args.batch / train,
                peak_memory_mb=memory.peak / 2 ** 20, forward_s_per_mp=forward / megapixels,
                forward_gflop=flops / 1e9, achieved_gflops=flops / forward / 1e9,
                fraction_of_peak=flops / forward / peak_flops, ema_update_ms=ema["changed"],
                ema_update_copying_all_buffers_ms=ema["all"])


def write_jpeg_pairs(folder, count, size, quality=95):
    """``count`` photo-like JPEG pairs of ``size`` (height, width); returns their ImagePairs."""
    rng = np.random.default_rng(0)
    height, width = size
    pairs = []
    for index in range(count):
        coarse = rng.random((6, 9, 3), dtype=np.float32)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        for kind, gain in (("input", 0.6), ("target", 1.0)):
            noisy = smooth * gain + rng.normal(0, 0.03, (height, width, 1)).astype(np.float32)
            path = folder / kind / f"{index}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), (noisy.clip(0, 1) * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        pairs.append(ImagePair(folder / "input" / f"{index}.jpg", folder / "target" / f"{index}.jpg", str(index)))
    return pairs


def samples_per_s(dataset, samples):
    start = time.perf_counter()
    for key in range(samples):
        dataset[(key % len(dataset), key)]
    return samples / (time.perf_counter() - start)


def bench_loader(args):
    """Samples/s of one worker: decoding per sample (before) vs the pixel cache, cold and warm (after)."""
    cv2.setNumThreads(1)  # as in a DataLoader worker: one core each
    size = (384, 512) if args.quick else (2192, 3296)
    crop = min(args.loader_crop, *size)
    with tempfile.TemporaryDirectory() as folder:
        pairs = write_jpeg_pairs(Path(folder) / "photos", 2, size)
        decoding = PairedDataset(pairs, crop=crop, augment=True)
        cached = PairedDataset(pairs, crop=crop, augment=True, cache=PixelCache(Path(folder) / "pixels"))
        cold = samples_per_s(cached, len(pairs))  # first visit of each photo: decode + store
        before, after = [], []
        for _ in range(args.rounds):  # interleaved, medians
            before.append(samples_per_s(decoding, args.loader_samples))
            after.append(samples_per_s(cached, args.loader_samples * 10))
    before, after = statistics.median(before), statistics.median(after)
    return dict(photo=f"{size[1]}x{size[0]} JPEG pairs", crop=crop, decode_per_sample=before,
                pixel_cache_first_visit=cold, pixel_cache=after, speedup=after / before)


def load_module(path, module_name):
    """The Python file at ``path`` as module ``module_name``; named inside ``models`` (``models._x``), an
    earlier revision of ``models/restormer.py`` resolves its relative imports (``from .padding ...``)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_restormer_class(path, module_name):
    """``Restormer`` from the file at ``path`` (see :func:`load_module`)."""
    return load_module(path, module_name).Restormer


def bench_official(path, args, device, before_path=None):
    """This Restormer Base vs the official file's (and an earlier revision's, ``before_path``),
    interleaved: train step and forward medians, and ratios."""
    others = {"official": load_restormer_class(path, "official_restormer_arch")}
    if before_path:
        others["before"] = load_restormer_class(before_path, "models._restormer_before")
    torch.manual_seed(0)
    others = {who: builder().to(device) for who, builder in others.items()}
    ours = Restormer.base().to(device)
    ours.load_state_dict(others["official"].state_dict(), strict=True)
    for model in others.values():
        model.load_state_dict(ours.state_dict(), strict=True)
    probe = torch.rand(1, 3, 64, 64, device=device)
    with torch.inference_mode():
        reference = ours.eval()(probe)
        differences = {who: (reference - model.eval()(probe)).abs().max().item() for who, model in others.items()}
    amp_dtype = AMP_DTYPES[args.amp]
    shape = (args.batch, 3, args.crop, args.crop)
    inputs, targets = torch.rand(shape, device=device), torch.rand(shape, device=device)
    forward_inputs = torch.rand(1, 3, args.official_forward_size, args.official_forward_size, device=device)
    models = {"ours": prepare(ours, device, args.channels_last, args.compile), **others}
    times = {f"{who}_{what}": [] for who in models for what in ("train", "forward")}
    for round_ in range(args.rounds):  # the first round's extra step and forward warm every model up
        for who, model in models.items():
            times[f"{who}_train"] += time_train_steps(model.train(), inputs, targets, 1, amp_dtype, warmup=not round_)
            times[f"{who}_forward"] += time_forwards(model.eval(), forward_inputs, 1, amp_dtype, warmup=not round_)
            print(f"round {round_}: {who} train {times[f'{who}_train'][-1]:.3f} s, forward "
                  f"{times[f'{who}_forward'][-1]:.3f} s", flush=True)
    medians = {key: statistics.median(values) for key, values in times.items()}
    report = dict(medians, max_output_difference=differences["official"], train_crop=args.crop,
                  forward_size=args.official_forward_size, rounds=args.rounds,
                  train_speedup=medians["official_train"] / medians["ours_train"],
                  forward_speedup=medians["official_forward"] / medians["ours_forward"])
    if before_path:
        report.update(before_path=str(before_path), before_max_output_difference=differences["before"],
                      before_train_speedup=medians["before_train"] / medians["ours_train"],
                      before_forward_speedup=medians["before_forward"] / medians["ours_forward"])
    return report


def machine_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def markdown(report):
    lines = [f"Machine: {report['machine']}; torch {report['torch']}; crop {report['crop']}, batch "
             f"{report['batch']}, {report['amp']}{', channels_last' if report['channels_last'] else ''}"
             f"{', compiled' if report['compile'] else ''}; {report['configs']} configurations.", "",
             "| model | params (M) | train step (s) | img/s | peak mem (MB) | fwd s/MP | fwd GFLOP | GFLOP/s | of peak "
             "| EMA update ms (all buffers → changed) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["models"]:
        lines.append(f"| {row['model']} | {row['parameters'] / 1e6:.2f} | {row['train_step_s']:.3f} | "
                     f"{row['images_per_s']:.1f} | {row['peak_memory_mb']:.0f} | {row['forward_s_per_mp']:.3f} | "
                     f"{row['forward_gflop']:.2f} | {row['achieved_gflops']:.1f} | {row['fraction_of_peak']:.0%} | "
                     f"{row['ema_update_copying_all_buffers_ms']:.1f} → {row['ema_update_ms']:.1f} |")
    lines.append(f"\nPeak: {report['peak_gflops']:.0f} GFLOP/s ({report['peak_matmul']}² matmul, same dtype; on CPU the "
                 "faster of MKL and oneDNN).")
    if "loader" in report:
        loader = report["loader"]
        lines.append(f"\nLoader, one worker, {loader['crop']}² crops from {loader['photo']}: decoding per sample "
                     f"{loader['decode_per_sample']:.1f} samples/s; pixel cache {loader['pixel_cache']:.1f} "
                     f"samples/s ({loader['speedup']:.0f}x; first visit {loader['pixel_cache_first_visit']:.1f}).")
    if "official" in report:
        official = report["official"]
        lines.append(f"\nRestormer Base vs official (medians of {official['rounds']} interleaved rounds): train step "
                     f"{official['ours_train']:.2f} s vs {official['official_train']:.2f} s at {official['train_crop']}² "
                     f"({official['train_speedup']:.2f}x); forward {official['ours_forward']:.2f} s vs "
                     f"{official['official_forward']:.2f} s at {official['forward_size']}² "
                     f"({official['forward_speedup']:.2f}x); max output difference {official['max_output_difference']:.1e}.")
        if "before_path" in official:
            lines.append(f"\nRestormer Base vs {official['before_path']} (same rounds): train step "
                         f"{official['ours_train']:.2f} s vs {official['before_train']:.2f} s "
                         f"({official['before_train_speedup']:.2f}x); forward {official['ours_forward']:.2f} s vs "
                         f"{official['before_forward']:.2f} s ({official['before_forward_speedup']:.2f}x); max output "
                         f"difference {official['before_max_output_difference']:.1e}.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="*", choices=sorted(MODELS), default=list(MODELS),
                        help="default: all; none given: only the loader (and --official)")
    parser.add_argument("--quick", action="store_true", help="tiny configurations, small crops and photos")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--crop", type=int, default=None, help="square crop side (default 128 on CPU, 512 on CUDA)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (DAT's BatchNorm needs 2+)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps and forwards per model (medians)")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="default: bf16 on CUDA, none on CPU")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader measurement")
    parser.add_argument("--loader-crop", type=int, default=512)
    parser.add_argument("--loader-samples", type=int, default=10, help="samples per timed round without cache")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (loader, --official)")
    parser.add_argument("--official", default=None, metavar="PATH", help="official restormer_arch.py to compare")
    parser.add_argument("--before", default=None, metavar="PATH",
                        help="with --official: an earlier models/restormer.py (git show REV:models/restormer.py) "
                             "timed in the same interleaved rounds")
    parser.add_argument("--official-forward-size", type=int, default=256)
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--markdown", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    args.crop = args.crop or (32 if args.quick else 128 if device.type == "cpu" else 512)
    if args.quick:
        args.steps, args.rounds, args.loader_samples = 1, 1, 2
    peak_size = 256 if args.quick else 2048 if device.type == "cpu" else 8192
    peak = peak_matmul_flops(device, AMP_DTYPES[args.amp], peak_size)
    report = dict(machine=machine_name(device), torch=torch.__version__, device=str(device), crop=args.crop,
                  batch=args.batch, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
                  configs="tiny" if args.quick else "full", peak_gflops=peak / 1e9, peak_matmul=peak_size, models=[])
    for name in args.models:
        builder, full, tiny = MODELS[name]
        torch.manual_seed(0)
        row = bench_model(name, builder(**(tiny if args.quick else full)), args, device, peak)
        report["models"].append(row)
        print(f"{name}: {row['train_step_s']:.3f} s/step, {row['forward_s_per_mp']:.3f} s/MP, "
              f"{row['fraction_of_peak']:.0%} of peak", flush=True)
    if not args.no_loader:
        report["loader"] = bench_loader(args)
    if args.official:
        report["official"] = bench_official(args.official, args, device, args.before)
    table = markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return report


if __name__ == "__main__":
    main()
