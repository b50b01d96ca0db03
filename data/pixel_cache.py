"""A decoded-pixel cache on disk: each photo is decoded once into a memory-mapped ``.npy``.

A 512² training crop from a 7 MP JPEG pair otherwise costs two full decodes (~56 ms) plus the
float conversion of both whole photos; from the cache it reads only the crop's rows of two
memory-mapped uint8/uint16 arrays and converts only the crop. The pages live in the OS page cache,
shared by every DataLoader worker and every run, so memory does not grow with the worker count.

Entries are keyed by the photo's resolved path, size and modification time: a changed file gets a
new entry (the old one is removed when the new one is written), never the stale pixels. Writers put
the array in a temporary file in the cache folder and rename it into place (atomic on POSIX), so a
killed writer leaves at most a hidden ``.tmp`` file that is never read, and concurrent workers decoding
the same photo each rename an identical complete file. A full disk is one ``DiskFullError`` line.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

from data.io import atomic_destination, read_pixels


def cache_root() -> Path:
    """``$REHDR_CACHE``, defaulting to ``~/.cache/realestate-hdr``: where this codebase caches derived data."""
    return Path(os.environ.get("REHDR_CACHE", Path.home() / ".cache" / "realestate-hdr")).expanduser()


def default_pixel_cache_dir() -> Path:
    """``$REHDR_CACHE/pixels``: the pixel cache's folder unless ``--cache-dir`` names another."""
    return cache_root() / "pixels"


class PixelCache:
    """Photos decoded once (EXIF orientation applied, RGB, as stored: uint8 or uint16), memory-mapped.

    ``read(path)`` returns a read-only HxWx3 ``np.memmap``; slicing it reads only the rows asked for.
    Picklable (it holds only its folder), so DataLoader workers share it.
    """

    def __init__(self, folder):
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(f"cannot create the pixel cache folder '{self.folder}' ({error.strerror or error}); "
                          f"choose another with --cache-dir") from error

    def entry_path(self, path) -> Path:
        """The cache file for the photo at ``path`` as it is now on disk (path, size and mtime)."""
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return self.folder / f"{self._path_key(resolved)}-{stat.st_size}-{stat.st_mtime_ns}.npy"

    @staticmethod
    def _path_key(resolved: Path) -> str:
        return hashlib.sha256(str(resolved).encode()).hexdigest()[:32]

    def read(self, path) -> np.ndarray:
        """Pixels of the photo at ``path``: from the cache, or decoded now and stored first.

        Raises ``data.io.ImageReadError`` naming the photo when it is missing or cannot be decoded.
        """
        try:
            entry = self.entry_path(path)
        except OSError:
            return read_pixels(path)  # missing photo: read_pixels raises its one-line error
        pixels = self._open(entry)
        if pixels is None:
            pixels = read_pixels(path)
            self._store(entry, pixels)
        return pixels

    @staticmethod
    def _open(entry: Path):
        """The memory-mapped entry, or None when it is absent or not a complete RGB pixel array."""
        try:
            pixels = np.load(entry, mmap_mode="r")
        except (OSError, ValueError):  # absent, or truncated/garbled by something other than our writer
            return None
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype not in (np.uint8, np.uint16):
            return None
        return pixels

    def _store(self, entry: Path, pixels: np.ndarray) -> None:
        """Write ``pixels`` to ``entry`` atomically and remove the entries of older versions of the photo."""
        with atomic_destination(entry) as temporary:
            np.save(temporary, pixels)
        prefix = entry.name.split("-", 1)[0]
        for stale in self.folder.glob(f"{prefix}-*.npy"):
            if stale != entry:
                stale.unlink(missing_ok=True)
