"""Convert a weights or checkpoint file you trust into one that loads without unpickling code.

    python tools/convert_checkpoint.py mirror/real_denoising.pth real_denoising.safetensors
    python tools/convert_checkpoint.py colleague_run/last.pt colleague_last.pt

Running this command is the opt-in: IN is unpickled in full once, here (which can run code it holds,
as the error that sent you here said). What OUT holds depends on its suffix:

- ``.safetensors``: the model weights only, as ``--pretrained`` would pick them (EMA weights when the
  file has them, ``--no-ema`` for the raw ones; ``module.``/``_orig_mod.`` prefixes stripped);
- ``.pt`` / ``.pth``: the whole file, with numpy arrays turned into tensors and numpy scalars into
  Python numbers, so a training checkpoint still resumes and enhances. Any other object that is not
  plain data is an error naming it: convert to ``.safetensors`` instead.

OUT is then read back through the restricted loader, so it is known to load everywhere.
"""
import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_checkpoint  # noqa: E402
from utils.cli import run_cli  # noqa: E402

PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def plain_data(value, where: str):
    """``value`` with numpy arrays/scalars replaced by tensors/numbers; raises CheckpointError naming
    ``where`` and the type of the first object that the restricted unpickler would refuse."""
    if isinstance(value, np.generic):  # before the scalars: np.float64 is a float subclass
        return value.item()
    if isinstance(value, torch.Tensor) or type(value) in PLAIN_SCALARS:
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        items = ((key, plain_data(item, f"{where}[{key!r}]")) for key, item in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, (list, tuple, set)):
        items = [plain_data(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    kind = type(value)
    raise CheckpointError(f"{where} is a {kind.__module__}.{kind.__qualname__}, not plain data; "
                          "convert to a .safetensors file (the weights only) instead")


def convert(source, destination, prefer_ema: bool = True) -> None:
    """Write the restricted-safe version of ``source`` (trusted) to ``destination`` (see the docstring)."""
    source, destination = Path(source), Path(destination)
    content = load_checkpoint(source, trust=True)
    if destination.suffix == ".safetensors":
        from safetensors.torch import save_file
        weights = extract_state_dict(content, prefer_ema=prefer_ema)
        destination.parent.mkdir(parents=True, exist_ok=True)
        # clone: safetensors refuses tensors that share storage (tied weights, views of one buffer)
        save_file({name: tensor.detach().cpu().contiguous().clone() for name, tensor in weights.items()},
                  str(destination))
    elif destination.suffix in (".pt", ".pth"):
        atomic_save(plain_data(content, str(source)), destination)
    else:
        raise ValueError(f"{destination}: the output must end in .safetensors, .pt or .pth")
    load_checkpoint(destination, trust=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the trusted file to convert (.pt, .pth, or a run folder's last.pt)")
    parser.add_argument("destination", type=Path, help="OUT.safetensors (weights) or OUT.pt (everything)")
    parser.add_argument("--no-ema", action="store_true", help="for .safetensors: the raw weights, not the EMA ones")
    args = parser.parse_args(argv)
    convert(args.source, args.destination, prefer_ema=not args.no_ema)
    print(f"wrote {args.destination}: it loads without --trust-checkpoint")


if __name__ == "__main__":
    run_cli(main)
