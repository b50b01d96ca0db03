"""Enhance photos at full resolution with a trained checkpoint (or an ensemble of several).

    python enhance.py --checkpoint RUN/best.pt --input PHOTO_OR_FOLDER --out OUTDIR
    python enhance.py --checkpoint RUN --input shoot/ --out shoot_edited/ --amp bf16      # RUN/best.pt
    python enhance.py --checkpoint CV_RUN --input photo.jpg --out edited/                 # fold_*/best.pt ensemble
    python enhance.py --checkpoint deploy/model.onnx --input shoot/ --out edited/         # export.py: onnxruntime
    python enhance.py --checkpoint RUN --input shoot/ --out edited/ --ray [ADDRESS]       # Ray Data, local or a cluster

The model is rebuilt from the config stored in the checkpoint (EMA weights when present), and its
input is built as in training (preprocessing, extra feature channels). Photos run in overlapping tiles
(--tile, --overlap; --tile 0 runs each photo whole) blended without seams, so memory is bounded by
the tile size, not the photo. Each output keeps its photo's size, format, bit depth (16-bit PNG/TIFF
stay 16-bit) and EXIF/ICC metadata, under the same relative path in --out, named STEM+SUFFIX.EXT;
an input is never overwritten. Outputs are written atomically, and a photo whose output exists and
is newer than the photo is skipped (--overwrite redoes it), so a re-run after a crash does only the
rest; with --ray as without. Unreadable photos are reported and skipped; the exit status is 1 if any
photo failed (2 for a bad argument or checkpoint). --ray (utils/ray_enhance.py) runs the same
enhancement as a Ray Data pipeline: model actors, one per GPU or per --ray-cpus CPUs, with
byte-identical outputs; --input/--out may then also be pyarrow filesystem URIs (s3://...).
"""
import argparse
import time
from pathlib import Path

from tqdm import tqdm

from data.io import IMAGE_EXTENSIONS, read_image
from utils.cli import run_cli
from utils.inference import add_inference_args, enhancer_from_args, is_up_to_date, write_like


def list_photos(source: Path, exclude: Path = None) -> list:
    """(photo, path relative to ``source``'s folder) for a photo file or every photo below a folder
    (sorted; hidden files and anything under ``exclude``, e.g. the output folder, skipped)."""
    if not source.exists():
        raise FileNotFoundError(f"--input {source} does not exist")
    if source.is_file():
        if source.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"--input {source} is not a photo; accepted: {', '.join(sorted(IMAGE_EXTENSIONS))}")
        return [(source, Path(source.name))]
    # Outputs written into a sub-folder of the input folder must not be read back as photos next time.
    exclude = exclude.resolve() if exclude is not None and exclude.resolve() != source.resolve() else None
    photos = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in relative.parts)
                and not (exclude is not None and path.resolve().is_relative_to(exclude))):
            photos.append((path, relative))
    if not photos:
        raise ValueError(f"--input folder {source} holds no photos ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return photos


def plan_outputs(photos: list, out: Path, suffix: str) -> list:
    """(photo, destination) pairs; raises ValueError before any work if a destination is an input."""
    inputs = {photo.resolve() for photo, _ in photos}
    plan = []
    for photo, relative in photos:
        destination = out / relative.parent / f"{relative.stem}{suffix}{relative.suffix}"
        if destination.resolve() in inputs:
            raise ValueError(f"--out {out} with --suffix '{suffix}' would overwrite the input {photo}; "
                             "choose another --out or a --suffix")
        plan.append((photo, destination))
    return plan


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True,  # str: Path() would fold the // of an s3:// URI
                        help="a photo or a folder of photos (searched recursively)")
    parser.add_argument("--out", required=True,
                        help="output folder (created; same sub-folders as --input)")
    parser.add_argument("--suffix", default="", help="appended to each output's file stem, e.g. _hdr")
    parser.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality of the outputs (1-100)")
    parser.add_argument("--overwrite", action="store_true",
                        help="enhance every photo again (default: skip those whose output is newer than the photo)")
    add_inference_args(parser, checkpoint="required")
    scale = parser.add_argument_group("scale-out (Ray Data; pip install -r requirements-extras.txt)")
    scale.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="run on Ray: no ADDRESS starts a local Ray, an ADDRESS (HOST:6379) joins a cluster")
    scale.add_argument("--ray-cpus", type=int, default=1,
                       help="CPUs per model actor on nodes without a GPU (default 1: one actor per CPU)")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be in 1..100, got {args.quality}")
    if args.ray_cpus < 1:
        parser.error(f"--ray-cpus must be >= 1, got {args.ray_cpus}")
    if args.ray is not None:
        return enhance_on_ray(args)
    args.input, args.out = Path(args.input), Path(args.out)

    plan = plan_outputs(list_photos(args.input, exclude=args.out), args.out, args.suffix)
    todo = plan if args.overwrite else [(photo, out) for photo, out in plan if not is_up_to_date(photo, out)]
    if len(todo) < len(plan):
        print(f"skipping {len(plan) - len(todo)} photo(s) whose output is newer than the photo (--overwrite redoes them)")
    plan = todo
    enhancer = enhancer_from_args(args)
    failures, written, start = [], [], time.time()
    progress = tqdm(plan, unit="photo", desc="enhance", dynamic_ncols=True)
    for photo, destination in progress:
        try:
            write_like(photo, destination, enhancer.enhance(read_image(photo)), args.quality)
            written.append(destination)
        except (ValueError, OSError) as error:  # ImageReadError is a ValueError; OSError: a failed write
            failures.append(str(error) if str(photo) in str(error) else f"{photo}: {error}")
            progress.write(f"skipped: {error}")
    progress.close()
    seconds = time.time() - start
    print(f"enhanced {len(written)} photo(s) into {args.out} in {seconds:.1f} s "
          f"({seconds / max(len(plan), 1):.2f} s per photo)")
    if failures:
        raise SystemExit(f"error: {len(failures)} of {len(plan)} photo(s) failed: " + "; ".join(failures))
    return written


def enhance_on_ray(args) -> list:
    """enhance.py --ray: plan here (local folders as above, or pyarrow URIs), enhance on Ray."""
    from utils.ray_enhance import enhance_with_ray, is_uri, pending, ray_summary, remote_plan
    if is_uri(args.input) or is_uri(args.out):
        plan = remote_plan(str(args.input), str(args.out), args.suffix, IMAGE_EXTENSIONS)
    else:
        plan = plan_outputs(list_photos(Path(args.input), exclude=Path(args.out)), Path(args.out), args.suffix)
    todo = plan if args.overwrite else pending(plan)
    if len(todo) < len(plan):
        print(f"skipping {len(plan) - len(todo)} photo(s) whose output is newer than the photo (--overwrite redoes them)")
    # loaded once here on the CPU, so a bad flag or checkpoint ends as one line (exit 2) before Ray starts
    enhancer_from_args(argparse.Namespace(**{**vars(args), "device": "cpu"}))
    start = time.time()
    written, failures = enhance_with_ray(args, todo)
    print(ray_summary(len(todo), time.time() - start, failures))
    if failures:
        raise SystemExit(f"error: {len(failures)} of {len(todo)} photo(s) failed: " + "; ".join(failures))
    return written


if __name__ == "__main__":
    run_cli(main)
