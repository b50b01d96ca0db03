"""Per-region gradient of each loss term of the combined recipe: how hard each term pushes where.

For every pixel, |dL/dpred| summed over the channels, in units of L1's (so L1 is 1 wherever the
prediction is off), then its mean and 99th percentile over evaluate.py's regions of the *input*:
shadow (luma < 0.15), mid-tones, window (luma >= 0.85). The prediction is the as-shot input (what a
residual network starts from) or a folder of model outputs (e.g. evaluate.py --checkpoint's).

Reproduce README's "The saturation term" figures (demo validation set):

    OMP_NUM_THREADS=1 python tools/loss_gradients.py --data $REHDR_CACHE/demo-v1-seed0/val
    OMP_NUM_THREADS=1 python tools/loss_gradients.py --data $REHDR_CACHE/demo-v1-seed0/val --pred RUN/eval
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.io import read_image  # noqa: E402
from data.pairs import discover_pairs  # noqa: E402
from evaluate import region_masks  # noqa: E402
from losses import L1Loss, SaturationLoss, WindowAwareLoss  # noqa: E402

TERMS = {"l1": L1Loss(), "window": WindowAwareLoss(), "saturation (chroma)": SaturationLoss("chroma"),
         "saturation (weighted)": SaturationLoss("weighted"),
         "saturation (catalog)": SaturationLoss("catalog")}


def _stack(paths) -> torch.Tensor:
    return torch.stack([torch.from_numpy(read_image(path)).permute(2, 0, 1) for path in paths])


def region_gradients(pred: torch.Tensor, target: torch.Tensor, inp: torch.Tensor) -> dict:
    """{term: {region: (mean, p99)}} of the per-pixel gradient in units of L1's, 1 / (N H W)."""
    masks = region_masks(inp)
    masks["mid"] = ~(masks["window"] | masks["shadow"])
    table = {}
    for name, loss in TERMS.items():
        pred = pred.detach().clone().requires_grad_(True)
        loss(pred, target, inp).backward()
        per_pixel = pred.grad.abs().sum(dim=1, keepdim=True) * (pred.numel() // 3)
        table[name] = {region: (per_pixel[masks[region]].mean().item(), per_pixel[masks[region]].quantile(0.99).item())
                       for region in ("shadow", "mid", "window")}
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder with input/ and target/ (one split)")
    parser.add_argument("--pred", type=Path, help="model outputs named like the inputs (default: pred = input)")
    args = parser.parse_args(argv)
    pairs = discover_pairs(args.data)["train"]
    inp, target = _stack(p.input for p in pairs), _stack(p.target for p in pairs)
    pred = _stack(args.pred / p.input.name for p in pairs) if args.pred else inp
    print(f"{len(pairs)} images; pred = {args.pred or 'input'}; mean (p99) of |dL/dpred| per pixel, L1 = 1")
    print(f"{'term':24s}" + "".join(f"{region:>20s}" for region in ("shadow", "mid", "window")))
    for name, row in region_gradients(pred, target, inp).items():
        print(f"{name:24s}" + "".join(f"{mean:11.2f} ({p99:6.2f})" for mean, p99 in row.values()))


if __name__ == "__main__":
    main()
