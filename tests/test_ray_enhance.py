"""enhance.py --ray on a local Ray with 2 CPU actors: byte-identical to plain enhance.py, a broken photo
reported by name while the rest are written, and a re-run that redoes only what is missing or stale."""
import os

import pytest

from data.io import write_image
from tests.test_enhance import exif_with_artist, smooth_photo

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import enhance  # noqa: E402  (after the skip: the module is only useful with Ray)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray for the module (starting one costs seconds): 2 CPUs, a small object store, its
    temporary files under the test's tmp."""
    ray.init(num_cpus=2, object_store_memory=80 * 1024 ** 2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def test_ray_matches_plain_enhance_and_resumes(local_ray, conv_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    (photos / "kitchen").mkdir(parents=True)
    write_image(photos / "a.jpg", smooth_photo(40, 56), exif=exif_with_artist())
    write_image(photos / "kitchen" / "b.png", smooth_photo(48, 40, seed=1), bit_depth=16)
    write_image(photos / "c.tif", smooth_photo(36, 44, seed=2))
    write_image(photos / "d.jpg", smooth_photo(44, 52, seed=3))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    names = ["a_hdr.jpg", "c_hdr.tif", "d_hdr.jpg", "kitchen/b_hdr.png"]
    common = ["--checkpoint", str(conv_checkpoint), "--input", str(photos), "--suffix", "_hdr",
              "--tile", "32", "--overlap", "8", "--device", "cpu"]
    failures = []
    for out, extra in (("plain", []), ("ray", ["--ray", "--ray-cpus", "1"])):
        with pytest.raises(SystemExit) as failure:
            enhance.main(common + ["--out", str(tmp_path / out)] + extra)
        failures.append(str(failure.value.code))
    assert failures[0] == failures[1]  # same message: the broken photo by its own path, the rest written
    assert failures[1].startswith("error: 1 of 5 photo(s) failed: ") and f"'{photos / 'broken.jpg'}'" in failures[1]
    for name in names:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name

    (photos / "broken.jpg").unlink()
    out = tmp_path / "ray"
    (out / "d_hdr.jpg").unlink()                          # a run killed before this photo
    os.utime(out / "kitchen" / "b_hdr.png", (1, 1))       # an output older than its photo
    finished = {name: (out / name).stat().st_mtime_ns for name in ("a_hdr.jpg", "c_hdr.tif")}
    written = enhance.main(common + ["--out", str(out), "--ray"])
    assert sorted(str(path.relative_to(out)) for path in written) == ["d_hdr.jpg", "kitchen/b_hdr.png"]
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind
