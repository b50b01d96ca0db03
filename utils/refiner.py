"""Training a colour refiner on a frozen backbone: the shared part of the train_elite_*refiner*.py recipes.

    backbone = FrozenBackbone.from_args(args, device)      # --backbone: frozen, hashed
    train_set, val_set = build_datasets(args, aligned=backbone.aligned_outputs)   # + "backbone" images
    ...
    inp, base, target = backbone.batch(batch, device)       # cached output (or --backbone-in-loop)
    refined = train_model(torch.cat([base, inp], 1))

The backbone's output is deterministic, so it is computed once per photo, at full resolution, through
the tiled inference enhance.py runs (:class:`utils.inference.NetworkModel`, the backbone's tiling
flags), and kept on disk as a 16-bit PNG (quantisation error <= 1/131070, far below what a refiner
learns). A cache file is named by the photo's content hash inside a folder named by the backbone's
SHA-256, tiling and AMP mode, so a changed backbone or photo gives a new name and is recomputed,
never reused; files are written atomically (temporary file + rename). The dataset then crops and
flips (input, backbone output, target) together.
"""
import os
import re
from pathlib import Path

import torch

from data.io import read_image, write_image
from models.refiner import ColorRefiner

from .checkpoint import CheckpointError, load_checkpoint
from .inference import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE, Tiling, file_sha256, load_backbone
from .training import autocast
from .validation import validate

CACHE_FOLDER = "backbone_outputs"


def add_refiner_args(parser, width: int = 32, num_blocks: int = 4, scale: int = 4) -> None:
    """The backbone flags and the refiner's size flags (defaults: the recipe's)."""
    group = parser.add_argument_group("backbone (frozen)")
    group.add_argument("--backbone", default=None, metavar="PATH",
                       help="the frozen backbone: a Restormer-family run folder or .pt of this codebase (EMA "
                            "weights preferred), or an official Restormer .pth")
    group.add_argument("--backbone-cache", default=None, metavar="DIR",
                       help=f"where backbone outputs are cached (default: {CACHE_FOLDER}/ next to the backbone file)")
    group.add_argument("--backbone-tile", type=int, default=DEFAULT_TILE,
                       help=f"tile size of the backbone's inference, as enhance.py --tile (default {DEFAULT_TILE})")
    group.add_argument("--backbone-overlap", type=int, default=DEFAULT_OVERLAP)
    group.add_argument("--backbone-in-loop", action="store_true",
                       help="run the backbone on every training crop instead of the cache (slower; for "
                            "measuring the cache's speed-up)")
    model = parser.add_argument_group("model (ColorRefiner)")
    model.add_argument("--refiner-width", type=int, default=width, help="channels of the refiner blocks")
    model.add_argument("--refiner-blocks", type=int, default=num_blocks, help="blocks at the reduced resolution")
    model.add_argument("--refiner-scale", type=int, default=scale, help="downsampling of the context path")


def refiner_kwargs(args) -> dict:
    """ColorRefiner constructor arguments from :func:`add_refiner_args`' flags."""
    return dict(in_channels=6, out_channels=3, width=args.refiner_width, num_blocks=args.refiner_blocks,
                scale=args.refiner_scale)


def build_refiner(args) -> ColorRefiner:
    return ColorRefiner(**refiner_kwargs(args))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class FrozenBackbone:
    """The frozen backbone of a refiner run: its network, file, SHA-256 and output cache."""

    def __init__(self, member, file: Path, sha256: str, cache_dir, in_loop: bool = False):
        self.member, self.file, self.sha256, self.in_loop = member, Path(file), sha256, in_loop
        tiling = member.tiling
        self.cache_dir = Path(cache_dir) / f"{sha256[:16]}-tile{tiling.tile}-overlap{tiling.overlap}-{member.amp}"
        self.computed = 0  # backbone calls made by this process (the cache's test)

    @classmethod
    def from_args(cls, args, device) -> "FrozenBackbone":
        """Load --backbone (one-line errors, see :func:`utils.inference.load_backbone`), print what it is,
        and refuse a --resume whose refiner was trained on another backbone file."""
        tiles_per_pass = DEFAULT_BATCH_SIZE if torch.device(device).type == "cuda" else 1
        member, file, sha256 = load_backbone(args.backbone, device, args.amp,
                                             Tiling(args.backbone_tile, args.backbone_overlap, tiles_per_pass))
        if args.resume:
            check_resume_backbone(args.resume, sha256, file)
        print(f"backbone (frozen): {member.describe()}, SHA-256 {sha256[:12]}")
        cache_dir = args.backbone_cache or file.parent / CACHE_FOLDER
        return cls(member, file, sha256, cache_dir, in_loop=args.backbone_in_loop)

    @property
    def model(self) -> torch.nn.Module:
        return self.member.model

    def record(self) -> dict:
        """What a refiner checkpoint keeps of its backbone (``config['refiner']``): path and hash."""
        return {"backbone": str(self.file.resolve()), "backbone_sha256": self.sha256}

    def output_path(self, photo) -> Path:
        """The cache file of ``photo``'s backbone output (named by the photo's content hash)."""
        photo = Path(photo)
        return self.cache_dir / f"{_safe_name(photo.stem)}-{file_sha256(photo)[:16]}.png"

    def output(self, photo) -> Path:
        """The cache file of ``photo``'s backbone output, computed (whole photo, tiled) if missing."""
        path = self.output_path(photo)
        if not path.is_file():
            enhanced = self.member.predict(read_image(photo))[0].permute(1, 2, 0).cpu().numpy()
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
            write_image(temporary, enhanced, bit_depth=16)
            os.replace(temporary, path)
            self.computed += 1
        return path

    def aligned_outputs(self, pairs, split: str = "val") -> dict:
        """``{'backbone': [cache file per pair]}`` for :func:`data.build.build_datasets`' ``aligned``;
        nothing for the training split under --backbone-in-loop (the backbone runs on the crops)."""
        if self.in_loop and split == "train":
            return {}
        before = self.computed
        files = [self.output(pair.input) for pair in pairs]
        print(f"backbone outputs: {self.computed - before} computed, {len(files) - self.computed + before} "
              f"from the cache {self.cache_dir}")
        return {"backbone": files}

    def batch(self, batch: dict, device, amp: str = "none"):
        """``(input, backbone output, target)`` of a training batch on ``device``: the cached output,
        or under --backbone-in-loop the backbone run on the crop now."""
        inp = batch["input"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        if self.in_loop:
            with torch.no_grad(), autocast(device, amp):
                base = self.model(inp).float().clamp(0, 1)
        else:
            base = batch["backbone"].to(device, non_blocking=True)
        return inp, base, target


def refiner_inputs(batch: dict) -> torch.Tensor:
    """The refiner's input of a batch: backbone output, then the photo (validation's ``model_inputs``)."""
    return torch.cat([batch["backbone"], batch["input"]], 1)


class BackboneOutput(torch.nn.Module):
    """The backbone's (cached) output channels of a refiner input: validation of the backbone alone."""

    def forward(self, x):
        return x[:, :3]


def log_backbone_baseline(run) -> dict:
    """Score the backbone alone on the validation set (its cached full-resolution outputs), logged as
    split 'backbone': the row a refiner must beat, under the same validation."""
    metrics, _ = validate(BackboneOutput(), run.val_loader, run.device, model_inputs=refiner_inputs, num_samples=0)
    run.logger.log(run.step, "backbone", metrics)
    print(f"backbone alone: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, L1 {metrics['l1']:.4f}")
    return metrics


def check_resume_backbone(resume, sha256: str, file) -> None:
    """A refiner resumes only on the backbone file it was trained on (same SHA-256)."""
    checkpoint_file = Path(resume) / "last.pt" if Path(resume).is_dir() else Path(resume)  # as TrainingState.resume
    record = (load_checkpoint(checkpoint_file).get("config") or {}).get("refiner")
    if record is None:
        raise CheckpointError(f"{checkpoint_file} is not a refiner checkpoint (its config has no 'refiner' record)")
    if record["backbone_sha256"] != sha256:
        raise CheckpointError(f"{checkpoint_file} was trained on backbone {record['backbone']} (SHA-256 "
                              f"{record['backbone_sha256'][:12]}...), but --backbone {file} has SHA-256 "
                              f"{sha256[:12]}...: pass the same, unchanged backbone to resume")
