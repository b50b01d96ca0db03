"""Reading and writing photos as float32 RGB arrays in [0, 1].

Pixels are decoded by OpenCV (fast, keeps 16-bit precision); Pillow only parses headers (size, EXIF
orientation, ICC profile), which it does without decoding the pixel data.
"""

import contextlib
import errno
import os
import shutil
import warnings
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"})

_FORMAT_BY_EXTENSION = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}
_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")

# Colour, any bit depth, alpha dropped, grey expanded to 3 channels. EXIF orientation is applied by
# `read_image` itself, from the same header `read_image_size` reads, so the two always agree.
_DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION

# EXIF orientation -> the operation that turns stored pixels into displayed pixels (EXIF 2.3, tag 274).
_ORIENTATION_TRANSFORMS = {
    2: lambda pixels: cv2.flip(pixels, 1),
    3: lambda pixels: cv2.rotate(pixels, cv2.ROTATE_180),
    4: lambda pixels: cv2.flip(pixels, 0),
    5: cv2.transpose,
    6: lambda pixels: cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE),
    7: lambda pixels: cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180),
    8: lambda pixels: cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE),
}
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

# Tags that describe how the *source file* stores its pixels (a TIFF's IFD0 doubles as its EXIF).
# Carried into another file they would describe data that is not there, so they are dropped.
_STORAGE_TAGS = tuple(
    getattr(ExifTags.Base, name)
    for name in (
        "NewSubfileType", "SubfileType", "ImageWidth", "ImageLength", "BitsPerSample", "Compression",
        "PhotometricInterpretation", "FillOrder", "StripOffsets", "SamplesPerPixel", "RowsPerStrip",
        "StripByteCounts", "PlanarConfiguration", "Predictor", "ColorMap", "TileWidth", "TileLength",
        "TileOffsets", "TileByteCounts", "SubIFDs", "ExtraSamples", "SampleFormat", "JPEGTables",
        "InterColorProfile", "XMLPacket",
    )
)


class DiskFullError(OSError):
    """A write failed because the disk (or the quota) holding its folder is full."""


# What torch.save's zip writer says when the file system refuses more bytes.
_TORCH_FULL_DISK_MESSAGES = ("unexpected pos", "file write failed")


def is_disk_full(error: BaseException, folder=None) -> bool:
    """Whether ``error`` means no space was left: ENOSPC/EDQUOT, or torch.save's writer failing
    (it reports a full disk as a RuntimeError), or a write that failed while ``folder`` has no room."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, RuntimeError) and any(m in str(error) for m in _TORCH_FULL_DISK_MESSAGES):
        return True
    # a writer that only reports failure (OpenCV's imwrite), on a file system without room
    return (folder is not None and isinstance(error, OSError) and error.errno is None
            and _free_bytes(folder) < 1 << 20)


def _free_bytes(folder) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62  # cannot tell: assume it was not the space


@contextlib.contextmanager
def atomic_destination(path):
    """Yield a temporary path next to ``path`` (same extension) to write; on success it replaces
    ``path``, on any failure it is removed and ``path`` keeps its previous content. A full disk is
    raised as one :class:`DiskFullError` line naming the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, Exception) and is_disk_full(error, path.parent):
            raise DiskFullError(f"cannot write {path.name}: the disk holding {path.parent} is full; free "
                                "some space (the previous file, if any, is intact)") from error
        raise


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or of an unsupported kind; the message names it."""


def _open_header(source, path):
    """Open `source` (a path or a file object) lazily with Pillow; reading stops after the header."""
    try:
        return Image.open(source)
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error...) for bad headers
        raise ImageReadError(f"cannot read image '{path}': {error}") from error


def _header_exif(image):
    """EXIF of a lazily opened image, without decoding its pixels."""
    if image.format == "PNG" and "exif" not in image.info:
        # Pillow decodes the whole PNG to look for an eXIf chunk after the pixel data; the PNG
        # specification requires eXIf before IDAT, so a header without it has no EXIF.
        return Image.Exif()
    return image.getexif()


def _stored_orientation(image, path):
    """EXIF orientation (1-8) of a lazily opened image; 1 when absent or out of range."""
    try:
        orientation = _header_exif(image).get(ExifTags.Base.Orientation, 1)
    except Exception as error:  # a corrupt EXIF block makes the orientation, hence the geometry, unknown
        raise ImageReadError(f"cannot read the EXIF of image '{path}': {error}") from error
    return orientation if orientation in range(1, 9) else 1


def read_pixels(path):
    """Decode an image file into a uint8 or uint16 HxWx3 RGB array (as stored), as it is meant to be displayed.

    Accepts JPEG, PNG and TIFF (8 or 16 bit) and WebP; grey images are expanded to 3 channels, alpha
    is dropped and the EXIF orientation is applied. Raises `ImageReadError` naming the file when it is
    missing, corrupt or of another kind.
    """
    path = Path(path)
    try:
        encoded = path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"cannot read image '{path}': {error.strerror or error}") from error
    with _open_header(BytesIO(encoded), path) as header:
        file_format = header.format
        orientation = _stored_orientation(header, path)
    pixels = cv2.imdecode(np.frombuffer(encoded, dtype=np.uint8), _DECODE_FLAGS)
    if pixels is None:
        raise ImageReadError(f"cannot decode image '{path}': the file is corrupt or truncated")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"image '{path}' has {pixels.dtype} samples; only 8 and 16 bit images are supported")
    # OpenCV's TIFF decoder applies the TIFF orientation tag by itself, whatever the flags say.
    if file_format != "TIFF" and orientation in _ORIENTATION_TRANSFORMS:
        pixels = _ORIENTATION_TRANSFORMS[orientation](pixels)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def pixels_to_float(pixels):
    """uint8/uint16 (or already float32) pixels -> float32 in [0, 1]; only the given window is converted."""
    if pixels.dtype == np.float32:
        return pixels
    rgb = pixels.astype(np.float32)
    rgb *= np.float32(1.0 / np.iinfo(pixels.dtype).max)
    return rgb


def read_image(path):
    """Decode an image file into a float32 HxWx3 RGB array in [0, 1] (see `read_pixels`)."""
    return pixels_to_float(read_pixels(path))


def read_image_size(path):
    """(height, width) of an image as displayed (EXIF orientation applied), read from its header only.

    Raises `ImageReadError` naming the file when the header is missing, truncated or not an image.
    """
    path = Path(path)
    with _open_header(path, path) as header:
        if header.format == "TIFF":
            # Newer Pillow already reports a TIFF's displayed size; the stored size is unambiguous.
            width = header.tag_v2.get(ExifTags.Base.ImageWidth)
            height = header.tag_v2.get(ExifTags.Base.ImageLength)
            orientation = header.tag_v2.get(ExifTags.Base.Orientation, 1)
        else:
            width, height = header.size
            orientation = _stored_orientation(header, path)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return width, height
    return height, width


def read_metadata(path):
    """Metadata an enhancer carries from an input photo to its output.

    Returns dict(exif=bytes or None, icc_profile=bytes or None, bit_depth=8 or 16). The EXIF has its
    orientation reset to 1 (the pixels from `read_image` are already upright) and loses the tags that
    only describe the source file's pixel storage.
    """
    path = Path(path)
    with _open_header(path, path) as header:
        file_format = header.format
        icc_profile = header.info.get("icc_profile") or None
        try:
            exif = _header_exif(header)
        except Exception as error:
            raise ImageReadError(f"cannot read the EXIF of image '{path}': {error}") from error
        bits_per_sample = header.tag_v2.get(ExifTags.Base.BitsPerSample, 8) if file_format == "TIFF" else 8
    for tag in _STORAGE_TAGS:
        exif.pop(tag, None)
    if ExifTags.Base.Orientation in exif:
        exif[ExifTags.Base.Orientation] = 1
    if file_format == "PNG":
        with path.open("rb") as png_file:
            # IHDR is the first chunk: 8-byte signature, length, type, width, height, then bit depth.
            bits_per_sample = png_file.read(25)[24]
    if isinstance(bits_per_sample, tuple):
        bits_per_sample = max(bits_per_sample)
    return dict(
        exif=exif.tobytes() if len(exif) else None,
        icc_profile=icc_profile,
        bit_depth=16 if bits_per_sample == 16 else 8,
    )


def _quantize(rgb, dtype):
    """Round float [0, 1] to the full range of an unsigned integer type (out-of-range values clip)."""
    top = np.iinfo(dtype).max
    scaled = np.asarray(rgb, dtype=np.float32) * np.float32(top) + np.float32(0.5)
    np.clip(scaled, 0, top, out=scaled)
    return scaled.astype(dtype)


def write_image(path, rgb, bit_depth=8, exif=None, icc_profile=None, quality=95):
    """Write a float HxWx3 RGB array in [0, 1] to `path`; the format follows the extension.

    PNG and TIFF take `bit_depth` 8 or 16, JPEG and WebP 8. `exif` (bytes, with or without the
    "Exif\\0\\0" prefix) and `icc_profile` (bytes) are embedded in every format except 16-bit TIFF,
    which OpenCV writes without metadata (a warning says so). `quality` (1-100) applies to JPEG and
    WebP; JPEG is written without chroma subsampling, so colour edges stay sharp.
    """
    path = Path(path)
    file_format = _FORMAT_BY_EXTENSION.get(path.suffix.lower())
    if file_format is None:
        accepted = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"cannot write '{path}': unknown image extension; accepted: {accepted}")
    if bit_depth not in (8, 16):
        raise ValueError(f"cannot write '{path}': bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and file_format not in _SIXTEEN_BIT_FORMATS:
        raise ValueError(f"cannot write '{path}' with 16 bits: only .png and .tif/.tiff store 16 bits")
    if not 1 <= quality <= 100:
        raise ValueError(f"cannot write '{path}': quality must be in 1..100, got {quality}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError(f"cannot write '{path}': expected a float HxWx3 RGB array, got {rgb.dtype} {rgb.shape}")
    exif_block = Image.Exif()
    if exif:
        exif_block.load(exif)

    with atomic_destination(path) as tmp:  # a failed write leaves no half-written photo
        if bit_depth == 8:
            _write_8_bit(tmp, rgb, file_format, exif_block if exif else None, icc_profile, quality)
        else:
            _write_16_bit(tmp, rgb, file_format, exif_block if exif else None, icc_profile, path)


def _write_8_bit(path, rgb, file_format, exif_block, icc_profile, quality):
    options = {"icc_profile": icc_profile} if icc_profile else {}
    if exif_block is not None:
        options["exif"] = exif_block
    if file_format == "JPEG":
        options.update(quality=quality, subsampling=0)
    elif file_format == "WEBP":
        options.update(quality=quality)
    elif file_format == "TIFF":
        options.update(compression="tiff_lzw")
    Image.fromarray(_quantize(rgb, np.uint8)).save(path, format=file_format, **options)


def _write_16_bit(path, rgb, file_format, exif_block, icc_profile, destination):
    bgr = cv2.cvtColor(_quantize(rgb, np.uint16), cv2.COLOR_RGB2BGR)
    metadata_types, metadata = [], []
    if file_format == "PNG":
        if exif_block is not None:
            # The eXIf chunk holds the TIFF structure itself, without JPEG's "Exif\0\0" prefix.
            metadata_types.append(cv2.IMAGE_METADATA_EXIF)
            metadata.append(np.frombuffer(exif_block.tobytes()[6:], dtype=np.uint8))
        if icc_profile:
            metadata_types.append(cv2.IMAGE_METADATA_ICCP)
            metadata.append(np.frombuffer(icc_profile, dtype=np.uint8))
    elif exif_block is not None or icc_profile:
        warnings.warn(f"'{destination}': 16-bit TIFF is written without EXIF/ICC metadata (OpenCV cannot embed it)")
    if metadata_types:
        written = cv2.imwriteWithMetadata(str(path), bgr, metadata_types, metadata)
    else:
        written = cv2.imwrite(str(path), bgr)
    if not written:
        raise OSError(f"cannot write image '{destination}'")
