"""Scenes: procedural 3D rooms rendered by a small vectorised ray caster, with exact dense labels.

Each image looks into a box-shaped room (floor, ceiling, back and side walls) holding a few spheres,
axis-aligned boxes and vertical cylinders that rest on the floor, plus flat decorations (a rug on the
floor, pictures on the walls: class boundaries that have no depth edge, as windows and pictures in
NYUv2). Per pixel the caster returns the nearest hit, from which come the three NYUv2 tasks:

* ``seg``: semantic class, ``-1`` = void (the NYUv2 convention);
* ``depth``: metres, the **z-distance along the optical axis** (as NYUv2 depth maps, not the distance
  along the ray), ``0`` = invalid;
* ``normal``: unit surface normal in the **camera frame** (x right, y down, z forward, the OpenCV
  convention), oriented towards the camera; all-zero = invalid.

Camera: a pinhole with square pixels; the larger image side spans ``fov`` degrees; the principal point
is the image centre. Pixel ``(i, j)`` (row, column) sees the ray through
``((j - cx) / f, (i - cy) / f, 1)`` with ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``: a pixel with depth
``z`` is the 3D point ``z * ((j - cx) / f, (i - cy) / f, 1)`` (see :attr:`Scenes.intrinsics`). The
camera stands near the front of the room at 1.2-1.6 m, pitched down 8-20 degrees, with small random yaw
and roll.

Class granularity (``classes``) mirrors the MTAN 2/7/19-class study; the coarse sets are unions of the
fine one (:func:`class_mapping`):

* 19 (``"fine"``): floor, rug, back wall, left wall, right wall, ceiling, picture, then
  sphere/box/cylinder x red/yellow/green/blue (the colour family of an object is its class);
* 7: floor, wall, ceiling, decoration (rug, picture), sphere, box, cylinder;
* 2: structure (the room and its decorations) vs object.

Images are Lambertian (ambient + two directional lights, shadows of the objects from the main light),
with checker or plank floors, striped or plain walls, Gaussian pixel noise and 8-bit quantisation.
Any size works; SegNet-style networks need H and W divisible by 32 (not enforced). Generation is
deterministic from ``(seed, split, i)`` per image, so a data set's first images do not depend on ``n``.
Data sets are cached under ``data_root()/cache/`` (see :class:`Scenes`).
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio import atomic_write
from ..paths import data_root
from .tensors import TensorTasks

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SHAPES = ("sphere", "box", "cylinder")
FAMILIES = ("red", "yellow", "green", "blue")
FAMILY_HUES = (0.0, 0.14, 0.33, 0.62)
STRUCTURE_CLASSES = ("floor", "rug", "back wall", "left wall", "right wall", "ceiling", "picture")
FINE_CLASSES: tuple[str, ...] = STRUCTURE_CLASSES + tuple(f"{c} {s}" for s in SHAPES for c in FAMILIES)
CLASS_NAMES: dict[int, tuple[str, ...]] = {
    2: ("structure", "object"),
    7: ("floor", "wall", "ceiling", "decoration", "sphere", "box", "cylinder"),
    19: FINE_CLASSES,
}
# fine class -> class at each granularity (coarse classes are unions of fine classes)
_TO_7 = (0, 3, 1, 1, 1, 2, 3) + tuple(4 + s for s in range(len(SHAPES)) for _ in FAMILIES)
_TO_2 = (0,) * len(STRUCTURE_CLASSES) + (1,) * (len(SHAPES) * len(FAMILIES))
_MAPS = {2: _TO_2, 7: _TO_7, 19: tuple(range(len(FINE_CLASSES)))}

# room-surface instance ids: 2 * axis + (ray direction positive along that axis)
_LEFT, _RIGHT, _FLOOR, _CEILING, _FRONT, _BACK = range(6)
_ROOM_FINE = (3, 4, 0, 5, 2, 2)          # room instance -> fine class (the front wall is never seen)
OBJECT_ID0 = 8                           # instance id of object slot k is OBJECT_ID0 + k
_BIG = 1.0e6                             # "infinite" slab bound


def resolve_classes(classes: int | str) -> int:
    """The number of classes of a granularity: 2, 7 or 19 (``"fine"``)."""
    if classes == "fine":
        return 19
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool) and int(classes) in _MAPS:
        return int(classes)
    raise ValueError(f"classes must be 2, 7, 19 or 'fine', got {classes!r}")


def class_mapping(classes: int | str) -> np.ndarray:
    """Look-up table from fine class id (0-18) to the class id at granularity ``classes``."""
    return np.asarray(_MAPS[resolve_classes(classes)], dtype=np.int64)


def scene_intrinsics(size: tuple[int, int], fov: float = 60.0) -> tuple[float, float, float, float]:
    """Pinhole intrinsics ``(fx, fy, cx, cy)`` in pixels for an image of ``size = (H, W)``."""
    height, width = size
    f = max(height, width) / (2.0 * math.tan(math.radians(fov) / 2.0))
    return f, f, (width - 1) / 2.0, (height - 1) / 2.0


# ----------------------------------------------------------------------------------------- sampling

class _Draws:
    """Scalar uniform draws served from blocks of a numpy Generator (much faster than one call each)."""

    def __init__(self, rng: np.random.Generator, block: int = 128) -> None:
        self.rng, self.block, self.buf, self.pos = rng, block, np.empty(0), 0

    def random(self) -> float:
        if self.pos == len(self.buf):
            self.buf, self.pos = self.rng.random(self.block).tolist(), 0
        self.pos += 1
        return self.buf[self.pos - 1]

    def uniform(self, low: float, high: float, size: int | None = None) -> Any:
        if size is not None:
            return np.array([self.uniform(low, high) for _ in range(size)])
        return low + (high - low) * self.random()

    def integers(self, low: int, high: int | None = None) -> int:
        low, high = (0, low) if high is None else (low, high)
        return min(high - 1, low + int((high - low) * self.random()))


def _colour(rng: _Draws, hue: float | None = None, sat: tuple[float, float] = (0.55, 0.9),
            val: tuple[float, float] = (0.55, 0.95)) -> list[float]:
    h = rng.uniform(0.0, 1.0) if hue is None else (hue + rng.uniform(-0.035, 0.035)) % 1.0
    return list(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world matrix: columns are the camera's right, down, forward axes in world (y up)."""
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ np.diag([1.0, -1.0, 1.0]) @ rz


def _sample_scene(gen: np.random.Generator, tan_half_w: float, objects: tuple[int, int]) -> dict[str, Any]:
    """Random parameters of one scene (room, camera, objects, decorations, lights) as numpy arrays."""
    rng = _Draws(gen)
    kmax = max(1, objects[1])                             # at least one (inactive) slot
    a, depth, height = rng.uniform(2.0, 3.0), rng.uniform(5.0, 8.0), rng.uniform(2.6, 3.2)
    cam = np.array([rng.uniform(-0.5, 0.5), rng.uniform(1.2, 1.6), rng.uniform(0.0, 0.4)])
    rot = _rot(math.radians(rng.uniform(-10, 10)), math.radians(rng.uniform(8, 20)),
               math.radians(rng.uniform(-3, 3)))
    s = {"cam": cam, "rot": rot, "lo": np.array([-a, 0.0, cam[2] - 1.0]), "hi": np.array([a, height, depth])}
    # objects: convex primitives = quadric (weights w, centre c, radius^2 r2) intersected with slabs
    c, w, r2 = np.zeros((kmax, 3)), np.zeros((kmax, 3)), np.ones(kmax)
    lo, hi = np.full((kmax, 3), -_BIG), np.full((kmax, 3), _BIG)
    colour, stripe, fine = np.zeros((kmax, 3)), np.zeros(kmax), np.zeros(kmax, dtype=np.int64)
    kind = np.full(kmax, -1, dtype=np.int64)
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        shape, family = int(rng.integers(3)), int(rng.integers(4))
        if shape == 0:
            r, h = rng.uniform(0.2, 0.55), 0.0
            foot = r
        elif shape == 1:
            hx, hz, h = rng.uniform(0.2, 0.55), rng.uniform(0.2, 0.55), rng.uniform(0.3, 1.2)
            foot = math.hypot(hx, hz)
        else:
            r, h = rng.uniform(0.15, 0.4), rng.uniform(0.4, 1.4)
            foot = r
        col, period = _colour(rng, FAMILY_HUES[family]), rng.uniform(0.08, 0.25) if rng.random() < 0.3 else 0.0
        for _try in range(8):                                 # rejection: footprints must not overlap
            z = rng.uniform(cam[2] + 1.2 + foot, depth - foot - 0.05)
            span = (z - cam[2]) * tan_half_w                 # inside the horizontal field of view
            x_lo, x_hi = max(-a + foot + 0.05, cam[0] - span), min(a - foot - 0.05, cam[0] + span)
            x = rng.uniform(x_lo, x_hi) if x_hi > x_lo else 0.0
            if all(math.hypot(x - px, z - pz) > foot + pf + 0.05 for px, pz, pf in placed):
                break
        else:
            continue
        k = len(placed)
        placed.append((x, z, foot))
        if shape == 0:
            c[k], w[k], r2[k] = (x, r, z), (1, 1, 1), r * r
        elif shape == 1:
            lo[k], hi[k] = (x - hx, 0.0, z - hz), (x + hx, h, z + hz)
        else:
            c[k], w[k], r2[k] = (x, 0.0, z), (1, 0, 1), r * r
            lo[k, 1], hi[k, 1] = 0.0, h
        colour[k], stripe[k], kind[k] = col, period, shape
        fine[k] = len(STRUCTURE_CLASSES) + 4 * shape + family
    s.update(k=len(placed), kind=kind, c=c, w=w, r2=r2, olo=lo, ohi=hi, ocol=colour, ostripe=stripe, ofine=fine)
    # floor (checker or planks), walls (plain or striped), ceiling
    base = _colour(rng, sat=(0.1, 0.45), val=(0.45, 0.85))
    s["floor"] = np.array([base, [v * rng.uniform(0.55, 0.8) for v in base]])
    s["floor_tile"], s["floor_checker"] = rng.uniform(0.3, 0.8), float(rng.random() < 0.5)
    s["wall"] = np.array(_colour(rng, sat=(0.05, 0.3), val=(0.6, 0.9)))
    s["wall_period"] = rng.uniform(0.15, 0.5) if rng.random() < 0.5 else 0.0
    s["wall_contrast"] = rng.uniform(0.08, 0.2)
    s["ceiling"] = np.array(_colour(rng, sat=(0.0, 0.1), val=(0.75, 0.95)))
    # rug: rectangle on the floor, striped along x
    rug_on = rng.random() < 0.6
    s["rug"] = np.array([rng.uniform(-a / 2, a / 2), rng.uniform(cam[2] + 1.5, depth - 1.0),
                         rng.uniform(0.5, 1.2), rng.uniform(0.4, 1.0)]) if rug_on else np.array([0, 0, -1.0, -1.0])
    rc = _colour(rng, sat=(0.4, 0.8), val=(0.4, 0.8))
    s["rug_col"], s["rug_period"] = np.array([rc, [v * 0.6 for v in rc]]), rng.uniform(0.1, 0.3)
    # pictures: up to two rectangles (u-centre, y-centre, half-u, half-y) on the back or a side wall
    pics, pic_wall, pic_col = np.tile([0.0, 0.0, -1.0, -1.0], (2, 1)), np.full(2, _BACK), np.zeros((2, 2, 3))
    for p in range(int(rng.integers(0, 3))):
        wall = (_BACK, _LEFT, _RIGHT)[int(rng.integers(3))]
        hu, hv = rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.45)
        u = (rng.uniform(-a + hu + 0.1, a - hu - 0.1) if wall == _BACK
             else rng.uniform(cam[2] + 1.0 + hu, depth - hu - 0.1))
        pics[p], pic_wall[p] = (u, rng.uniform(1.1, height - 0.6), hu, hv), wall
        pic_col[p] = [_colour(rng), _colour(rng)]
    s.update(pics=pics, pic_wall=pic_wall, pic_col=pic_col, pic_period=rng.uniform(0.05, 0.2, size=2))
    # lights: main (casts shadows) and fill, from above and in front of the walls; ambient
    lights = []
    for sign in (1.0, -1.0):
        el, az = math.radians(rng.uniform(35, 70)), sign * math.radians(rng.uniform(10, 60))
        lights.append([math.cos(el) * math.sin(az), math.sin(el), -math.cos(el) * math.cos(az)])
    s["light"] = np.array(lights)
    s["light_i"] = np.array([rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.25)])
    s["ambient"] = rng.uniform(0.25, 0.4)
    return s


# ------------------------------------------------------------------------------------------- render

Vec = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Hit = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | int"]
_EPS = 1e-4
_PRM = ("cx", "cy", "cz", "r2", "lx", "ly", "lz", "hx", "hy", "hz")   # packed object parameters


def _hit_sphere(o: Vec, d: Vec, p: dict[str, torch.Tensor]) -> Hit:
    """Entry distance, hit flag and entry face (3 = curved) of rays ``o + t d`` into spheres."""
    qx, qy, qz = o[0] - p["cx"], o[1] - p["cy"], o[2] - p["cz"]
    b = d[0] * qx + d[1] * qy + d[2] * qz
    c = qx * qx + qy * qy + qz * qz - p["r2"]
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    disc = b * b - a * c
    t = (-b - disc.clamp_min(0).sqrt()) / a
    return t, (disc >= 0) & (t > _EPS), 3


def _hit_cylinder(o: Vec, d: Vec, p: dict[str, torch.Tensor]) -> Hit:
    """Rays into vertical cylinders ``(x-cx)^2 + (z-cz)^2 <= r2, ly <= y <= hy``; face 1 = a cap."""
    qx, qz = o[0] - p["cx"], o[2] - p["cz"]
    b = d[0] * qx + d[2] * qz
    c = qx * qx + qz * qz - p["r2"]
    a = (d[0] * d[0] + d[2] * d[2]).clamp_min(1e-12)
    disc = b * b - a * c
    root = disc.clamp_min(0).sqrt()
    t0, t1 = (-b - root) / a, (root - b) / a
    ta, tb = (p["ly"] - o[1]) / d[1], (p["hy"] - o[1]) / d[1]
    ymin = torch.minimum(ta, tb)
    enter = torch.maximum(t0, ymin)
    hit = (disc >= 0) & (enter <= torch.minimum(t1, torch.maximum(ta, tb))) & (enter > _EPS)
    return enter, hit, torch.where(t0 >= ymin, 3, 1)


def _hit_box(o: Vec, d: Vec, p: dict[str, torch.Tensor]) -> Hit:
    """Rays into axis-aligned boxes (slab method); face = the axis of the entry plane."""
    enter = exit_ = face = None
    for ax, key in enumerate("xyz"):
        inv = 1.0 / d[ax]
        ta, tb = (p["l" + key] - o[ax]) * inv, (p["h" + key] - o[ax]) * inv
        lo, hi = torch.minimum(ta, tb), torch.maximum(ta, tb)
        if enter is None:
            enter, exit_, face = lo, hi, torch.zeros(lo.shape, dtype=torch.long)
        else:
            face = torch.where(lo > enter, ax, face)
            enter, exit_ = torch.maximum(enter, lo), torch.minimum(exit_, hi)
    return enter, (enter <= exit_) & (enter > _EPS), face


def _trace(o: Vec, d: Vec, kinds: np.ndarray, prm: torch.Tensor, t: torch.Tensor | None = None,
           any_hit: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest object hit of rays ``o + t d`` (components (B, 1) or (B, P)) closer than ``t``.

    ``kinds`` (B, K): shape of object slot k (-1 = none); ``prm`` (B, K, 10): packed parameters.
    Objects are processed kind by kind, the j-th object of that kind of every scene at once.
    Returns distance (inf: no hit), object slot (-1: none) and entry face (0-2 axis, 3 curved); with
    ``any_hit`` (shadow rays) only the slot is meaningful (>= 0: blocked by some object).
    """
    shape = torch.broadcast_shapes(o[0].shape, d[0].shape)
    state = {"t": torch.full(shape, math.inf) if t is None else t.clone(),
             "obj": torch.full(shape, -1, dtype=torch.long), "face": torch.zeros(shape, dtype=torch.long)}
    nb = kinds.shape[0]
    for kind, hit_fn in enumerate((_hit_sphere, _hit_box, _hit_cylinder)):
        slots = [np.flatnonzero(row == kind) for row in kinds]
        for j in range(max(len(s) for s in slots)):
            rows_np = np.array([b for b in range(nb) if len(slots[b]) > j])
            rows = torch.from_numpy(rows_np)
            ks = torch.from_numpy(np.array([slots[b][j] for b in rows_np]))[:, None]
            full = len(rows_np) == nb

            def sel(x: torch.Tensor) -> torch.Tensor:      # the rows of the scenes that have this object
                return x if full or x.shape[0] == 1 else x.index_select(0, rows)

            cols = prm[rows, ks[:, 0]]
            p = {name: cols[:, i:i + 1] for i, name in enumerate(_PRM)}
            enter, hit, f = hit_fn(tuple(map(sel, o)), tuple(map(sel, d)), p)
            if any_hit:
                new = {"obj": torch.where(hit, ks, sel(state["obj"]))}
            else:
                t_old = sel(state["t"])
                better = hit & (enter < t_old)
                new = {"t": torch.where(better, enter, t_old), "obj": torch.where(better, ks, sel(state["obj"])),
                       "face": torch.where(better, f, sel(state["face"]))}
            for name, value in new.items():
                if full:
                    state[name] = value
                else:
                    state[name].index_copy_(0, rows, value)
    return state["t"], state["obj"], state["face"]


def _render_chunk(scenes: list[dict[str, Any]], size: tuple[int, int], fov: float, shadows: bool
                  ) -> dict[str, torch.Tensor]:
    """Ray-cast a batch of scenes: linear image, fine labels, depth, camera-frame normals, instances."""
    height, width = size
    fx, fy, cx, cy = scene_intrinsics(size, fov)
    nb = len(scenes)

    def stack(key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(s[key]) for s in scenes])).to(dtype)

    def per(key: str) -> torch.Tensor:                    # a per-scene scalar, broadcast over pixels
        return stack(key)[:, None]

    rot, cam, lo, hi = stack("rot"), stack("cam"), stack("lo"), stack("hi")
    u = ((torch.arange(width) - cx) / fx).float().repeat(height)               # camera ray (u, v, 1)
    v = ((torch.arange(height) - cy) / fy).float().repeat_interleave(width)
    d = tuple(rot[:, i, 0:1] * u + rot[:, i, 1:2] * v + rot[:, i, 2:3] for i in range(3))  # world, (B, P)
    o = tuple(cam[:, i:i + 1] for i in range(3))
    # room: the exit face of the box around the camera
    for i in range(3):
        positive = d[i] > 0
        ti = (torch.where(positive, hi[:, i:i + 1], lo[:, i:i + 1]) - o[i]) / d[i]
        if i == 0:
            t, axis, pos = ti, torch.zeros(ti.shape, dtype=torch.long), positive
        else:
            closer = ti < t
            t, axis, pos = torch.where(closer, ti, t), torch.where(closer, i, axis), torch.where(closer, positive, pos)
    room = 2 * axis + pos.long()
    kinds = np.stack([s["kind"] for s in scenes])
    prm = torch.from_numpy(np.stack([np.concatenate([s["c"], s["r2"][:, None], s["olo"], s["ohi"]], 1)
                                     for s in scenes])).float()
    t, obj, face = _trace(o, d, kinds, prm, t)
    is_obj = obj >= 0
    oi = obj.clamp_min(0)
    inst = torch.where(is_obj, OBJECT_ID0 + obj, room)
    axis = torch.where(is_obj, face, axis)                       # 0-2: flat, normal along that axis
    point = tuple(o[i] + t * d[i] for i in range(3))
    # world normals: -sign(d_axis) e_axis on flat faces, the quadric's gradient on curved ones
    w = stack("w")
    grad = [torch.gather(w[..., i], 1, oi) * (point[i] - torch.gather(prm[..., i], 1, oi)) for i in range(3)]
    norm = (grad[0] * grad[0] + grad[1] * grad[1] + grad[2] * grad[2]).sqrt_().clamp_min_(1e-12)
    curved = axis == 3
    n = [torch.where(curved, grad[i] / norm, torch.where(axis == i, -torch.sign(d[i]), 0.0)) for i in range(3)]
    nc = [n[0] * rot[:, 0, j:j + 1] + n[1] * rot[:, 1, j:j + 1] + n[2] * rot[:, 2, j:j + 1] for j in range(3)]
    away = (nc[0] * u + nc[1] * v + nc[2]) > 0                   # orient towards the camera
    nc = [torch.where(away, -c, c) for c in nc]
    # labels
    fine = torch.where(is_obj, torch.gather(stack("ofine", torch.long), 1, oi), torch.tensor(_ROOM_FINE)[room])
    x, y, z = point
    # albedo (B, 3, P): floor (checker or planks), rug, walls, ceiling, pictures, objects
    tile = per("floor_tile")
    odd = torch.remainder(torch.floor(x / tile) + per("floor_checker") * torch.floor(z / tile), 2) > 0
    floor = stack("floor")
    albedo = torch.where(odd[:, None], floor[:, 1, :, None], floor[:, 0, :, None])
    rug, rug_col = stack("rug"), stack("rug_col")
    on_rug = (inst == _FLOOR) & ((x - rug[:, 0:1]).abs() < rug[:, 2:3]) & ((z - rug[:, 1:2]).abs() < rug[:, 3:4])
    band = torch.remainder(torch.floor(x / per("rug_period")), 2) > 0
    albedo = torch.where(on_rug[:, None], torch.where(band[:, None], rug_col[:, 1, :, None], rug_col[:, 0, :, None]),
                         albedo)
    along = torch.where(inst == _BACK, x, z)                    # horizontal coordinate on a wall
    period = per("wall_period")
    stripes = torch.where(period > 0, torch.remainder(torch.floor(along / period.clamp_min(1e-3)), 2), 0.0)
    wall = stack("wall")[:, :, None] * (1.0 - per("wall_contrast") * stripes)[:, None]
    is_wall = (inst == _LEFT) | (inst == _RIGHT) | (inst == _BACK) | (inst == _FRONT)
    albedo = torch.where(is_wall[:, None], wall, albedo)
    albedo = torch.where((inst == _CEILING)[:, None], stack("ceiling")[:, :, None], albedo)
    pics, pic_wall, pic_col, pic_period = (stack("pics"), stack("pic_wall", torch.long), stack("pic_col"),
                                           stack("pic_period"))
    on_pic = torch.zeros_like(on_rug)
    for k in range(pics.shape[1]):
        inside = ((inst == pic_wall[:, k:k + 1]) & ((along - pics[:, k, 0:1]).abs() < pics[:, k, 2:3])
                  & ((y - pics[:, k, 1:2]).abs() < pics[:, k, 3:4]))
        diag = torch.remainder(torch.floor((along + y) / pic_period[:, k:k + 1]), 2) > 0
        colour = torch.where(diag[:, None], pic_col[:, k, 1, :, None], pic_col[:, k, 0, :, None])
        albedo = torch.where(inside[:, None], colour, albedo)
        on_pic |= inside
    fine = torch.where(on_rug, 1, torch.where(on_pic, 6, fine))
    oper = torch.gather(stack("ostripe"), 1, oi)
    obands = torch.where(oper > 0, torch.remainder(torch.floor(y / oper.clamp_min(1e-3)), 2), 0.0)
    ocol = stack("ocol")
    ocolour = torch.stack([torch.gather(ocol[..., i], 1, oi) for i in range(3)], 1) * (1.0 - 0.3 * obands)[:, None]
    albedo = torch.where(is_obj[:, None], ocolour, albedo)
    # shading: ambient + Lambertian directional lights; the objects shadow the main light
    light, light_i = stack("light"), stack("light_i")
    cosines = [(n[0] * light[:, k, 0:1] + n[1] * light[:, k, 1:2] + n[2] * light[:, k, 2:3]).clamp_min(0)
               for k in range(light.shape[1])]
    if shadows and (kinds >= 0).any():
        origin = tuple(point[i] + 1e-3 * n[i] for i in range(3))
        _, blocker, _ = _trace(origin, tuple(light[:, 0, i:i + 1] for i in range(3)), kinds, prm, any_hit=True)
        cosines[0] = torch.where(blocker >= 0, 0.0, cosines[0])
    shade = per("ambient") + sum(light_i[:, k:k + 1] * c for k, c in enumerate(cosines))
    image = albedo * shade[:, None]
    return {"image": image.reshape(nb, 3, height, width), "fine": fine.reshape(nb, height, width),
            "depth": t.reshape(nb, height, width), "normal": torch.stack(nc, 1).reshape(nb, 3, height, width),
            "instance": inst.reshape(nb, height, width)}


def _invalid_mask(rngs: list[np.random.Generator], size: tuple[int, int], fraction: float) -> torch.Tensor:
    """Blob-shaped invalid regions: the top ``fraction`` of a smooth random field, per image."""
    height, width = size
    grid = torch.from_numpy(np.stack([r.random((5, 5)) for r in rngs]).astype(np.float32))[:, None]
    field = F.interpolate(grid, size=size, mode="bicubic", align_corners=False).reshape(len(rngs), -1)
    count = int(round(fraction * height * width))
    mask = torch.zeros_like(field, dtype=torch.bool)
    if count > 0:
        mask.scatter_(1, field.topk(count, dim=1).indices, True)
    return mask.reshape(len(rngs), height, width)


def render_scenes(n: int, size: tuple[int, int] = (64, 64), seed: int = 0, split: str = "train",
                  invalid: float = 0.0, objects: tuple[int, int] = (3, 6), noise: float = 0.02,
                  shadows: bool = True, fov: float = 60.0, max_depth: float | None = None
                  ) -> dict[str, torch.Tensor]:
    """Render ``n`` scenes in storage form (no caching).

    Returns ``image`` uint8 (N, 3, H, W), ``seg`` int8 fine labels (N, H, W), ``depth`` float32
    (N, 1, H, W), ``normal`` float32 (N, 3, H, W), ``instance`` int8 (N, H, W): room surfaces 0-5 (left,
    right, floor, ceiling, front, back wall), object ``k`` is ``OBJECT_ID0 + k``. Invalid pixels (the
    ``invalid`` blobs and, if ``max_depth`` is set, pixels farther than it) have seg -1, depth 0,
    normal 0 and instance -1; the image is complete there.
    """
    height, width = size
    split_id = SPLITS.index(split)
    fx, _, cx, _ = scene_intrinsics(size, fov)
    tan_half_w = (width - 1 - cx) / fx
    out = {"image": torch.empty((n, 3, height, width), dtype=torch.uint8),
           "seg": torch.empty((n, height, width), dtype=torch.int8),
           "depth": torch.empty((n, 1, height, width), dtype=torch.float32),
           "normal": torch.empty((n, 3, height, width), dtype=torch.float32),
           "instance": torch.empty((n, height, width), dtype=torch.int8)}
    chunk = max(1, min(64, (1 << 18) // (height * width)))
    for start in range(0, n, chunk):
        ids = range(start, min(n, start + chunk))
        rngs = [np.random.default_rng([seed, split_id, i]) for i in ids]  # one stream per image (masks: own)
        res = _render_chunk([_sample_scene(r, tan_half_w, objects) for r in rngs], size, fov, shadows)
        bad = (_invalid_mask([np.random.default_rng([seed, split_id, i, 1]) for i in ids], size, invalid)
               if invalid > 0 else torch.zeros((len(rngs), height, width), dtype=torch.bool))
        if max_depth is not None:
            bad |= res["depth"] > max_depth
        pixel_noise = torch.from_numpy(np.stack([r.standard_normal((3, height, width), dtype=np.float32)
                                                 for r in rngs]))
        image = (res["image"] + noise * pixel_noise).clamp_(0, 1)
        sl = slice(start, start + len(rngs))
        out["image"][sl] = (image * 255).round_().to(torch.uint8)
        out["seg"][sl] = res["fine"].masked_fill(bad, -1).to(torch.int8)
        out["depth"][sl] = res["depth"].masked_fill(bad, 0.0)[:, None]
        out["normal"][sl] = res["normal"].masked_fill(bad[:, None], 0.0)
        out["instance"][sl] = res["instance"].masked_fill(bad, -1).to(torch.int8)
    return out


# -------------------------------------------------------------------------------------------- cache

def _cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return data_root() / "cache" / f"scenes-{digest}.pt"


def _load_cache(path: Path, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The cached arrays, or ``None`` when the file is missing, unreadable or does not match ``key``."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        n, (h, w) = key["n"], key["size"]
        shapes = {"image": (n, 3, h, w), "seg": (n, h, w), "depth": (n, 1, h, w), "normal": (n, 3, h, w),
                  "instance": (n, h, w)}
        dtypes = {"image": torch.uint8, "seg": torch.int8, "depth": torch.float32, "normal": torch.float32,
                  "instance": torch.int8}
        ok = (isinstance(blob, dict) and blob.get("key") == json.dumps(key, sort_keys=True)
              and all(isinstance(blob.get(k), torch.Tensor) and tuple(blob[k].shape) == s
                      and blob[k].dtype == dtypes[k] for k, s in shapes.items()))
        return {k: blob[k] for k in shapes} if ok else None
    except Exception:  # a corrupt or foreign file: regenerate
        return None


def _save_cache(path: Path, key: dict[str, Any], arrays: dict[str, torch.Tensor]) -> None:
    """Write atomically (:func:`mtlutils.fileio.atomic_write`); failure to write only warns."""
    try:
        atomic_write(path, lambda fh: torch.save({"key": json.dumps(key, sort_keys=True), **arrays}, fh))
    except OSError as err:
        warnings.warn(f"could not write the scenes cache {path}: {err}", RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------ dataset

class Scenes(TensorTasks):
    """Procedural room scenes with semantic labels, depth and surface normals (the NYUv2 tasks).

    Samples are dicts ``{"image": (3, H, W) float32 in [0, 1], "seg": (H, W) int64 (-1 = void),
    "depth": (1, H, W) float32 metres (0 = invalid), "normal": (3, H, W) float32 unit, camera frame
    (0 = invalid)}``. The full tensors are :attr:`images` and :attr:`targets`; :attr:`instances`
    (N, H, W) holds the surface id per pixel (room surface 0-5, object ``OBJECT_ID0 + k``, -1 invalid)
    and :attr:`intrinsics` the camera ``(fx, fy, cx, cy)``; :attr:`num_classes` and :attr:`class_names`
    describe the labels. A cache file takes about 21 bytes per pixel (86 kB per 64x64 image).

    Args:
        n: number of images.
        size: ``(H, W)``; any size (SegNet needs multiples of 32).
        classes: 2, 7, 19 or ``"fine"`` (= 19); see :data:`CLASS_NAMES` and :func:`class_mapping`.
        seed: same ``(seed, split)`` -> identical arrays; image ``i`` does not depend on ``n``.
        split: ``"train"``, ``"val"`` or ``"test"``: separate random streams.
        invalid: fraction of pixels per image marked invalid (blobs), as the holes of NYUv2.
        cache: load from / save to ``data_root()/cache/scenes-<hash>.pt``. The key hashes every
            generation parameter and :data:`FORMAT_VERSION`, not ``classes``: the file holds the fine
            labels and every granularity maps them on load. A corrupt file is regenerated.
        objects: ``(min, max)`` objects per room (fewer when they do not fit).
        noise: standard deviation of Gaussian pixel noise (before 8-bit quantisation).
        shadows: cast the objects' shadows from the main light.
        fov: field of view of the larger image side, degrees.
        max_depth: if set, pixels farther than this (metres) are invalid too (a depth sensor's range).
    """

    task_names = ("seg", "depth", "normal")

    def __init__(self, n: int = 1000, size: tuple[int, int] = (64, 64), classes: int | str = 7, seed: int = 0,
                 split: str = "train", invalid: float = 0.0, cache: bool = True,
                 objects: tuple[int, int] = (3, 6), noise: float = 0.02, shadows: bool = True,
                 fov: float = 60.0, max_depth: float | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        height, width = (int(v) for v in size)
        if height < 2 or width < 2:
            raise ValueError(f"size must be at least (2, 2), got {size}")
        if not 0.0 <= invalid < 1.0:
            raise ValueError(f"invalid must be in [0, 1), got {invalid}")
        if not 0 <= objects[0] <= objects[1] or objects[1] > 100:
            raise ValueError(f"objects must be (min, max) with 0 <= min <= max <= 100, got {objects}")
        if not 10.0 <= fov <= 120.0:
            raise ValueError(f"fov must be in [10, 120] degrees, got {fov}")
        self.num_classes = resolve_classes(classes)
        self.class_names = CLASS_NAMES[self.num_classes]
        self.n, self.size, self.seed, self.split = n, (height, width), seed, split
        self.intrinsics = scene_intrinsics(self.size, fov)
        key = {"version": FORMAT_VERSION, "n": n, "size": [height, width], "seed": int(seed), "split": split,
               "invalid": float(invalid), "objects": [int(objects[0]), int(objects[1])], "noise": float(noise),
               "shadows": bool(shadows), "fov": float(fov),
               "max_depth": None if max_depth is None else float(max_depth)}
        self.cache_key = key
        arrays = None
        self.cache_path = _cache_path(key) if cache else None
        if self.cache_path is not None:
            arrays = _load_cache(self.cache_path, key)
        if arrays is None:
            arrays = render_scenes(n, self.size, seed, split, invalid, tuple(objects), noise, shadows, fov,
                                   max_depth)
            if self.cache_path is not None:
                _save_cache(self.cache_path, key, arrays)
        fine = arrays["seg"].long()
        lut = torch.from_numpy(class_mapping(self.num_classes))
        seg = torch.where(fine >= 0, lut[fine.clamp_min(0)], -1)
        self.images = arrays["image"].float().div_(255.0)
        self.targets = {"seg": seg, "depth": arrays["depth"].clone(),
                        "normal": arrays["normal"]}
        self.instances = arrays["instance"].clone()


def make_scenes(n: int = 1000, size: tuple[int, int] = (64, 64), classes: int | str = 7, seed: int = 0,
                split: str = "train", invalid: float = 0.0, cache: bool = True, **kwargs: Any) -> Scenes:
    """Build (or load from the cache) a :class:`Scenes` data set; see it for the arguments."""
    return Scenes(n=n, size=size, classes=classes, seed=seed, split=split, invalid=invalid, cache=cache, **kwargs)
