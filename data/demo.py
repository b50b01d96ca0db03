"""Built-in demo dataset: procedurally rendered real-estate interiors.

Each sample is one interior scene rendered in linear HDR radiance (walls, textured floor, furniture,
lamps, ceiling downlights, framed pictures, windows onto a bright exterior with sky, trees and lawn,
sun patches on the floor), turned into a pair that poses the real-estate HDR editing problem:

* input  - what a camera records in one exposure metered for the interior: windows clipped to white,
  crushed and noisy shadows, a white-balance cast, an in-camera tone curve, sometimes JPEG artefacts;
* target - what a professional editor delivers: exposure brackets simulated from the same radiance,
  fused with OpenCV's Mertens exposure fusion (windows recovered, shadows lifted, neutral white balance),
  then a gentle global contrast/saturation finish.

The target is a deterministic function of the scene, so everything the network must learn is
recoverable from the input except what clipping destroyed in the windows (which is the real task).

Photographic texture comes from the images that ship inside scikit-image (public domain / CC0):
grass and gravel detail, brick, a wood table top (``coffee``) and pictures for wall art.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from data.io import DiskFullError, is_disk_full
from data.pixel_cache import cache_root

DEMO_VERSION = 1
DEFAULT_SIZE = (192, 256)
DEFAULT_NUM_TRAIN = 320
DEFAULT_NUM_VAL = 32
MIN_SIZE = 32

# Interior mid-grey that the camera meters to (before its own exposure error); the returned HDR
# radiance is scaled so that the median interior luminance equals this value.
METERED_MID_GREY = 0.18
# Exposure brackets, in stops relative to the metered exposure, that the target is fused from.
TARGET_BRACKETS_EV = (-7.0, -5.0, -3.0, -1.0, 0.5, 1.5)
# A temporary generation folder untouched for this long belongs to an interrupted run.
STALE_PARTIAL_SECONDS = 3600.0

_REC709_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
_FLOOR, _CEILING, _LEFT, _RIGHT, _BACK = range(5)
# Surface normals of the room planes, pointing into the room (x right, y up, z forward).
_ROOM_NORMALS = np.array([[0, 1, 0], [0, -1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, -1]], np.float32)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """sRGB opto-electronic transfer function (IEC 61966-2-1) of linear values, clipped to [0, 1]."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer function: encoded values in [0, 1] -> linear values."""
    x = np.asarray(encoded, np.float32)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4)).astype(np.float32)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _REC709_LUMA


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _detail(gray_u8: np.ndarray) -> np.ndarray:
    """A grey texture as a zero-mean, unit-std detail map."""
    x = gray_u8.astype(np.float32)
    return (x - x.mean()) / x.std()


@lru_cache(maxsize=1)
def _textures() -> dict:
    """Photographic textures from scikit-image's bundled images (loaded once per process)."""
    coffee = skimage.data.coffee()
    # The right edge of the coffee photo is bare table top: a real wood-grain texture.
    wood = srgb_decode(coffee[60:400, 515:600] / 255.0)
    wood_lum = _luminance(wood)
    return {
        "grass": _detail(skimage.data.grass()),
        "gravel": _detail(skimage.data.gravel()),
        "brick": srgb_decode(skimage.data.brick() / 255.0),
        "wood": (wood_lum / wood_lum.mean()).astype(np.float32),
        "art": [srgb_decode(skimage.data.astronaut() / 255.0), srgb_decode(skimage.data.chelsea() / 255.0),
                srgb_decode(coffee / 255.0), srgb_decode(np.repeat(skimage.data.camera()[..., None], 3, -1) / 255.0)],
    }


def _sample(texture: np.ndarray, u_px: np.ndarray, v_px: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a tiling texture at pixel coordinates (wrapped)."""
    h, w = texture.shape[:2]
    shape = np.shape(u_px)
    count = int(np.prod(shape))
    # remap wants 2-D maps under 32767 rows: lay any coordinate list out as rows of 256.
    rows = max(1, -(-count // 256))
    maps = []
    for coord, period in ((u_px, w - 1), (v_px, h - 1)):
        flat = np.zeros(rows * 256, np.float32)
        flat[:count] = np.mod(coord, period).ravel()
        maps.append(flat.reshape(rows, 256))
    looked_up = cv2.remap(texture, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return looked_up.reshape((rows * 256,) + texture.shape[2:])[:count].reshape(shape + texture.shape[2:])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Band-limited noise in [0, 1]: a coarse random grid upsampled with bicubic interpolation."""
    coarse = rng.random(cells).astype(np.float32)
    return np.clip(cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    return 1.0 / np.where(np.abs(d) < 1e-9, 1e-9, d)


def _ray_box(origin, inv_dir, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays ``origin + t * dir`` against an axis-aligned box.

    ``origin`` and ``inv_dir`` are 3-sequences of per-ray arrays (or scalars). Returns the entry
    distance (inf where the box is missed or behind) and the axis of the entered face.
    """
    for k in range(3):
        t1 = (lo[k] - origin[k]) * inv_dir[k]
        t2 = (hi[k] - origin[k]) * inv_dir[k]
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        if k == 0:
            t_near, t_far, axis = near, far, np.zeros(near.shape, np.int8)
        else:
            axis = np.where(near > t_near, np.int8(k), axis)
            t_near, t_far = np.maximum(t_near, near), np.minimum(t_far, far)
    hit = (t_near <= t_far) & (t_near > 1e-4)
    return np.where(hit, t_near, np.inf), axis


@dataclass
class _Room:
    """Room box in camera-centred metres: x across (walls), y up (floor, ceiling), z forward (back wall)."""
    left: float
    right: float
    floor: float
    ceiling: float
    back: float


@dataclass
class _Camera:
    focal: float
    yaw: float
    height: int
    width: int

    def footprint(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice]:
        """Rows and columns an axis-aligned box can cover (all, if it reaches behind the camera)."""
        corners = np.stack(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        across, forward = c * corners[0] - s * corners[2], s * corners[0] + c * corners[2]
        if forward.min() < 0.05:
            return slice(None), slice(None)
        cols = across / forward * self.focal + self.width / 2
        rows = -corners[1] / forward * self.focal + self.height / 2
        return (slice(int(np.clip(np.floor(rows.min()) - 1, 0, self.height)),
                      int(np.clip(np.ceil(rows.max()) + 1, 0, self.height))),
                slice(int(np.clip(np.floor(cols.min()) - 1, 0, self.width)),
                      int(np.clip(np.ceil(cols.max()) + 1, 0, self.width))))


@dataclass
class _Box:
    lo: np.ndarray
    hi: np.ndarray
    albedo: np.ndarray
    emission: np.ndarray | None = None
    texture: str | None = None  # detail texture for fabric / foliage


@dataclass
class _Window:
    wall: int
    u0: float  # extent along the wall: x on the back wall, z on the side walls
    u1: float
    y0: float
    y1: float
    columns: int
    rows: int
    frame_albedo: np.ndarray
    frame_width: float = 0.05

    def plane(self, room: _Room) -> float:
        """Coordinate of the wall plane the window sits in (z for the back wall, x for side walls)."""
        return {_BACK: room.back, _LEFT: room.left, _RIGHT: room.right}[self.wall]


def _wall_coords(points: np.ndarray, wall: int) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical in-plane coordinates (metres) of points (3, ...) on a wall."""
    return (points[0] if wall == _BACK else points[2]), points[1]


def _window_parts(window: _Window, u: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside the window rectangle, see-through glass) masks for wall coordinates u, y."""
    inside = (u >= window.u0) & (u <= window.u1) & (y >= window.y0) & (y <= window.y1)
    pane_w = (window.u1 - window.u0) / window.columns
    pane_h = (window.y1 - window.y0) / window.rows
    du = np.mod(u - window.u0, pane_w)
    dy = np.mod(y - window.y0, pane_h)
    half = window.frame_width / 2
    # Mullions sit on every pane border; the outer frame is as wide as the mullions.
    on_bar = (np.minimum(du, pane_w - du) < half) | (np.minimum(dy, pane_h - dy) < half)
    on_edge = ((u - window.u0 < window.frame_width) | (window.u1 - u < window.frame_width)
               | (y - window.y0 < window.frame_width) | (window.y1 - y < window.frame_width))
    return inside, inside & ~on_bar & ~on_edge


def _pick_colour(rng: np.random.Generator, palette: list[tuple[float, float, float]], jitter: float = 0.06,
                 scale: tuple[float, float] = (0.85, 1.1)) -> np.ndarray:
    base = np.array(palette[rng.integers(len(palette))], np.float32)
    colour = base * rng.uniform(*scale) * (1 + rng.uniform(-jitter, jitter, 3))
    return np.clip(colour, 0.01, 0.92).astype(np.float32)


# Linear albedos (reflectances) typical of staged homes.
_WALL_PALETTE = [(0.78, 0.76, 0.71), (0.72, 0.66, 0.56), (0.68, 0.68, 0.66), (0.62, 0.60, 0.55),
                 (0.55, 0.62, 0.66), (0.60, 0.66, 0.56), (0.80, 0.79, 0.77), (0.70, 0.58, 0.48)]
_ACCENT_PALETTE = _WALL_PALETTE + [(0.20, 0.26, 0.34), (0.36, 0.42, 0.34), (0.45, 0.30, 0.25)]
_WOOD_PALETTE = [(0.42, 0.24, 0.12), (0.55, 0.38, 0.22), (0.25, 0.13, 0.06), (0.62, 0.50, 0.36)]
_TILE_PALETTE = [(0.70, 0.69, 0.66), (0.55, 0.50, 0.44), (0.35, 0.35, 0.36), (0.75, 0.72, 0.65)]
_CARPET_PALETTE = [(0.45, 0.42, 0.38), (0.30, 0.30, 0.32), (0.52, 0.46, 0.36)]
_RUG_PALETTE = _CARPET_PALETTE + [(0.65, 0.62, 0.55), (0.20, 0.24, 0.35), (0.50, 0.22, 0.14)]
_FABRIC_PALETTE = [(0.30, 0.30, 0.32), (0.08, 0.12, 0.25), (0.55, 0.50, 0.42), (0.16, 0.28, 0.18),
                   (0.45, 0.18, 0.10), (0.62, 0.62, 0.60), (0.12, 0.11, 0.10)]
_CASE_PALETTE = [(0.80, 0.80, 0.78), (0.05, 0.05, 0.05), (0.40, 0.24, 0.12), (0.30, 0.36, 0.40)]
_FRAME_PALETTE = [(0.82, 0.82, 0.80), (0.04, 0.04, 0.04), (0.35, 0.22, 0.12)]


def _room_camera(rng: np.random.Generator, height: int, width: int) -> tuple[_Room, _Camera, np.ndarray]:
    """A room, a level wide-angle camera at its origin, and per-pixel ray directions (3, H, W)."""
    room_w = rng.uniform(3.6, 6.5)
    room_h = rng.uniform(2.4, 3.1)
    cam_h = rng.uniform(1.15, 1.6)
    cam_x = rng.uniform(-0.25, 0.25) * room_w
    room = _Room(-room_w / 2 - cam_x, room_w / 2 - cam_x, -cam_h, room_h - cam_h, rng.uniform(3.8, 7.5))
    camera = _Camera((width / 2) / np.tan(np.deg2rad(rng.uniform(68, 88)) / 2), rng.uniform(-0.3, 0.3),
                     height, width)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    across = (cols + 0.5 - width / 2) / camera.focal
    up = -(rows + 0.5 - height / 2) / camera.focal
    c, s = np.float32(np.cos(camera.yaw)), np.float32(np.sin(camera.yaw))
    return room, camera, np.stack([c * across + s, up, c - s * across])


def _intersect_room(dirs: np.ndarray, room: _Room) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each ray to the room's walls and which plane it hits (camera inside the box)."""
    inv = _safe_inverse(dirs)
    t_x = np.where(dirs[0] > 0, room.right, room.left) * inv[0]
    t_y = np.where(dirs[1] > 0, room.ceiling, room.floor) * inv[1]
    t_z = room.back * inv[2]
    surface = np.where(dirs[0] > 0, _RIGHT, _LEFT)
    t_hit = t_x
    surface = np.where(t_y < t_hit, np.where(dirs[1] > 0, _CEILING, _FLOOR), surface)
    t_hit = np.minimum(t_hit, t_y)
    surface = np.where(t_z < t_hit, _BACK, surface)
    return np.minimum(t_hit, t_z), surface


def _sample_windows(rng: np.random.Generator, room: _Room) -> list[_Window]:
    """1-3 windows (sometimes a glass door) in the back wall, sometimes one in a side wall."""
    frame = _pick_colour(rng, _FRAME_PALETTE, 0.03, (0.95, 1.0))
    windows = []
    count = int(rng.choice([1, 2, 2, 3]))
    door = rng.random() < 0.3  # floor-to-ceiling glass shows lawn as well as sky
    slots = np.linspace(room.left, room.right, count + 1)
    for i in range(count):
        lo, hi = slots[i], slots[i + 1]
        width = min(rng.uniform(0.8, 2.2) * (1.4 if door and i == 0 else 1.0), 0.8 * (hi - lo))
        spare = hi - lo - width - 0.2
        centre = lo + 0.1 + width / 2 + (rng.uniform(0, spare) if spare > 0 else 0.0)
        sill = room.floor + (0.02 if door and i == 0 else rng.uniform(0.55, 1.0))
        top = room.floor + min(rng.uniform(2.0, 2.35), room.ceiling - room.floor - 0.15)
        columns = int(max(1, round(width / rng.uniform(0.45, 0.9))))
        windows.append(_Window(_BACK, centre - width / 2, centre + width / 2, sill, top, columns,
                               int(rng.integers(1, 3)), frame))
    if rng.random() < 0.45:
        length = rng.uniform(0.9, min(2.0, 0.5 * room.back))
        z_centre = rng.uniform(max(1.2, 0.4 * room.back), room.back - length / 2 - 0.3)
        windows.append(_Window(_LEFT if rng.random() < 0.5 else _RIGHT, z_centre - length / 2,
                               z_centre + length / 2, room.floor + rng.uniform(0.6, 0.95),
                               room.floor + rng.uniform(2.0, 2.3), int(max(1, round(length / 0.7))), 1, frame))
    return windows


def _sample_furniture(rng: np.random.Generator, room: _Room):
    """Boxes for a sofa, coffee table, sideboard, lamps and a plant; returns (boxes, lamp lights)."""
    xl, xr, yb, zb = room.left, room.right, room.floor, room.back
    boxes: list[_Box] = []
    lights: list[tuple[np.ndarray, np.ndarray]] = []

    def box(x0, x1, y0, y1, z0, z1, albedo, emission=None, texture=None):
        boxes.append(_Box(np.array([x0, y0, z0], np.float32), np.array([x1, y1, z1], np.float32),
                          albedo, emission, texture))

    # Sofa against the back wall or floating in the room: seat, back and arms.
    fabric = _pick_colour(rng, _FABRIC_PALETTE)
    length = rng.uniform(1.6, min(2.6, 0.7 * (xr - xl)))
    sofa_x = rng.uniform(xl + length / 2 + 0.2, xr - length / 2 - 0.2)
    sofa_back = zb - (0.02 if rng.random() < 0.6 else rng.uniform(0.6, 1.5))
    x0, x1 = sofa_x - length / 2, sofa_x + length / 2
    box(x0, x1, yb, yb + 0.42, sofa_back - 0.95, sofa_back, fabric, texture="gravel")
    box(x0, x1, yb + 0.42, yb + 0.85, sofa_back - 0.22, sofa_back, fabric * 0.95, texture="gravel")
    box(x0, x0 + 0.18, yb + 0.42, yb + 0.62, sofa_back - 0.95, sofa_back, fabric * 0.9, texture="gravel")
    box(x1 - 0.18, x1, yb + 0.42, yb + 0.62, sofa_back - 0.95, sofa_back, fabric * 0.9, texture="gravel")
    # Coffee table in front of the sofa: top slab on four legs.
    table = _pick_colour(rng, _CASE_PALETTE)
    tw, td, th = rng.uniform(0.8, 1.3), rng.uniform(0.5, 0.8), rng.uniform(0.38, 0.48)
    tz1 = sofa_back - 0.95 - rng.uniform(0.35, 0.6)
    tx = sofa_x + rng.uniform(-0.2, 0.2)
    if tz1 - td > 1.0:
        box(tx - tw / 2, tx + tw / 2, yb + th - 0.05, yb + th, tz1 - td, tz1, table)
        for lx in (tx - tw / 2 + 0.03, tx + tw / 2 - 0.07):
            for lz in (tz1 - td + 0.03, tz1 - 0.07):
                box(lx, lx + 0.04, yb, yb + th - 0.05, lz, lz + 0.04, table * 0.8)
    # Sideboard along a side wall, often with a table lamp on it.
    side = xl if rng.random() < 0.5 else xr
    sb_len, sb_depth, sb_h = rng.uniform(1.0, 1.8), rng.uniform(0.4, 0.5), rng.uniform(0.7, 0.9)
    sb_z = rng.uniform(1.5 + sb_len / 2, max(1.6 + sb_len / 2, zb - 1.2 - sb_len / 2))
    sb_x0, sb_x1 = (side, side + sb_depth) if side == xl else (side - sb_depth, side)
    box(sb_x0, sb_x1, yb, yb + sb_h, sb_z - sb_len / 2, sb_z + sb_len / 2, _pick_colour(rng, _CASE_PALETTE))
    warm = np.array([1.0, 0.78, 0.52], np.float32) * rng.uniform(0.9, 1.0, 3).astype(np.float32)
    shade_radiance = warm * rng.uniform(6.0, 14.0)
    if rng.random() < 0.75:
        cx, cz = (sb_x0 + sb_x1) / 2, sb_z + rng.uniform(-0.3, 0.3) * sb_len
        base = yb + sb_h
        box(cx - 0.02, cx + 0.02, base, base + 0.3, cz - 0.02, cz + 0.02, np.full(3, 0.1, np.float32))
        box(cx - 0.16, cx + 0.16, base + 0.3, base + 0.55, cz - 0.16, cz + 0.16, np.zeros(3, np.float32),
            shade_radiance)
        lights.append((np.array([cx, base + 0.43, cz], np.float32), warm * rng.uniform(0.5, 1.0)))
    # Floor lamp beside the sofa.
    if rng.random() < 0.6:
        fx = x1 + 0.35 if x1 + 0.55 < xr else x0 - 0.35
        fz = sofa_back - 0.3
        box(fx - 0.02, fx + 0.02, yb, yb + 1.45, fz - 0.02, fz + 0.02, np.full(3, 0.06, np.float32))
        box(fx - 0.2, fx + 0.2, yb + 1.45, yb + 1.75, fz - 0.2, fz + 0.2, np.zeros(3, np.float32), shade_radiance)
        lights.append((np.array([fx, yb + 1.6, fz], np.float32), warm * rng.uniform(0.6, 1.2)))
    # A potted plant in a corner of the room.
    if rng.random() < 0.5:
        px = xl + 0.35 if rng.random() < 0.5 else xr - 0.35
        pz = rng.uniform(1.8, zb - 0.4)
        box(px - 0.16, px + 0.16, yb, yb + 0.35, pz - 0.16, pz + 0.16, _pick_colour(rng, _CASE_PALETTE))
        box(px - 0.24, px + 0.24, yb + 0.35, yb + rng.uniform(0.9, 1.3), pz - 0.24, pz + 0.24,
            np.array([0.07, 0.14, 0.04], np.float32), texture="grass")
    return boxes, lights


def _exterior(rng: np.random.Generator, dirs: np.ndarray) -> np.ndarray:
    """Linear radiance (N, 3) of the view outside along directions (3, N): sky, trees, a house, lawn."""
    tex = _textures()
    azimuth = np.arctan2(dirs[0], dirs[2])
    elevation = np.arctan2(dirs[1], np.hypot(dirs[0], dirs[2]))
    # Sky: bright hazy horizon to a deeper blue zenith, with soft clouds.
    horizon = np.array([0.78, 0.88, 1.0], np.float32)
    zenith = np.array([0.22, 0.42, 0.95], np.float32) * np.float32(rng.uniform(0.6, 1.0))
    t = np.sqrt(np.clip(elevation / 0.6, 0.0, 1.0))[:, None]
    radiance = horizon * (1 - t) + zenith * t
    cloud_field = _smooth_noise(rng, (96, 384), (6, 24))
    clouds = _sample(cloud_field, (azimuth + np.pi) / (2 * np.pi) * 383,
                     np.clip(0.9 - elevation, 0.0, 1.5) / 1.5 * 95)
    cover = rng.uniform(0.35, 0.75)
    cloud = _smoothstep(cover, cover + 0.25, clouds)[:, None]
    radiance = radiance * (1 - cloud) + np.float32(rng.uniform(1.1, 1.5)) * cloud
    # Sunlit lawn with a photographic grass texture, foreshortened towards the horizon.
    horizon_el = rng.uniform(-0.04, 0.0)
    ground = elevation < horizon_el
    grass = _sample(tex["grass"], azimuth * 900, 40.0 / np.maximum(horizon_el - elevation, 0.02))
    lawn = np.array([0.22, 0.40, 0.07], np.float32) * np.float32(rng.uniform(0.7, 1.2))
    radiance[ground] = lawn * (1 + 0.3 * grass[ground])[:, None]
    # A neighbour's house (brick or painted siding), then a ragged tree line on the horizon.
    if rng.random() < 0.5:
        a0 = rng.uniform(-0.6, 0.4)
        a1 = a0 + rng.uniform(0.3, 0.7)
        house = (azimuth > a0) & (azimuth < a1) & ~ground & (elevation < horizon_el + rng.uniform(0.12, 0.3))
        if rng.random() < 0.5:
            facade = _sample(tex["brick"], azimuth[house] * 700, elevation[house] * 700)[:, None] * np.array(
                [1.0, 0.55, 0.4], np.float32)
        else:
            siding = 0.85 + 0.15 * (np.mod(elevation[house] * 120, 1.0) > 0.2)
            facade = np.array([0.75, 0.74, 0.70], np.float32) * siding[:, None]
        radiance[house] = facade
    tree_line = _smooth_noise(rng, (1, 720), (1, 40))[0]
    leaves = _sample(tex["grass"], azimuth * 500, elevation * 500)
    tree_top = (horizon_el + rng.uniform(0.0, 0.05) + rng.uniform(0.03, 0.12)
                * tree_line[((azimuth + np.pi) / (2 * np.pi) * 719).astype(np.int32)] + 0.01 * leaves)
    trees = (elevation < tree_top) & ~ground
    foliage = np.array([0.07, 0.15, 0.035], np.float32) * np.float32(rng.uniform(0.7, 1.4))
    radiance[trees] = foliage * np.clip(1 + 0.45 * leaves[trees], 0.2, 2.0)[:, None]
    return radiance.astype(np.float32)


def _plane_uv(points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane coordinates (metres) of each point on its axis-aligned surface, for texturing."""
    faces_x, faces_y = np.abs(normals[0]) > 0.5, np.abs(normals[1]) > 0.5
    return np.where(faces_x, points[2], points[0]), np.where(faces_y, points[2], points[1])


def _albedo_map(rng: np.random.Generator, surface: np.ndarray, points: np.ndarray, normals: np.ndarray,
                room: _Room, boxes: list[_Box], windows: list[_Window]) -> np.ndarray:
    """Per-pixel linear albedo (H, W, 3) of walls, ceiling, floor, rug, wall art, window frames, furniture."""
    tex = _textures()
    height, width = surface.shape
    albedo = np.zeros((height, width, 3), np.float32)
    x, y, z = points
    u, v = _plane_uv(points, normals)
    plaster = 1 + 0.025 * _sample(tex["gravel"], u * 300, v * 300)
    # Paint and bounce light are never perfectly even on real walls.
    unevenness = 0.94 + 0.12 * _smooth_noise(rng, (height, width), (3, 4))
    wall_colour = _pick_colour(rng, _WALL_PALETTE)
    accent_wall = int(rng.choice([_LEFT, _RIGHT, _BACK])) if rng.random() < 0.3 else -1
    accent_colour = _pick_colour(rng, _ACCENT_PALETTE)
    for wall in (_LEFT, _RIGHT, _BACK):
        mask = surface == wall
        albedo[mask] = (accent_colour if wall == accent_wall else wall_colour) * (plaster * unevenness)[mask][:, None]
    ceiling = surface == _CEILING
    albedo[ceiling] = np.float32(rng.uniform(0.78, 0.88)) * (plaster * unevenness)[ceiling][:, None]
    skirting = (surface >= _LEFT) & (surface <= _BACK) & (y < room.floor + 0.1)
    albedo[skirting] = np.float32(0.8)

    floor = surface == _FLOOR
    kind = rng.choice(["wood", "wood", "tile", "carpet"])
    fx, fz = x[floor], z[floor]
    if kind == "wood":
        plank_w, plank_len = rng.uniform(0.12, 0.22), rng.uniform(1.0, 2.0)
        plank = np.floor(fx / plank_w).astype(np.int64) % 512
        along = fz + rng.uniform(0, plank_len, 512)[plank]
        wood = tex["wood"]
        grain = _sample(wood, np.mod(fx, plank_w) / plank_w * (wood.shape[1] - 1) + plank * 13, along * 180)
        seam = (np.mod(fx, plank_w) < 0.006) | (np.mod(along, plank_len) < 0.008)
        shade = rng.uniform(0.82, 1.18, 512)[plank] * grain * np.where(seam, 0.55, 1.0)
        albedo[floor] = _pick_colour(rng, _WOOD_PALETTE) * shade[:, None]
    elif kind == "tile":
        size = rng.uniform(0.3, 0.6)
        tile = (np.floor(fx / size) * 131 + np.floor(fz / size)).astype(np.int64) % 997
        grout = (np.mod(fx, size) < 0.008) | (np.mod(fz, size) < 0.008)
        stone = 1 + 0.06 * _sample(tex["gravel"], fx * 150, fz * 150)
        shade = rng.uniform(0.93, 1.07, 997)[tile] * stone * np.where(grout, 0.6, 1.0)
        albedo[floor] = _pick_colour(rng, _TILE_PALETTE) * shade[:, None]
    else:
        pile = 1 + 0.18 * _sample(tex["gravel"], fx * 900, fz * 900)
        albedo[floor] = _pick_colour(rng, _CARPET_PALETTE) * pile[:, None]
    if kind != "carpet" and rng.random() < 0.6:
        rug_x, rug_z = rng.uniform(-0.8, 0.8), rng.uniform(1.8, 3.0)
        rug = floor & (np.abs(x - rug_x) < rng.uniform(0.8, 1.4)) & (np.abs(z - rug_z) < rng.uniform(0.6, 1.0))
        pile = 1 + 0.2 * _sample(tex["gravel"], x[rug] * 700, z[rug] * 700)
        albedo[rug] = _pick_colour(rng, _RUG_PALETTE) * pile[:, None]

    # Framed photographs on walls, kept clear of windows.
    for _ in range(int(rng.integers(0, 3))):
        wall = int(rng.choice([_LEFT, _RIGHT, _BACK]))
        on_wall = surface == wall
        if not on_wall.any():
            continue
        wu, wv = _wall_coords(points, wall)
        u_lo, u_hi = np.percentile(wu[on_wall], [10, 90])
        frame_w, frame_h = rng.uniform(0.5, 1.0), rng.uniform(0.4, 0.8)
        if u_hi - u_lo < frame_w:
            continue
        u0 = rng.uniform(u_lo, u_hi - frame_w)
        v0 = room.floor + rng.uniform(1.2, 1.5)
        if any(w.wall == wall and u0 < w.u1 and u0 + frame_w > w.u0 for w in windows):
            continue
        frame = on_wall & (wu >= u0) & (wu <= u0 + frame_w) & (wv >= v0) & (wv <= v0 + frame_h)
        picture = frame & (wu >= u0 + 0.03) & (wu <= u0 + frame_w - 0.03) & (wv >= v0 + 0.03) & (
            wv <= v0 + frame_h - 0.03)
        art = tex["art"][int(rng.integers(len(tex["art"])))]
        albedo[frame] = _pick_colour(rng, _CASE_PALETTE, 0.02)
        art_col = (wu[picture] - u0) / frame_w * (art.shape[1] - 1)
        if wall == _RIGHT:
            art_col = art.shape[1] - 1 - art_col  # facing the right wall, +z runs leftwards: mirror it
        art_row = (v0 + frame_h - wv[picture]) / frame_h * (art.shape[0] - 1)
        albedo[picture] = 0.85 * _sample(art, art_col, art_row)

    for index, item in enumerate(boxes):
        mask = surface == 5 + index
        if item.texture is None:
            albedo[mask] = item.albedo
        else:
            weave = 1 + 0.15 * _sample(tex[item.texture], u[mask] * 500, v[mask] * 500)
            albedo[mask] = item.albedo * weave[:, None]
    for window in windows:
        wu, wv = _wall_coords(points, window.wall)
        inside, _ = _window_parts(window, wu, wv)
        albedo[(surface == window.wall) & inside] = window.frame_albedo
    return albedo


def _toward(points: np.ndarray, normals: np.ndarray, source: np.ndarray, min_dist2: float):
    """Unit direction (3, H, W) from each point to a source, squared distance, and receiver cosine."""
    direction = source[:, None, None] - points
    dist2 = np.maximum(direction[0] ** 2 + direction[1] ** 2 + direction[2] ** 2, min_dist2)
    direction *= 1.0 / np.sqrt(dist2)
    cos_receiver = np.maximum(normals[0] * direction[0] + normals[1] * direction[1] + normals[2] * direction[2], 0)
    return direction, dist2, cos_receiver


def _render_hdr(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one interior: linear radiance (H, W, 3) and the mask of pixels that see the exterior."""
    room, camera, dirs = _room_camera(rng, height, width)
    t_hit, surface = _intersect_room(dirs, room)
    normals = np.ascontiguousarray(_ROOM_NORMALS[surface].transpose(2, 0, 1))
    windows = _sample_windows(rng, room)
    boxes, lamps = _sample_furniture(rng, room)
    inv_dirs = _safe_inverse(dirs)
    for index, item in enumerate(boxes):
        rows, cols = camera.footprint(item.lo, item.hi)
        t_box, axis = _ray_box((0.0, 0.0, 0.0), inv_dirs[:, rows, cols], item.lo, item.hi)
        closer = t_box < t_hit[rows, cols]
        t_hit[rows, cols][closer] = t_box[closer]
        surface[rows, cols][closer] = 5 + index
        entered = -np.sign(dirs[:, rows, cols]) * (axis == np.arange(3)[:, None, None])
        normals[:, rows, cols][:, closer] = entered[:, closer]
    points = dirs * t_hit
    x, y, z = points
    emission = np.zeros((height, width, 3), np.float32)
    emitting = np.zeros((height, width), bool)
    for index, item in enumerate(boxes):
        if item.emission is not None:
            shade = surface == 5 + index
            emission[shade] = item.emission
            emitting |= shade

    albedo = _albedo_map(rng, surface, points, normals, room, boxes, windows)
    glass = np.zeros((height, width), bool)
    for window in windows:
        glass |= (surface == window.wall) & _window_parts(window, *_wall_coords(points, window.wall))[1]

    # Daylight: each window opening is an area light, sampled on a 3 x 2 grid.
    daylight = np.zeros((height, width), np.float32)
    for window in windows:
        into_room = _ROOM_NORMALS[window.wall]
        plane = window.plane(room)
        area = (window.u1 - window.u0) * (window.y1 - window.y0)
        for u in np.linspace(window.u0, window.u1, 5)[1:-1]:
            for v in np.linspace(window.y0, window.y1, 4)[1:-1]:
                source = np.array([u, v, plane] if window.wall == _BACK else [plane, v, u], np.float32)
                direction, dist2, cos_receiver = _toward(points, normals, source, 0.25)
                cos_source = np.maximum(-(into_room[0] * direction[0] + into_room[2] * direction[2]), 0)
                daylight += (area / 6) * cos_receiver * cos_source / dist2
    sky_colour = np.array([0.92, 0.97, 1.05], np.float32)
    irradiance = daylight[..., None] * sky_colour
    # Lamps: warm point lights inside the shades, brighter above and below the shade.
    for position, colour in lamps:
        direction, dist2, cos_receiver = _toward(points, normals, position, 0.05)
        irradiance += (0.9 * cos_receiver * (0.35 + 0.65 * np.abs(direction[1])) / dist2)[..., None] * colour
    # Recessed ceiling downlights: small glowing discs and downward spots (scallops on the walls).
    if rng.random() < 0.6:
        count = int(rng.integers(2, 5))
        spot_colour = np.array([1.0, 0.86, 0.68], np.float32) * np.float32(rng.uniform(0.3, 0.7))
        spots = np.zeros((height, width), np.float32)
        for i in range(count):
            position = np.array([room.left + (i + 0.5) * (room.right - room.left) / count + rng.uniform(-0.2, 0.2),
                                 room.ceiling - 0.01, rng.uniform(1.5, room.back - 0.6)], np.float32)
            direction, dist2, cos_receiver = _toward(points, normals, position, 0.05)
            spots += cos_receiver * np.maximum(direction[1], 0) ** 3 / dist2
            emission[(surface == _CEILING) & (np.hypot(x - position[0], z - position[2]) < 0.07)] = spot_colour * 25
        irradiance += spots[..., None] * spot_colour

    # Inter-reflections as an ambient term, darkened near room edges and around furniture feet.
    plane_dist = np.stack([x - room.left, room.right - x, y - room.floor, room.ceiling - y, room.back - z])
    own_plane = np.array([2, 3, 0, 1, 4])  # index into plane_dist of each room surface's own plane
    is_room = surface < 5
    rows, cols = np.nonzero(is_room)
    plane_dist[own_plane[surface[is_room]], rows, cols] = np.inf
    occlusion = 1 - 0.45 * np.exp(-plane_dist.min(0) / 0.35)
    on_floor = surface == _FLOOR
    for item in boxes:
        if item.lo[1] <= room.floor + 1e-3:
            dx = np.maximum(np.maximum(item.lo[0] - x, x - item.hi[0]), 0)
            dz = np.maximum(np.maximum(item.lo[2] - z, z - item.hi[2]), 0)
            occlusion[on_floor] *= (1 - 0.6 * np.exp(-np.hypot(dx, dz) / 0.12))[on_floor]
    interior = ~glass & ~emitting
    ambient = rng.uniform(0.35, 0.9) * _luminance(irradiance[interior]).mean()
    irradiance += (ambient * occlusion)[..., None] * sky_colour

    radiance = albedo * irradiance + emission
    radiance *= METERED_MID_GREY / np.median(_luminance(radiance[interior]))

    # The exterior through the glass: its median 10-100x the interior's.
    ratio = np.exp(rng.uniform(np.log(10), np.log(100)))
    if glass.any():
        view = _exterior(rng, dirs[:, glass])
        radiance[glass] = view * (ratio * METERED_MID_GREY / np.median(_luminance(view)))

    # Sunbeams through one window's panes onto whatever they reach, shadowed by furniture.
    if rng.random() < 0.5:
        window = windows[int(rng.integers(len(windows)))]
        outward = -_ROOM_NORMALS[window.wall]
        elevation, azimuth = rng.uniform(0.35, 0.8), rng.uniform(-0.7, 0.7)
        sideways = np.array([outward[2], 0, -outward[0]], np.float32)
        to_sun = (np.cos(elevation) * (np.cos(azimuth) * outward + np.sin(azimuth) * sideways)
                  + np.array([0, np.sin(elevation), 0], np.float32))
        axis = 2 if window.wall == _BACK else 0
        travel = (window.plane(room) - points[axis]) / to_sun[axis]
        through = points + travel * to_sun[:, None, None]
        lit = _window_parts(window, *_wall_coords(through, window.wall))[1] & (travel > 1e-3) & interior
        rows, cols = np.nonzero(lit)
        inv_sun = _safe_inverse(to_sun)
        for item in boxes:
            t_block, _ = _ray_box(points[:, rows, cols], inv_sun, item.lo, item.hi)
            blocked = t_block < travel[rows, cols]
            lit[rows[blocked], cols[blocked]] = False
        sun_cos = np.maximum(np.tensordot(to_sun, normals, 1), 0) * lit
        sun_cos = cv2.GaussianBlur(sun_cos.astype(np.float32), (0, 0), 0.8)  # penumbra
        sun_level = rng.uniform(0.5, 1.2) * ratio * METERED_MID_GREY
        radiance += albedo * np.array([1.0, 0.96, 0.88], np.float32) * (sun_level * sun_cos)[..., None]
    return radiance.astype(np.float32), glass


def _camera_input(rng: np.random.Generator, radiance: np.ndarray) -> np.ndarray:
    """Single in-camera exposure of the radiance: 8-bit sRGB with clipping, noise, cast and crushed shadows."""
    exposure = 2.0 ** rng.uniform(-1.0, 0.2)
    cast = rng.choice(["tungsten", "cool", "tint"])
    if cast == "tungsten":
        gains = np.array([rng.uniform(1.08, 1.25), 1.0, rng.uniform(0.65, 0.85)], np.float32)
    elif cast == "cool":
        gains = np.array([rng.uniform(0.8, 0.92), 1.0, rng.uniform(1.08, 1.25)], np.float32)
    else:
        gains = np.array([rng.uniform(0.92, 1.08), rng.uniform(0.92, 1.08), rng.uniform(0.92, 1.08)], np.float32)
    linear = radiance * exposure * gains
    # Poisson-Gaussian sensor noise: variance grows with the signal (shot) plus a read-noise floor.
    shot, read = rng.uniform(0.0008, 0.004), rng.uniform(0.002, 0.006)
    linear = linear + np.sqrt(shot * np.clip(linear, 0, 1) + read ** 2) * rng.standard_normal(linear.shape,
                                                                                            np.float32)
    encoded = srgb_encode(linear)
    # In-camera tone curve: a raised black point crushes the shadows, a mild gamma adds punch.
    black = rng.uniform(0.03, 0.09)
    encoded = np.clip((encoded - black) / (1 - black), 0, 1) ** rng.uniform(1.0, 1.15)
    image = _to_uint8(encoded)
    if rng.random() < 0.5:
        quality = int(rng.integers(70, 96))
        ok, buffer = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(image)


@lru_cache(maxsize=1)
def _mertens() -> cv2.MergeMertens:
    # Saturation weighted up from OpenCV's default 1: favours the frames where the view outside
    # keeps its colour, as an editor pulling the windows would.
    return cv2.createMergeMertens(contrast_weight=1.0, saturation_weight=3.0, exposure_weight=1.0)


def professional_target(radiance: np.ndarray) -> np.ndarray:
    """The edited photo: Mertens fusion of brackets simulated from the radiance, then a gentle finish.

    Brackets at ``TARGET_BRACKETS_EV`` stops are clipped and sRGB-encoded like camera frames and fused
    with OpenCV's Mertens exposure fusion (per-pixel weights contrast x saturation^3 x well-exposedness,
    Laplacian-pyramid blending). The fused image F is stretched between its 0.3rd and 99.8th luminance
    percentiles, brightened by the gamma that puts its median luminance at 0.5 (gamma limited to
    [0.6, 1]), given a mild S-curve ``0.7 x + 0.3 smoothstep(x)`` and a 10 % saturation boost.
    Returns uint8 RGB (H, W, 3).
    """
    brackets = [srgb_encode(radiance * 2.0 ** ev) * 255.0 for ev in TARGET_BRACKETS_EV]
    # OpenCV's parallel Mertens differs in the last float bit with the thread count; fuse on one
    # thread so the dataset's bytes do not depend on the machine's core count.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        fused = _mertens().process(brackets)
    finally:
        cv2.setNumThreads(threads)
    low, high = np.percentile(_luminance(fused), [0.3, 99.8])
    stretched = np.clip((fused - low) / max(high - low, 1e-3), 0, 1)
    median = float(np.median(_luminance(stretched)))
    gamma = float(np.clip(np.log(0.5) / np.log(min(max(median, 1e-3), 0.999)), 0.6, 1.0))
    brightened = stretched ** gamma
    curved = 0.7 * brightened + 0.3 * _smoothstep(0.0, 1.0, brightened)
    grey = _luminance(curved)[..., None]
    return _to_uint8(grey + 1.1 * (curved - grey))


def render_scene(rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE):
    """Render one random interior and its camera/professional pair.

    Args:
        rng: source of all randomness (the scene layout, the camera's errors).
        size: (height, width) in pixels, each at least ``MIN_SIZE``.

    Returns:
        (hdr_radiance, input_srgb, target_srgb): linear radiance float32 (H, W, 3) scaled so that the
        median interior luminance is ``METERED_MID_GREY`` (windows are 10-100x brighter), the camera
        input and the edited target as uint8 RGB (H, W, 3), pixel-aligned.
    """
    height, width = _check_size(size)
    radiance, _ = _render_hdr(rng, height, width)
    return radiance, _camera_input(rng, radiance), professional_target(radiance)


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"demo image size must be (height, width) integers, got {size!r}") from None
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"demo image size must be at least {MIN_SIZE}x{MIN_SIZE}, got {height}x{width}")
    return height, width


def default_cache_root(seed: int = 0) -> Path:
    """``$REHDR_CACHE/demo-v<DEMO_VERSION>-seed<seed>``; REHDR_CACHE defaults to ``~/.cache/realestate-hdr``."""
    return cache_root() / f"demo-v{DEMO_VERSION}-seed{seed}"


def _manifest(seed: int, num_train: int, num_val: int, size: tuple[int, int]) -> dict:
    return {"demo_version": DEMO_VERSION, "seed": seed, "num_train": num_train, "num_val": num_val,
            "size": list(size)}


def _is_complete(root: Path, manifest: dict) -> bool:
    try:
        if json.loads((root / "manifest.json").read_text()) != manifest:
            return False
    except (OSError, ValueError):
        return False
    return all((root / split / kind / f"{i:04d}.png").is_file()
               for split, count in (("train", manifest["num_train"]), ("val", manifest["num_val"]))
               for kind in ("input", "target") for i in range(count))


def _remove_stale_partials(root: Path) -> None:
    """Delete temporary folders left behind by interrupted generations (not ones still being written)."""
    now = time.time()
    for partial in root.parent.glob(f".{root.name}.partial-*"):
        try:
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                shutil.rmtree(partial, ignore_errors=True)
        except OSError:
            continue


def ensure_demo_data(root: str | os.PathLike | None = None, seed: int = 0, num_train: int = DEFAULT_NUM_TRAIN,
                     num_val: int = DEFAULT_NUM_VAL, size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """Generate the demo dataset once and return its folder.

    Layout: ``ROOT/{train,val}/{input,target}/0000.png ...`` (8-bit RGB PNG, pixel-aligned pairs) and
    ``ROOT/manifest.json`` with the generation parameters. Pair ``i`` of a split is rendered from
    ``numpy.random.default_rng([seed, split, i])`` (split 0 = train, 1 = val), so files are
    byte-identical for the same parameters. A folder whose manifest matches is returned untouched;
    otherwise the set is rendered into a temporary sibling folder and renamed into place when complete,
    so an interrupted run never leaves a half-written ROOT.

    Args:
        root: target folder; default ``default_cache_root(seed)``.
        seed: dataset seed.
        num_train, num_val: number of pairs per split (train >= 1, val >= 0).
        size: (height, width) of every image.
    """
    height, width = _check_size(size)
    if int(num_train) < 1 or int(num_val) < 0:
        raise ValueError(f"demo data needs num_train >= 1 and num_val >= 0, got {num_train} and {num_val}")
    if int(seed) < 0:
        raise ValueError(f"demo data seed must be a non-negative integer, got {seed}")
    root = Path(root).expanduser() if root is not None else default_cache_root(seed)
    manifest = _manifest(int(seed), int(num_train), int(num_val), (height, width))
    if _is_complete(root, manifest):
        return root
    if root.exists() and not (root / "manifest.json").is_file() and any(root.iterdir()):
        raise FileExistsError(f"demo data folder {root} exists and is not a demo dataset (no manifest.json); "
                              "pass an empty or new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    partial = root.parent / f".{root.name}.partial-{uuid.uuid4().hex}"
    try:
        for split_index, (split, count) in enumerate((("train", manifest["num_train"]),
                                                       ("val", manifest["num_val"]))):
            for kind in ("input", "target"):
                (partial / split / kind).mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([manifest["seed"], split_index, i])
                _, camera, edited = render_scene(rng, (height, width))
                for kind, image in (("input", camera), ("target", edited)):
                    path = partial / split / kind / f"{i:04d}.png"
                    if not cv2.imwrite(str(path), image[..., ::-1]):
                        raise OSError(f"could not write demo image {path}")
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _install(partial, root, manifest)
    except OSError as error:
        if is_disk_full(error, root.parent):
            raise DiskFullError(f"cannot write the demo data: the disk holding {root.parent} is full; free "
                                "some space or point $REHDR_CACHE at another disk") from error
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root


def _install(partial: Path, root: Path, manifest: dict) -> None:
    """Move a finished dataset into place, replacing an outdated one; defer to a concurrent winner."""
    if _is_complete(root, manifest):
        return  # another process finished the same dataset first
    outdated = None
    if root.exists():
        outdated = root.parent / f".{root.name}.partial-{uuid.uuid4().hex}"
        root.rename(outdated)
    try:
        partial.rename(root)
    except OSError:
        # Another process installed its copy between our check and rename; use it if it is complete.
        if not _is_complete(root, manifest):
            raise
    finally:
        if outdated is not None:
            shutil.rmtree(outdated, ignore_errors=True)
