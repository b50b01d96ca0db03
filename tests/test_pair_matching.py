"""data/pairs.py matches inputs to targets by name, not by position in each folder's listing."""
import cv2
import numpy as np

from data.io import read_image
from data.pairs import discover_pairs


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
