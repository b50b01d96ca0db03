"""enhance.py --ray: the same enhancement as a Ray Data pipeline, on this machine or a Ray cluster.

    python enhance.py --checkpoint RUN --input SRC --out DST --ray              # a local Ray on this machine
    python enhance.py --checkpoint RUN --input SRC --out DST --ray HOST:6379    # join a cluster (ray start --head)

Pipeline: the photo files are read in parallel (``ray.data.read_binary_files``: I/O tasks, no CPU
reserved, so they never wait for the model actors), then ``map_batches`` hands them to a pool of model
actors, each holding the model once: one per GPU of the cluster, or on CPU-only clusters one per
``--ray-cpus`` CPUs. An actor decodes, enhances (the same tiling, blending and executor as plain
enhance.py: it builds its :class:`utils.inference.Enhancer` from the same flags) and writes the output
with :func:`utils.inference.write_like` (same name, format, bit depth, metadata; atomic), so outputs are
byte-identical to the single-process path. Rows carry only paths and a status back to the driver.

SRC and DST: local paths, or URIs that ``pyarrow.fs.FileSystem.from_uri`` opens (``s3://``, ``gs://``,
``hdfs://``); remote photos are staged through a temporary local file in the actor. The driver plans
the outputs (skipping those newer than their input) before any work, so a re-run after a crash
does only the rest.
"""
import tempfile
from pathlib import Path

import numpy as np

RAY_HINT = "pip install -r requirements-extras.txt (ray[data], pyarrow)"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data needs pyarrow and pandas)
    except ImportError as error:
        raise ImportError(f"--ray needs Ray Data: {RAY_HINT}") from error
    return ray


def is_uri(path) -> bool:
    return "://" in str(path)


def filesystem(path):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs
    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(str(path))
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def _mtime(fs, path):
    import pyarrow.fs
    info = fs.get_file_info(path)
    return info.mtime_ns if info.type == pyarrow.fs.FileType.File else None


def remote_plan(source: str, out: str, suffix: str, extensions) -> list:
    """(photo, destination) URIs below a folder URI, as :func:`enhance.plan_outputs` names them."""
    import pyarrow.fs
    fs, root = filesystem(source)
    _, out_root = filesystem(out)
    scheme = str(source).split("://")[0] + "://"
    out_scheme = str(out).split("://")[0] + "://"
    plan = []
    for info in sorted(fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)), key=lambda i: i.path):
        relative = Path(info.path).relative_to(root)
        if (info.type == pyarrow.fs.FileType.File and relative.suffix.lower() in extensions
                and not any(part.startswith(".") for part in relative.parts)):
            name = relative.parent / f"{relative.stem}{suffix}{relative.suffix}"
            plan.append((scheme + info.path, out_scheme + f"{out_root.rstrip('/')}/{name.as_posix()}"))
    if not plan:
        raise ValueError(f"--input folder {source} holds no photos")
    return plan


def pending(plan: list) -> list:
    """The (photo, destination) pairs whose destination is missing or older than the photo."""
    todo = []
    for photo, destination in plan:
        in_fs, in_path = filesystem(photo)
        out_fs, out_path = filesystem(destination)
        done = _mtime(out_fs, out_path)
        if done is None or done < _mtime(in_fs, in_path):
            todo.append((photo, destination))
    return todo


class EnhanceActor:
    """One model per actor: enhances each photo of a batch and writes its output; returns per photo
    its path and an error message ('' when written)."""

    def __init__(self, args, destinations: dict, threads: int):
        import torch

        from .inference import enhancer_from_args
        if threads:
            torch.set_num_threads(threads)
        self.enhancer = enhancer_from_args(args)
        self.destinations, self.quality = destinations, args.quality

    def __call__(self, batch: dict) -> dict:
        errors = []
        for path, data in zip(batch["path"], batch["bytes"]):
            try:
                self._enhance_one(path, bytes(data))
                errors.append("")
            except (ValueError, OSError) as error:  # ImageReadError is a ValueError; OSError: a failed write
                errors.append(str(error))
        return {"path": np.array(list(batch["path"]), dtype=object), "error": np.array(errors, dtype=object)}

    def _enhance_one(self, path: str, data: bytes) -> None:
        from data.io import read_image

        from .inference import write_like
        photo, destination = self.destinations[path]
        with tempfile.TemporaryDirectory(prefix="rehdr-ray-") as staging:
            # decoded from a file named like the photo, so format detection and metadata match enhance.py
            local_photo = Path(staging) / Path(photo).name
            local_photo.write_bytes(data)
            try:
                enhanced = self.enhancer.enhance(read_image(local_photo))
            except ValueError as error:  # named by the photo, not by its staged copy
                raise ValueError(str(error).replace(str(local_photo), photo)) from error
            if not is_uri(destination):
                write_like(local_photo, destination, enhanced, self.quality)
                return
            local_output = Path(staging) / "out" / Path(destination).name
            write_like(local_photo, local_output, enhanced, self.quality)
            out_fs, out_path = filesystem(destination)
            out_fs.create_dir(out_path.rpartition("/")[0], recursive=True)
            with out_fs.open_output_stream(out_path) as stream:  # object stores publish on close: atomic
                stream.write(local_output.read_bytes())


def _actor_pool(ray, ray_cpus: int, device: str) -> tuple:
    """(actors, CPUs per actor, GPUs per actor): one actor per GPU, else one per ``ray_cpus`` CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu":
        return gpus, 1, 1
    cpus = int(resources.get("CPU", 1))
    return max(1, cpus // ray_cpus), ray_cpus, 0


def enhance_with_ray(args, plan: list) -> tuple:
    """Run ``plan`` ((photo, destination) pairs still to do) on Ray; returns (written, failures) with
    failures as ``photo: reason`` lines like plain enhance.py. ``args.ray``: '' starts a local Ray
    (``args.ray_cpus`` per actor), an address joins a cluster."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=args.ray or None, include_dashboard=False, log_to_driver=False)
    try:
        if not plan:
            return [], []
        actors, cpus, gpus = _actor_pool(ray, args.ray_cpus, args.device)
        sources = {}
        for photo, destination in plan:
            _, path = filesystem(photo)
            sources[path] = (str(photo), str(destination))
        in_fs, _ = filesystem(plan[0][0])
        photos = ray.data.read_binary_files(list(sources), filesystem=in_fs, include_paths=True, num_cpus=0)
        results = photos.map_batches(
            EnhanceActor, fn_constructor_args=(args, sources, cpus if not gpus else 0), batch_size=1,
            concurrency=min(actors, len(plan)), num_cpus=cpus, num_gpus=gpus, batch_format="numpy")
        written, failures = [], []
        for row in results.iter_rows():
            photo, destination = sources[row["path"]]
            if row["error"]:
                failures.append(row["error"] if photo in row["error"] else f"{photo}: {row['error']}")
            else:
                written.append(Path(destination) if not is_uri(destination) else destination)
        return written, failures
    finally:
        if started_here:
            ray.shutdown()


def ray_summary(count: int, seconds: float, failures: list) -> str:
    return (f"ray: {count - len(failures)} of {count} photo(s) in {seconds:.1f} s, "
            f"{(count - len(failures)) / max(seconds, 1e-9):.3g} photos/s, {len(failures)} failed")
