"""Export a trained run for deployment: safetensors weights or an ONNX graph, each with config.json.

    python export.py --checkpoint RUN --format safetensors --out deploy/   # model.safetensors + config.json
    python export.py --checkpoint RUN --format onnx --out deploy/          # model.onnx + config.json, checked
    python enhance.py --checkpoint deploy/model.onnx --input shoot/ --out edited/   # onnxruntime

Both formats hold the weights enhance.py uses (EMA when the run has them); config.json holds the
architecture (class + constructor kwargs), input features and preprocessing, so enhance.py, evaluate.py
and ``utils.checkpoint.load_pretrained`` take the export in place of the run. ONNX: opset 17, dynamic
batch/height/width, H and W multiples of config['size_multiple'] (enhance.py pads its tiles; see
utils/export.py); right after writing, onnxruntime is compared with PyTorch on a random input and the
maximum difference printed (the export fails above 1e-4). Every architecture of models/ exports (DarkIR's
FFT block as real DFT matrix products); a network with an operator ONNX cannot express is refused in one
line naming the operator. Exit status 2 for a bad argument or checkpoint.
"""
import argparse
from pathlib import Path

from utils.checkpoint import add_trust_flag, set_trust_checkpoints
from utils.cli import run_cli
from utils.export import ONNX_OPSET, ONNX_TOLERANCE, export_onnx, export_safetensors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="a run folder (its best.pt, else last.pt) or a .pt file")
    parser.add_argument("--format", required=True, choices=("safetensors", "onnx"))
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    add_trust_flag(parser)
    args = parser.parse_args(argv)
    set_trust_checkpoints(args.trust_checkpoint)
    if args.format == "safetensors":
        written = export_safetensors(args.checkpoint, args.out)
    else:
        written, difference = export_onnx(args.checkpoint, args.out, opset=args.opset)
        print(f"onnx check: max |onnxruntime - PyTorch| = {difference:.2e} on a random photo "
              f"(limit {ONNX_TOLERANCE:g}, fp32, opset {args.opset})")
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    run_cli(main)
