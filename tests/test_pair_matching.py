"""data/pairs.py: matching inputs to targets by name (not by position in a listing), its error messages, the
manifest, the splits and resolve_datasets_pairs' defaults."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.io import IMAGE_EXTENSIONS, read_image
from data.pairs import (
    INPUT_ALIASES,
    TARGET_ALIASES,
    DataLayoutError,
    ImagePair,
    discover_pairs,
    resolve_datasets_pairs,
    split_pairs,
)


def test_pairs_whose_listings_sort_differently_still_match_by_name(tmp_path):
    # sorted listings: input room.JPG < room.b.JPG, but target room.b.png < room.png
    (tmp_path / "input").mkdir()
    (tmp_path / "target").mkdir()
    for value, name in ((40, "room"), (200, "room.b"), (120, "attic")):
        image = np.full((8, 8, 3), value, np.uint8)
        cv2.imwrite(str(tmp_path / "input" / f"{name}.JPG"), image)
        cv2.imwrite(str(tmp_path / "target" / f"{name}.png"), image)
    pairs = discover_pairs(tmp_path)["train"]
    assert [pair.name for pair in pairs] == ["attic", "room", "room.b"]
    for pair in pairs:
        assert pair.input.name.rsplit(".", 1)[0] == pair.target.stem == pair.name
        assert abs(read_image(pair.input).mean() - read_image(pair.target).mean()) < 0.02


# The tests below build layouts of empty image-named files: finding pairs reads names, never pixels.
def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def pair_folders(root, names, input_name="input", target_name="target"):
    for name in names:
        touch(root / input_name / f"{name}.png")
        touch(root / target_name / f"{name}.png")


def layout_error(root, **kwargs):
    with pytest.raises(DataLayoutError) as raised:
        discover_pairs(root, **kwargs)
    return str(raised.value)


def test_unmatched_message_names_both_folders_joins_problems_and_adds_no_count_for_three(tmp_path):
    pair_folders(tmp_path, ["shared"])
    for name in ("a", "b", "c"):
        touch(tmp_path / "input" / f"{name}.png")
    touch(tmp_path / "target" / "lonely.png")
    inputs, targets = tmp_path / "input", tmp_path / "target"
    assert layout_error(tmp_path) == (
        f"3 input image(s) in '{inputs}' have no matching target in '{targets}': "
        f"{inputs / 'a.png'}, {inputs / 'b.png'}, {inputs / 'c.png'}; "
        f"1 target image(s) in '{targets}' have no matching input in '{inputs}': {targets / 'lonely.png'}"
        " (pairs match by relative path and file stem)"
    )


def test_inputs_with_an_empty_target_folder_are_reported_unmatched(tmp_path):
    touch(tmp_path / "input" / "a.png")
    (tmp_path / "target").mkdir()
    assert "1 input image(s)" in layout_error(tmp_path)


def test_no_images_message_lists_the_extensions_and_both_folders(tmp_path):
    (tmp_path / "input").mkdir()
    (tmp_path / "target").mkdir()
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    assert layout_error(tmp_path) == f"no images ({extensions}) in '{tmp_path / 'input'}' or '{tmp_path / 'target'}'"


def test_flat_inputs_without_any_target_are_reported_unmatched_in_that_folder(tmp_path):
    touch(tmp_path / "1_src.jpg")
    message = layout_error(tmp_path)
    assert message.startswith(f"1 input image(s) in '{tmp_path}' have no matching target in '{tmp_path}': ")


def test_flat_layout_pairs_ignore_non_image_files_and_have_no_val(tmp_path):
    for name in ("1", "2"):
        touch(tmp_path / f"{name}_src.jpg")
        touch(tmp_path / f"{name}_tar.png")
    touch(tmp_path / "0_readme.txt")  # listed first: scanning goes on past it
    touch(tmp_path / "3_src.txt")
    found = discover_pairs(tmp_path)
    assert found == {
        "train": [
            ImagePair(tmp_path / "1_src.jpg", tmp_path / "1_tar.png", "1"),
            ImagePair(tmp_path / "2_src.jpg", tmp_path / "2_tar.png", "2"),
        ],
        "val": None,
    }


def test_flat_duplicate_message_names_the_folder_key_and_both_files(tmp_path):
    touch(tmp_path / "1_src.jpg")
    touch(tmp_path / "1_src.png")
    touch(tmp_path / "1_tar.png")
    assert layout_error(tmp_path) == f"'{tmp_path}' has two images for '1_src' (1_src.jpg and 1_src.png); keep one"


def test_folder_duplicate_message_names_the_folder_key_and_both_files(tmp_path):
    pair_folders(tmp_path, ["a"])
    touch(tmp_path / "input" / "room" / "a.jpg")
    touch(tmp_path / "input" / "room" / "a.png")
    assert layout_error(tmp_path) == (
        f"'{tmp_path / 'input'}' has two images for 'room/a' (a.jpg and a.png); keep one"
    )


def test_images_in_hidden_sub_folders_are_skipped(tmp_path):
    pair_folders(tmp_path, ["a"])
    touch(tmp_path / "input" / ".thumbnails" / "b.png")
    assert [pair.name for pair in discover_pairs(tmp_path)["train"]] == ["a"]


def test_two_target_folders_message_says_target(tmp_path):
    pair_folders(tmp_path, ["a"], target_name="gt")
    pair_folders(tmp_path, ["a"])
    assert layout_error(tmp_path) == f"'{tmp_path}' has several target folders (gt, target); keep exactly one"


def test_missing_folder_messages_list_the_accepted_names(tmp_path):
    touch(tmp_path / "input" / "a.png")
    assert layout_error(tmp_path) == (
        f"'{tmp_path}' has the input folder 'input' but no target folder (accepted names: {', '.join(TARGET_ALIASES)})"
    )
    other = tmp_path / "other"
    touch(other / "gt" / "a.png")
    assert layout_error(other) == (
        f"'{other}' has the target folder 'gt' but no input folder (accepted names: {', '.join(INPUT_ALIASES)})"
    )


def test_split_folder_without_input_target_folders_lists_both_name_sets(tmp_path):
    touch(tmp_path / "train" / "a.png")
    assert layout_error(tmp_path) == (
        f"'{tmp_path / 'train'}' has no input/target folders (input names: {', '.join(INPUT_ALIASES)}; "
        f"target names: {', '.join(TARGET_ALIASES)})"
    )


def test_not_a_folder_message_names_the_flag_path_and_the_layouts(tmp_path):
    file = touch(tmp_path / "photo.jpg")
    message = layout_error(file, flag="--val-data")
    assert message.startswith(f"--val-data path '{file}' is not a folder; accepted layouts: (1) an input")
    names = f"input folder names: {', '.join(INPUT_ALIASES)}; target folder names: {', '.join(TARGET_ALIASES)}"
    assert message.endswith(names)


def test_several_train_or_validation_folders_are_named_by_their_role(tmp_path):
    pair_folders(tmp_path / "train", ["a"])
    pair_folders(tmp_path / "training", ["a"])
    assert layout_error(tmp_path) == f"'{tmp_path}' has several train folders (train, training); keep exactly one"
    other = tmp_path / "other"
    pair_folders(other / "train", ["a"])
    pair_folders(other / "val", ["b"])
    pair_folders(other / "valid", ["c"])
    assert layout_error(other) == f"'{other}' has several validation folders (val, valid); keep exactly one"


def manifest_line(source, target):
    return json.dumps({"src": source, "tar": target})


def test_manifest_pairs_keep_their_input_and_read_past_blank_lines_without_val_manifest(tmp_path):
    for name in ("1", "2"):
        touch(tmp_path / f"{name}_src.jpg")
        touch(tmp_path / f"{name}_tar.jpg")
    lines = [manifest_line("1_src.jpg", "1_tar.jpg"), "", manifest_line("2_src.jpg", "2_tar.jpg")]
    (tmp_path / "train.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert discover_pairs(tmp_path) == {
        "train": [
            ImagePair(tmp_path / "1_src.jpg", tmp_path / "1_tar.jpg", "1"),
            ImagePair(tmp_path / "2_src.jpg", tmp_path / "2_tar.jpg", "2"),
        ],
        "val": None,
    }


def test_manifest_pairs_of_one_name_sort_by_input_then_target(tmp_path):
    for name in ("a_src.png", "a_src.jpg", "b.jpg", "c.jpg"):
        touch(tmp_path / name)
    records = (("a_src.png", "c.jpg"), ("a_src.jpg", "c.jpg"), ("a_src.jpg", "b.jpg"))
    lines = [manifest_line(source, target) for source, target in records]
    (tmp_path / "train.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert [(pair.input.name, pair.target.name) for pair in discover_pairs(tmp_path)["train"]] == [
        ("a_src.jpg", "b.jpg"), ("a_src.jpg", "c.jpg"), ("a_src.png", "c.jpg"),
    ]


def test_empty_manifest_message_names_the_manifest(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n\n", encoding="utf-8")
    assert layout_error(tmp_path) == f"manifest '{tmp_path / 'train.jsonl'}' lists no pairs"


def test_resolve_defaults_hold_out_a_tenth_with_seed_0(tmp_path):
    pair_folders(tmp_path, [f"f{index}" for index in range(20)])
    pairs = discover_pairs(tmp_path)["train"]
    assert split_pairs(pairs, 0.1, 0) != split_pairs(pairs, 0.1, 1)  # the seed matters for these pairs
    assert resolve_datasets_pairs(tmp_path) == split_pairs(pairs, 0.1, 0)


def test_resolve_passes_target_aliases_to_both_folders(tmp_path):
    pair_folders(tmp_path / "data", ["a"], target_name="expertc")
    pair_folders(tmp_path / "held", ["b"], target_name="expertc")
    aliases = TARGET_ALIASES + ("expertc",)
    train, val = resolve_datasets_pairs(tmp_path / "data", val_data=tmp_path / "held", target_aliases=aliases)
    assert [pair.name for pair in train] == ["a"] and [pair.name for pair in val] == ["b"]


def test_resolve_names_the_data_flag_in_errors(tmp_path):
    with pytest.raises(DataLayoutError) as raised:
        resolve_datasets_pairs(tmp_path / "missing")
    assert str(raised.value) == f"--data path '{tmp_path / 'missing'}' does not exist"


def test_split_keeps_one_val_pair_for_small_fractions_and_none_of_a_single_pair():
    pairs = [ImagePair(Path(f"/in/{index}.png"), Path(f"/tar/{index}.png"), str(index)) for index in range(3)]
    assert [len(part) for part in split_pairs(pairs, 0.01, seed=0)] == [2, 1]
    assert [len(part) for part in split_pairs(pairs[:1], 0.9, seed=0)] == [1, 0]
