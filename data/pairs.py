"""Finding (input, target) photo pairs in a `--data` folder, checking them and splitting off validation.

Accepted layouts of a folder DATA:
  1. DATA/<input folder> + DATA/<target folder>, named by `INPUT_ALIASES` / `TARGET_ALIASES`
     (case-insensitive); pairs are matched by relative path and file stem, so sub-folders nest and
     extensions may differ (input/a/x.jpg <-> target/a/x.png).
  2. DATA/train/ (+ optionally DATA/val/), each holding layout 1: gives the train and val splits.
  3. One flat folder of ID_src.<ext> / ID_tar.<ext> files. A `train.jsonl` manifest of
     {"src": ..., "tar": ...} lines (paths relative to the manifest's folder), when present, defines
     the pairs instead, and a `val.jsonl` beside it the validation pairs.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.io import IMAGE_EXTENSIONS, read_image_size

INPUT_ALIASES = ("input", "inputs", "source", "src", "lq", "low")
TARGET_ALIASES = ("target", "targets", "gt", "hq", "high", "expert")
TRAIN_SPLIT_NAMES = ("train", "training")
VAL_SPLIT_NAMES = ("val", "valid", "validation")
TRAIN_MANIFEST = "train.jsonl"
VAL_MANIFEST = "val.jsonl"
FLAT_INPUT_SUFFIX = "_src"
FLAT_TARGET_SUFFIX = "_tar"

# How many unmatched files an error message names before it only counts the rest.
_NAMED_IN_ERRORS = 3


class DataLayoutError(ValueError):
    """A data folder is missing, empty, laid out in an unknown way or holds unmatched/missing files."""


@dataclass(frozen=True)
class ImagePair:
    """One training example: an as-shot `input` photo, its edited `target`, and a unique `name`
    (the relative path without extension) used for logs and output files."""

    input: Path
    target: Path
    name: str


def _layouts_help(target_aliases):
    """The accepted layouts in one line, for error messages."""
    return (
        f"accepted layouts: (1) an input and a target folder, (2) train/ and val/ folders each holding "
        f"them, (3) flat ID{FLAT_INPUT_SUFFIX}.<ext> + ID{FLAT_TARGET_SUFFIX}.<ext> files, optionally "
        f"listed in {TRAIN_MANIFEST}; input folder names: {', '.join(INPUT_ALIASES)}; "
        f"target folder names: {', '.join(target_aliases)}"
    )


def _visible_children(folder):
    """Entries of `folder`, sorted, without hidden ones ('.DS_Store', macOS '._x.jpg' forks...)."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _child_folder(folder, names, role):
    """The one sub-folder of `folder` whose lower-cased name is in `names`, or None."""
    matches = [entry for entry in _visible_children(folder) if entry.is_dir() and entry.name.lower() in names]
    if len(matches) > 1:
        found = ", ".join(match.name for match in matches)
        raise DataLayoutError(f"'{folder}' has several {role} folders ({found}); keep exactly one")
    return matches[0] if matches else None


def _is_image(path):
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_by_key(folder):
    """Map 'relative/path/stem' -> image path for every image below `folder` (hidden entries skipped)."""
    images = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file() or not _is_image(path):
            continue
        key = relative.with_suffix("").as_posix()
        if key in images:
            raise DataLayoutError(
                f"'{folder}' has two images for '{key}' ({images[key].name} and {path.name}); keep one"
            )
        images[key] = path
    return images


def _describe_unmatched(keys, images):
    """'N <files>: a, b, c (+M more)' for error messages."""
    shown = ", ".join(str(images[key]) for key in keys[:_NAMED_IN_ERRORS])
    more = f" (+{len(keys) - _NAMED_IN_ERRORS} more)" if len(keys) > _NAMED_IN_ERRORS else ""
    return f"{shown}{more}"


def _match(inputs, targets, input_place, target_place):
    """Pairs from two {key: path} maps; every input needs a target and every target an input."""
    if not inputs and not targets:
        raise DataLayoutError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {input_place} or {target_place}")
    inputs_alone = sorted(set(inputs) - set(targets))
    targets_alone = sorted(set(targets) - set(inputs))
    problems = []
    if inputs_alone:
        problems.append(
            f"{len(inputs_alone)} input image(s) in {input_place} have no matching target in {target_place}: "
            f"{_describe_unmatched(inputs_alone, inputs)}"
        )
    if targets_alone:
        problems.append(
            f"{len(targets_alone)} target image(s) in {target_place} have no matching input in {input_place}: "
            f"{_describe_unmatched(targets_alone, targets)}"
        )
    if problems:
        raise DataLayoutError("; ".join(problems) + " (pairs match by relative path and file stem)")
    return [ImagePair(input=inputs[key], target=targets[key], name=key) for key in sorted(inputs)]


def _folder_pairs(folder, target_aliases):
    """Layout 1 inside `folder`, or None when it has neither an input nor a target folder."""
    input_folder = _child_folder(folder, INPUT_ALIASES, "input")
    target_folder = _child_folder(folder, target_aliases, "target")
    if input_folder is None and target_folder is None:
        return None
    if target_folder is None:
        raise DataLayoutError(
            f"'{folder}' has the input folder '{input_folder.name}' but no target folder "
            f"(accepted names: {', '.join(target_aliases)})"
        )
    if input_folder is None:
        raise DataLayoutError(
            f"'{folder}' has the target folder '{target_folder.name}' but no input folder "
            f"(accepted names: {', '.join(INPUT_ALIASES)})"
        )
    return _match(
        _images_by_key(input_folder), _images_by_key(target_folder), f"'{input_folder}'", f"'{target_folder}'"
    )


def _split_folder_pairs(split_folder, target_aliases):
    """Layout 1 inside a train/ or val/ folder, which must hold it."""
    pairs = _folder_pairs(split_folder, target_aliases)
    if pairs is None:
        raise DataLayoutError(
            f"'{split_folder}' has no input/target folders (input names: {', '.join(INPUT_ALIASES)}; "
            f"target names: {', '.join(target_aliases)})"
        )
    return pairs


def _strip_suffix(stem, suffix):
    """`stem` without a trailing `suffix` (case-insensitive), or None when it does not end with it."""
    return stem[: -len(suffix)] if stem.lower().endswith(suffix) else None


def _flat_pairs(folder):
    """Layout 3 without manifest: ID_src.<ext> / ID_tar.<ext> files directly in `folder`, or None."""
    inputs, targets = {}, {}
    for path in _visible_children(folder):
        if not path.is_file() or not _is_image(path):
            continue
        for suffix, images in ((FLAT_INPUT_SUFFIX, inputs), (FLAT_TARGET_SUFFIX, targets)):
            key = _strip_suffix(path.stem, suffix)
            if key is None:
                continue
            if key in images:
                raise DataLayoutError(
                    f"'{folder}' has two images for '{key}{suffix}' ({images[key].name} and {path.name}); keep one"
                )
            images[key] = path
    if not inputs and not targets:
        return None
    place = f"'{folder}'"
    return _match(inputs, targets, place, place)


def _manifest_pairs(manifest):
    """Pairs listed in a JSON-lines manifest of {"src": ..., "tar": ...} records."""
    folder = manifest.parent
    pairs = []
    lines = manifest.read_text(encoding="utf-8").splitlines()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"manifest '{manifest}' line {line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataLayoutError(f"{where} is not valid JSON ({error.msg})") from error
        if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("src", "tar")):
            raise DataLayoutError(f'{where}: expected an object {{"src": "<path>", "tar": "<path>"}}')
        input_path, target_path = folder / record["src"], folder / record["tar"]
        for path in (input_path, target_path):
            if not path.is_file():
                raise DataLayoutError(f"{where} names a missing file '{path}'")
        stem_path = Path(record["src"]).with_suffix("")
        name = (stem_path.parent / (_strip_suffix(stem_path.name, FLAT_INPUT_SUFFIX) or stem_path.name)).as_posix()
        pairs.append(ImagePair(input=input_path, target=target_path, name=name))
    if not pairs:
        raise DataLayoutError(f"manifest '{manifest}' lists no pairs")
    return sorted(pairs, key=_pair_order)


def _pair_order(pair):
    return pair.name, str(pair.input), str(pair.target)


def discover_pairs(root, target_aliases=None, flag="--data"):
    """Find the image pairs in a data folder (layouts in the module docstring).

    Returns {'train': list[ImagePair], 'val': list[ImagePair] or None}; 'val' is None unless the layout
    has its own validation split. Lists are sorted by name. `target_aliases` replaces
    `TARGET_ALIASES` (pass `TARGET_ALIASES + ("expertc",)` to extend it); `flag` names the
    command-line option in error messages. Raises `DataLayoutError` with a one-line message.
    """
    target_aliases = TARGET_ALIASES if target_aliases is None else tuple(alias.lower() for alias in target_aliases)
    root = Path(root)
    if not root.exists():
        raise DataLayoutError(f"{flag} path '{root}' does not exist")
    if not root.is_dir():
        raise DataLayoutError(f"{flag} path '{root}' is not a folder; {_layouts_help(target_aliases)}")
    if not _visible_children(root):
        raise DataLayoutError(f"{flag} folder '{root}' is empty; {_layouts_help(target_aliases)}")

    pairs = _folder_pairs(root, target_aliases)
    if pairs is not None:
        return {"train": pairs, "val": None}

    train_folder = _child_folder(root, TRAIN_SPLIT_NAMES, "train")
    if train_folder is not None:
        val_folder = _child_folder(root, VAL_SPLIT_NAMES, "validation")
        return {
            "train": _split_folder_pairs(train_folder, target_aliases),
            "val": None if val_folder is None else _split_folder_pairs(val_folder, target_aliases),
        }

    train_manifest, val_manifest = root / TRAIN_MANIFEST, root / VAL_MANIFEST
    if train_manifest.is_file():
        return {
            "train": _manifest_pairs(train_manifest),
            "val": _manifest_pairs(val_manifest) if val_manifest.is_file() else None,
        }

    pairs = _flat_pairs(root)
    if pairs is not None:
        return {"train": pairs, "val": None}
    raise DataLayoutError(f"{flag} folder '{root}' has no recognisable layout; {_layouts_help(target_aliases)}")


def check_pairs(pairs):
    """Read every image header (no decoding) and check that each input and its target have one size.

    Returns the (height, width) of each pair, in order. Raises `ImageReadError` naming an unreadable
    file and `DataLayoutError` naming a pair whose two images differ in size.
    """
    sizes = []
    for pair in pairs:
        input_size = read_image_size(pair.input)
        target_size = read_image_size(pair.target)
        if input_size != target_size:
            raise DataLayoutError(
                f"pair '{pair.name}': input '{pair.input}' is {input_size[0]}x{input_size[1]} but target "
                f"'{pair.target}' is {target_size[0]}x{target_size[1]} (height x width); they must match"
            )
        sizes.append(input_size)
    return sizes


def split_pairs(pairs, val_fraction, seed):
    """Split pairs into (train, val) at random, reproducibly.

    The split depends only on the set of pairs, `val_fraction` and `seed` (pairs are sorted by name
    first, so the filesystem's listing order does not matter). With `val_fraction` > 0 and at least 2
    pairs, val gets round(n * val_fraction) pairs, at least 1 and at most n - 1. Both lists are sorted.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(pairs, key=_pair_order)
    count = len(ordered)
    val_count = round(count * val_fraction)
    if val_fraction > 0 and count >= 2:
        val_count = max(val_count, 1)
    val_count = min(val_count, max(count - 1, 0))
    val_positions = set(np.random.default_rng(seed).permutation(count)[:val_count].tolist())
    train = [pair for position, pair in enumerate(ordered) if position not in val_positions]
    val = [pair for position, pair in enumerate(ordered) if position in val_positions]
    return train, val


def resolve_datasets_pairs(data, val_data=None, val_fraction=0.1, seed=0, target_aliases=None):
    """The (train_pairs, val_pairs) a training script uses, from its --data and --val-data folders.

    `val_data` (any layout), when given, supplies every validation pair and `data`'s train pairs are
    trained on; else a layout with its own validation split (train/ + val/, or val.jsonl) gives both;
    else `split_pairs(data's pairs, val_fraction, seed)`. Sizes are not checked here: see `check_pairs`.
    """
    found = discover_pairs(data, target_aliases, flag="--data")
    if val_data is not None:
        held_out = discover_pairs(val_data, target_aliases, flag="--val-data")
        return found["train"], sorted(held_out["train"] + (held_out["val"] or []), key=_pair_order)
    if found["val"] is not None:
        return found["train"], found["val"]
    return split_pairs(found["train"], val_fraction, seed)
