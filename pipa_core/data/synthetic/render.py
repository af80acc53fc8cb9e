"""Rasterise a :class:`~pipa_core.data.synthetic.scene.World` and give it a domain look.

Two passes per frame:

1. :func:`rasterize` projects the world through the pinhole camera and paints
   it far-to-near with ``cv2.fillPoly`` (painter's algorithm): a train-ID label
   map, a flat *albedo* colour image, and per-pixel world coordinates of the
   ground and of the facades (so textures, windows and lane markings stay
   glued to the world when the camera moves).
2. :func:`apply_look` turns the albedo into the final RGB image:
   ``source`` ("game") keeps flat shading, a saturated palette, crisp edges and
   cel-shaded outlines; ``target`` ("real") mutes the palette and adds
   world-anchored textures, sun/shadow lighting, haze, a colour cast,
   vignetting, lens blur and sensor noise.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipa_core.data.synthetic.scene import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FAR,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    NEAR,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    World,
)
from pipa_core.labels import IGNORE_INDEX

# Surface codes: which per-pixel coordinates texture a pixel.
S_IMAGE, S_GROUND, S_FACADE_L, S_FACADE_R = 0, 1, 2, 3

# Per-class albedo palettes (RGB 0..255); an object's ``tone`` in [0, 1) picks one.
_PALETTES = {
    "source": {  # saturated, "video game"
        ROAD: [(78, 74, 98)],
        SIDEWALK: [(222, 184, 140), (210, 170, 200)],
        BUILDING: [(232, 112, 80), (80, 150, 232), (236, 204, 72), (190, 90, 200), (90, 200, 150)],
        WALL: [(170, 170, 230), (230, 150, 150)],
        FENCE: [(230, 150, 50), (150, 220, 60)],
        POLE: [(250, 230, 40)],
        LIGHT: [(40, 40, 60)],
        SIGN: [(240, 30, 30), (30, 90, 250), (250, 210, 0)],
        VEGETATION: [(40, 200, 60), (90, 220, 40)],
        TERRAIN: [(170, 230, 80)],
        SKY: [(70, 150, 255)],
        PERSON: [(250, 60, 120), (60, 220, 250), (250, 160, 30), (140, 60, 250)],
        RIDER: [(250, 40, 40), (40, 250, 160)],
        CAR: [
            (240, 30, 40),
            (30, 80, 250),
            (250, 200, 20),
            (20, 200, 90),
            (250, 250, 250),
            (250, 120, 0),
        ],
        TRUCK: [(250, 130, 30), (40, 170, 240)],
        BUS: [(250, 210, 20), (240, 40, 60)],
        TRAIN: [(40, 220, 220), (230, 60, 200)],
        MOTORCYCLE: [(250, 40, 200), (30, 250, 250)],
        BICYCLE: [(20, 250, 120), (250, 80, 20)],
    },
}


def _muted(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The "real" version of a game colour: halfway to a grey of its own brightness
    (pulled towards mid-grey), i.e. the same hue at about half the saturation."""
    c = np.asarray(rgb, np.float64)
    grey = 0.5 * c.mean() + 0.5 * 140.0
    return tuple(int(round(v)) for v in 0.5 * c + 0.5 * grey)


# The real world has the game's objects in duller colours (as GTA5 vs Cityscapes): the
# target palette is the source palette muted. Generator version 2 drew independent
# greys and browns, a colour gap no augmentation of the source bridges (a from-scratch
# source model then had no recall on most small classes; docs/synthetic_benchmark.md).
_PALETTES["target"] = {
    cls: [_muted(c) for c in colours] for cls, colours in _PALETTES["source"].items()
}
_SKIN = [(240, 200, 170), (200, 150, 110), (140, 95, 70)]
_GLASS = {"source": (150, 230, 250), "target": _muted((150, 230, 250))}


def color(domain: str, cls: int, tone: float, shade: float = 1.0) -> tuple[float, float, float]:
    """Albedo of class ``cls`` in ``domain`` for ``tone`` in [0, 1), RGB floats in [0, 1]."""
    pal = _PALETTES[domain][cls]
    c = np.asarray(pal[int(tone * len(pal)) % len(pal)], dtype=np.float64) / 255.0
    return tuple(float(v) for v in np.clip(c * shade, 0.0, 1.0))


def _fixed_point(uv: np.ndarray) -> np.ndarray:
    """Pixel coordinates ``(N, 2)`` -> int32 with 4 fractional bits (cv2 ``shift=4``), clamped."""
    a = uv * 16.0
    np.maximum(a, -5e5, out=a)
    np.minimum(a, 5e5, out=a)
    return np.rint(a, out=a).astype(np.int32)


class Canvas:
    """Painter's-algorithm raster of one frame: ``label (H, W) uint8``, ``albedo (H, W, 3) float32``.

    Also keeps ``surface (H, W) uint8`` (which coordinates texture a pixel) and
    the camera of frame ``t``; ``project`` maps world metres to pixels.
    """

    def __init__(self, world: World, t: float, height: int, width: int):
        self.world, self.domain = world, world.domain
        self.h, self.w = height, width
        self.f = world.focal * width
        self.u0, self.v0 = width / 2.0, world.horizon * height
        self.cx, self.cz = world.camera(t)
        self.ch = world.cam_height
        self.label = np.full((height, width), SKY, np.uint8)
        self.albedo = np.zeros((height, width, 3), np.float32)
        self.surface = np.zeros((height, width), np.uint8)

    def project(self, x, y, z) -> np.ndarray:
        """World points (broadcastable arrays, metres) -> pixel coordinates ``(N, 2)`` as (u, v)."""
        x, y, z = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(z, np.float64)
        n = max(x.size, y.size, z.size)
        out = np.empty((n, 2))
        inv = self.f / np.maximum(z - self.cz, NEAR)
        out[:, 0] = self.u0 + (x - self.cx) * inv
        out[:, 1] = self.v0 + (self.ch - y) * inv
        return out

    def scale(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.f / max(z - self.cz, NEAR)

    def poly(self, uv: np.ndarray, cls: int, rgb, surface: int = S_IMAGE) -> None:
        """Fill polygon ``uv (N, 2)`` (sub-pixel precision) with class ``cls`` and colour ``rgb``."""
        pts = [_fixed_point(uv)]
        cv2.fillPoly(self.label, pts, int(cls), cv2.LINE_8, 4)
        cv2.fillPoly(self.albedo, pts, tuple(map(float, rgb)), cv2.LINE_8, 4)
        cv2.fillPoly(self.surface, pts, int(surface), cv2.LINE_8, 4)

    def line(self, uv: np.ndarray, cls: int, rgb, thickness_m: float, z: float) -> None:
        """Polyline through ``uv`` whose width is ``thickness_m`` metres at depth ``z`` (>= 1 px)."""
        th = max(1, int(round(thickness_m * self.scale(z))))
        pts = [_fixed_point(uv)]
        cv2.polylines(self.label, pts, False, int(cls), th, cv2.LINE_8, 4)
        cv2.polylines(self.albedo, pts, False, tuple(float(c) for c in rgb), th, cv2.LINE_8, 4)
        cv2.polylines(self.surface, pts, False, S_IMAGE, th, cv2.LINE_8, 4)

    def box(self, x0, x1, y0, y1, z0, z1, cls: int, rgb) -> None:
        """Axis-aligned box; draws its camera-facing faces with flat face shading."""
        z0 = max(z0, self.cz + NEAR)
        if z1 <= z0:
            return
        c = np.asarray(rgb)
        if self.cx < x0:  # left face visible
            self.poly(self.project([x0] * 4, [y0, y0, y1, y1], [z0, z1, z1, z0]), cls, c * 0.78)
        elif self.cx > x1:  # right face visible
            self.poly(self.project([x1] * 4, [y0, y0, y1, y1], [z0, z1, z1, z0]), cls, c * 0.78)
        if self.ch > y1:  # top face visible
            self.poly(
                self.project([x0, x1, x1, x0], [y1] * 4, [z0, z0, z1, z1]),
                cls,
                np.minimum(c * 1.12, 1),
            )
        self.poly(self.project([x0, x1, x1, x0], [y0, y0, y1, y1], [z0] * 4), cls, c)

    def disc(self, cx, cy, z, r, cls, rgb, n: int = 14, axis=(1.0, 0.0)) -> None:
        """Filled disc of radius ``r`` m centred at ``(cx, cy, z)``; ``axis=(ax, az)`` is its in-plane horizontal."""
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        ax, az = axis
        self.poly(
            self.project(cx + r * np.cos(a) * ax, cy + r * np.sin(a), z + r * np.cos(a) * az),
            cls,
            rgb,
        )


def rasterize(world: World, t: float, height: int, width: int) -> Canvas:
    """Paint frame ``t`` of ``world`` at ``height x width``; returns the filled :class:`Canvas`."""
    cv = Canvas(world, t, height, width)
    cv.albedo[:] = color(world.domain, SKY, 0.0)
    _ground(cv)
    for blk in world.skyline:
        z = cv.cz + FAR
        cv.poly(
            cv.project(
                [blk["x0"], blk["x1"], blk["x1"], blk["x0"]], [0, 0, blk["h"], blk["h"]], [z] * 4
            ),
            blk["cls"],
            color(world.domain, blk["cls"], blk["tone"], 0.9),
        )
    for fa in world.facades:
        _facade(cv, fa)
    # Objects far to near; anything behind the camera or beyond the far plane is skipped.
    placed = []
    for ob in world.objects:
        x, z = ob["x"] + ob["vx"] * t, ob["z"] + ob["vz"] * t
        extent = ob.get("len", 1.5)
        if z + extent < cv.cz + NEAR or z > cv.cz + FAR:
            continue
        # Cull objects outside the horizontal field of view (4 m margin for arms, crowns and widths).
        inv = cv.f / max(z + (extent if abs(x - cv.cx) > 4 else 0.0) - cv.cz, NEAR)
        if abs(x - cv.cx) - 4.0 > (cv.w / 2 + 2) / inv:
            continue
        placed.append((z, x, ob))
    placed.sort(key=lambda p: -p[0])
    for z, x, ob in placed:
        _DRAW[ob["kind"]](cv, ob, x, z, t)
    if world.hood > 0:
        _hood(cv)
    return cv


def _ground(cv: Canvas) -> None:
    """Road / sidewalk / terrain per pixel from the ground-plane intersection of each ray."""
    w = cv.world
    v = np.arange(cv.h, dtype=np.float64) + 0.5
    u = np.arange(cv.w, dtype=np.float64) + 0.5
    rows = v > cv.v0 + 0.5
    dz = cv.f * cv.ch / (v[rows] - cv.v0)  # depth of the ground point seen by each row
    gx = cv.cx + (u[None, :] - cv.u0) * dz[:, None] / cv.f
    ax = np.abs(gx)
    cls = np.full(gx.shape, SIDEWALK, np.uint8)
    cls[ax < w.road_half] = ROAD
    outer = w.road_half + w.sidewalk
    if w.terrain:
        cls[ax >= outer] = TERRAIN
    cls[ax >= min(w.facade_x) + 0.5] = TERRAIN
    cv.label[rows] = cls
    pal = np.stack([np.asarray(color(w.domain, c, 0.0)) for c in range(19)]).astype(np.float32)
    cv.albedo[rows] = pal[cls]
    cv.surface[rows] = S_GROUND
    cv.ground_x = np.zeros((cv.h, cv.w), np.float32)
    cv.ground_z = np.zeros((cv.h, cv.w), np.float32)
    cv.ground_x[rows] = gx
    cv.ground_z[rows] = cv.cz + dz[:, None]


def _facade(cv: Canvas, fa: dict) -> None:
    side = fa["side"]
    x = side * cv.world.facade_x[0 if side < 0 else 1]
    z0, z1 = max(fa["z0"], cv.cz + NEAR), fa["z1"]
    if z1 <= z0 or z0 > cv.cz + FAR:
        return
    z1 = min(z1, cv.cz + FAR)
    rgb = color(cv.domain, fa["cls"], fa["tone"], 0.85 if side < 0 else 1.0)
    if fa["cls"] == VEGETATION:  # a tree line with a bumpy top
        zs = np.linspace(z0, z1, 9)
        tops = fa["h"] * (1 + 0.18 * np.sin(zs * 1.3 + fa["tone"] * 9))
        xs = np.full(11, x)
        ys = np.concatenate([[0], tops, [0]])
        zz = np.concatenate([[z0], zs, [z1]])
        cv.poly(cv.project(xs, ys, zz), VEGETATION, rgb, S_IMAGE)
    else:
        surf = S_FACADE_L if side < 0 else S_FACADE_R
        cv.poly(
            cv.project([x] * 4, [0, fa["h"], fa["h"], 0], [z0, z0, z1, z1]), BUILDING, rgb, surf
        )


def _car_like(cv: Canvas, ob: dict, x: float, z: float, cls: int) -> None:
    """Cars, trucks, buses and trams as boxes: wheels, body, cabin/window band, lights."""
    d = cv.domain
    w, h, ln = ob["w"], ob["h"], ob["len"]
    x0, x1, z1 = x, x + w, z + ln
    rgb = np.asarray(color(d, cls, ob["tone"]))
    tyre = (0.06, 0.06, 0.07)
    detail = cv.scale(z) * w > 5  # wheels, windows and lights only when a few pixels wide
    for zw in (z1 - 1.2, z + 0.6) if detail else ():  # far axle first
        cv.box(x0 + 0.02, x0 + 0.28, 0, 0.62, zw, zw + 0.6, cls, tyre)
        cv.box(x1 - 0.28, x1 - 0.02, 0, 0.62, zw, zw + 0.6, cls, tyre)
    glass = np.asarray(_GLASS[d]) / 255.0
    if cls == CAR:
        body_top = 0.55 * h
        cv.box(x0, x1, 0.25, body_top, z, z1, cls, rgb)
        cz0, cz1 = z + 0.9, z1 - 1.1
        cv.box(x0 + 0.12, x1 - 0.12, body_top, h, cz0, cz1, cls, rgb * 0.95)
        if detail and max(cz0, cv.cz + NEAR) < cz1:  # rear / front window on the cabin face
            zf = max(cz0, cv.cz + NEAR)
            cv.poly(
                cv.project(
                    [x0 + 0.22, x1 - 0.22, x1 - 0.3, x0 + 0.3],
                    [body_top + 0.05] * 2 + [h - 0.06] * 2,
                    [zf] * 4,
                ),
                cls,
                glass,
            )
    else:
        cab = 2.3 if cls == TRUCK else 0.0
        if cab:  # cargo box plus a lower cab
            cv.box(x0, x1, 0.35, h * 0.8, z1 - cab, z1, cls, rgb * 0.9)
            cv.box(
                x0, x1, 0.35, h, z, z1 - cab - 0.2, cls, np.asarray(color(d, cls, ob["tone"] + 0.5))
            )
        else:
            cv.box(x0, x1, 0.3, h, z, z1, cls, rgb)
            cv.box(x0 - 0.02, x1 + 0.02, 0.5 * h, 0.82 * h, z + 0.3, z1 - 0.3, cls, glass)
            if cls == TRAIN:  # pantograph
                zp = z + ln * 0.4
                cv.line(
                    cv.project(
                        [x + w / 2 - 0.6, x + w / 2, x + w / 2 + 0.6], [h, h + 0.9, h], [zp] * 3
                    ),
                    cls,
                    (0.1, 0.1, 0.1),
                    0.06,
                    zp,
                )
    zf = max(z, cv.cz + NEAR)
    if detail and zf < z1:  # tail lights (or head lights for oncoming traffic)
        lamp = (1.0, 0.95, 0.8) if ob["vz"] < 0 else (0.9, 0.08, 0.05)
        for lx in (x0 + 0.08, x1 - 0.33):
            cv.poly(
                cv.project([lx, lx + 0.25, lx + 0.25, lx], [0.62, 0.62, 0.78, 0.78], [zf] * 4),
                cls,
                lamp,
            )


def _draw_car(cv, ob, x, z, t):
    _car_like(cv, ob, x, z, CAR)


def _draw_truck(cv, ob, x, z, t):
    _car_like(cv, ob, x, z, TRUCK)


def _draw_bus(cv, ob, x, z, t):
    _car_like(cv, ob, x, z, BUS)


def _draw_train(cv, ob, x, z, t):
    _car_like(cv, ob, x, z, TRAIN)


def _figure(cv: Canvas, x, z, h, cls, tone, tone2, phase, seated: bool) -> None:
    """A person (or rider) as a camera-facing billboard: legs, torso with arms, head."""
    d = cv.domain
    s = h / 1.72
    shirt = color(d, cls, tone)
    trousers = color(d, PERSON, tone2, 0.6)
    skin = tuple(c / 255 for c in _SKIN[int(tone2 * 3) % 3])
    if seated:
        hip = 0.95 * s
        for dx in (-0.16, 0.16):
            cv.poly(
                cv.project(
                    [x + dx * s, x + (dx + 0.1) * s, x + 0.7 * dx * s, x + 0.7 * dx * s - 0.1 * s],
                    [hip, hip, 0.35 * s, 0.35 * s],
                    [z] * 4,
                ),
                cls,
                trousers,
            )
        top = hip + 0.62 * s
    else:
        hip = 0.48 * h
        swing = 0.13 * s * np.sin(phase)
        for sgn in (-1, 1):
            xf = x + sgn * (0.07 * s + swing)
            cv.poly(
                cv.project(
                    [
                        x + sgn * 0.02 * s,
                        x + sgn * 0.16 * s,
                        xf + sgn * 0.06 * s,
                        xf - sgn * 0.04 * s,
                    ],
                    [hip, hip, 0, 0],
                    [z] * 4,
                ),
                cls,
                trousers,
            )
        top = 0.82 * h
    cv.poly(
        cv.project(
            [x - 0.24 * s, x + 0.24 * s, x + 0.19 * s, x - 0.19 * s],
            [top, top, hip - 0.04 * s, hip - 0.04 * s],
            [z] * 4,
        ),
        cls,
        shirt,
    )
    cv.disc(x, top + 0.13 * s, z, 0.11 * s, cls, skin, n=10)


def _draw_person(cv, ob, x, z, t):
    _figure(cv, x, z, ob["h"], PERSON, ob["tone"], ob["tone2"], ob["phase"] + 0.7 * t, seated=False)


def _draw_two_wheeler(cv: Canvas, ob: dict, x: float, z: float, t: float) -> None:
    """Bicycle / motorcycle seen along the street (ridden) or side-on (parked); rider on top."""
    cls = BICYCLE if ob["kind"] == "bicycle" else MOTORCYCLE
    s = ob["scale"]
    axis = (0.0, 1.0) if ob["ridden"] else (1.0, 0.0)
    r, wb = 0.34 * s, 1.1 * s
    ax, az = axis
    rgb = color(cv.domain, cls, ob["tone"])
    p0 = np.array([x - ax * wb / 2, z - az * wb / 2])
    p1 = np.array([x + ax * wb / 2, z + az * wb / 2])
    far_first = (p1, p0) if p1[1] > p0[1] else (p0, p1)
    for px, pz in far_first:
        if cls == MOTORCYCLE:
            cv.disc(px, r, pz, r, cls, (0.08, 0.08, 0.08), axis=axis)
        else:
            a = np.linspace(0, 2 * np.pi, 16)
            ring = cv.project(px + r * np.cos(a) * ax, r + r * np.sin(a), pz + r * np.cos(a) * az)
            cv.line(ring, cls, (0.1, 0.1, 0.1), 0.05, pz)
    # Frame: rear hub - crank - seat - handlebar - front hub.
    fr = lambda k, y: (x + ax * k * wb / 2, y, z + az * k * wb / 2)  # noqa: E731
    pts = [fr(-1, r), fr(0, r), fr(-0.3, 0.9 * s), fr(0.75, 1.0 * s), fr(1, r)]
    uv = cv.project(*[np.array(c) for c in zip(*pts)])
    if cls == MOTORCYCLE:
        body = cv.project(
            *[
                np.array(c)
                for c in zip(
                    fr(-0.7, 0.45 * s), fr(0.7, 0.45 * s), fr(0.6, 0.9 * s), fr(-0.6, 0.85 * s)
                )
            ]
        )
        cv.poly(body, cls, rgb)
    cv.line(uv, cls, rgb, 0.05, z)
    if ob["ridden"]:
        _figure(cv, x, z + 0.05, 1.72 * s, RIDER, ob["tone2"], ob["tone"], 0.0, seated=True)


def _draw_pole(cv: Canvas, ob: dict, x: float, z: float, t: float) -> None:
    """A pole carrying a traffic light (on an arm over the road), a sign or a street lamp."""
    d = cv.domain
    h, side = ob["h"], ob["side"]
    grey = color(d, POLE, ob["tone"])
    cv.box(x - 0.07, x + 0.07, 0, h, z - 0.07, z + 0.07, POLE, grey)
    carries = ob["carries"]
    if carries in ("light", "lamp") and h > 4.5:
        reach = 2.5 if carries == "light" else 1.2
        xe = x - side * reach
        cv.box(min(x, xe), max(x, xe), h - 0.12, h, z - 0.05, z + 0.05, POLE, grey)
        if carries == "lamp":
            cv.box(xe - 0.3, xe + 0.3, h - 0.22, h - 0.05, z - 0.15, z + 0.15, POLE, grey)
            return
        hx, hy = xe, h - 0.12
    elif carries == "light":
        hx, hy = x - side * 0.25, 3.2
    else:
        hx, hy = x, None
    if carries == "light":
        cv.box(hx - 0.18, hx + 0.18, hy - 0.95, hy, z - 0.3, z - 0.1, LIGHT, color(d, LIGHT, 0.0))
        lit = int(ob["tone"] * 3)
        for k, lamp in enumerate([(0.9, 0.1, 0.05), (0.95, 0.7, 0.05), (0.1, 0.85, 0.3)]):
            rgb = lamp if k == lit else tuple(0.25 * c for c in lamp)
            cv.disc(hx, hy - 0.18 - 0.29 * k, z - 0.31, 0.1, LIGHT, rgb, n=8)
    elif carries == "sign" or carries == "lamp":
        rgb = color(d, SIGN, ob["tone"])
        y, r, zs = 2.6, 0.34, z - 0.09
        shape = ob["sign_shape"]
        if shape == 0:
            cv.disc(hx, y, zs, r, SIGN, rgb, n=12)
            cv.disc(hx, y, zs - 0.01, 0.7 * r, SIGN, (0.95, 0.95, 0.95), n=12)
        elif shape == 1:
            cv.poly(
                cv.project(
                    [hx - r, hx + r, hx + r, hx - r], [y - r, y - r, y + r, y + r], [zs] * 4
                ),
                SIGN,
                rgb,
            )
        else:
            cv.poly(
                cv.project([hx - r, hx + r, hx], [y + 0.6 * r, y + 0.6 * r, y - 1.1 * r], [zs] * 3),
                SIGN,
                rgb,
            )


def _draw_tree(cv: Canvas, ob: dict, x: float, z: float, t: float) -> None:
    h, r = ob["h"], ob["r"]
    bark = color(cv.domain, VEGETATION, ob["tone"], 0.55)
    cv.box(x - 0.13, x + 0.13, 0, h - r, z - 0.13, z + 0.13, VEGETATION, bark)
    leaf = np.asarray(color(cv.domain, VEGETATION, ob["tone"]))
    blobs = ob["blobs"] if cv.scale(z) * r > 3 else ob["blobs"][:1]  # far trees: one blob
    for k, (dx, dy, dr) in enumerate(blobs):
        cv.disc(
            x + 0.5 * r * dx,
            h - r + 0.4 * r * dy,
            z - 0.1 * k,
            r * (0.65 + 0.2 * dr),
            VEGETATION,
            leaf * (0.85 + 0.05 * k),
            n=12,
        )


def _draw_barrier(cv: Canvas, ob: dict, x: float, z: float, t: float) -> None:
    """A wall (solid box) or a fence (posts and rails)."""
    cls, h, ln = ob["cls"], ob["h"], ob["len"]
    rgb = np.asarray(color(cv.domain, cls, ob["tone"]))
    if cls == WALL:
        cv.box(x - 0.15, x + 0.15, 0, h, z, z + ln, cls, rgb)
        return
    cv.box(x - 0.03, x + 0.03, 0.15, h - 0.1, z, z + ln, cls, rgb * 0.8)
    for zp in np.arange(z + ln, z - 0.01, -2.0):
        cv.box(x - 0.05, x + 0.05, 0, h, zp - 0.05, zp + 0.05, cls, rgb)
    cv.box(x - 0.05, x + 0.05, h - 0.1, h, z, z + ln, cls, rgb)


_DRAW = {
    "car": _draw_car,
    "truck": _draw_truck,
    "bus": _draw_bus,
    "train": _draw_train,
    "person": _draw_person,
    "bicycle": _draw_two_wheeler,
    "motorcycle": _draw_two_wheeler,
    "pole": _draw_pole,
    "tree": _draw_tree,
    "barrier": _draw_barrier,
}


def _hood(cv: Canvas) -> None:
    """Ego-vehicle bonnet at the bottom of target frames, labelled ignore (as in Cityscapes)."""
    top = cv.h * (1 - cv.world.hood)
    xs = np.linspace(0, cv.w, 9)
    ys = top + (cv.h - top) * 0.8 * ((xs - cv.w / 2) / (cv.w / 2)) ** 2
    uv = np.concatenate([np.stack([xs, ys], 1), [[cv.w, cv.h + 2], [0, cv.h + 2]]])
    cv.poly(uv, IGNORE_INDEX, (0.16, 0.17, 0.2))


# ---------------------------------------------------------------------------------------------
# Looks
# ---------------------------------------------------------------------------------------------


def sample_look(rng: np.random.Generator, domain: str) -> dict:
    """Per-world rendering parameters (fixed over a video so frames stay continuous)."""
    look = {
        "tile": rng.random((64, 64)).astype(np.float32),
        "sky_noise": rng.random((6, 10)).astype(np.float32),
        "crosswalk": float(rng.uniform(8.0, 40.0)) if rng.random() < 0.4 else None,
    }
    if domain == "target":
        look.update(
            gain=rng.normal(1.0, 0.07, size=3).clip(0.8, 1.2),
            exposure=float(rng.uniform(0.75, 1.15)),
            gamma=float(rng.uniform(0.85, 1.2)),
            sun_side=float(rng.choice([-1.0, 1.0])),
            shadow=float(rng.uniform(2.0, 8.0)),
            blur=float(rng.uniform(0.6, 1.1)),
            noise=float(rng.uniform(0.012, 0.03)),
            haze=float(rng.uniform(0.1, 0.35)),
            img_noise=rng.random((40, 80)).astype(np.float32),
        )
    return look


def _tile_sample(tile: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of ``tile`` at continuous coordinates ``(a, b)`` (same shape)."""
    n = tile.shape[0]
    return cv2.remap(
        tile,
        np.mod(a, n).astype(np.float32),
        np.mod(b, n).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )


def _facade_coords(cv: Canvas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World ``(Z, Y)`` of every facade pixel (ray / facade-plane intersection) and the facade mask."""
    vv, uu = np.mgrid[0 : cv.h, 0 : cv.w].astype(np.float64) + 0.5
    mask = (cv.surface == S_FACADE_L) | (cv.surface == S_FACADE_R)
    fx = np.where(cv.surface == S_FACADE_L, -cv.world.facade_x[0], cv.world.facade_x[1])
    du = uu - cv.u0
    du = np.where(np.abs(du) < 1e-3, 1e-3, du)
    dz = np.clip(cv.f * (fx - cv.cx) / du, NEAR, 10 * FAR)
    y = cv.ch - (vv - cv.v0) * dz / cv.f
    return cv.cz + dz, y, mask


def _details(cv: Canvas, look: dict, rgb: np.ndarray) -> np.ndarray:
    """World-anchored details shared by both looks: windows, lane markings, crosswalk."""
    d = cv.domain
    fz, fy, fmask = _facade_coords(cv)
    side = np.where(cv.surface == S_FACADE_L, 0.0, 1.0)
    col, row = np.floor(fz / 3.2), np.floor(fy / 3.3)
    upper = (
        (np.mod(fz / 3.2, 1) > 0.25)
        & (np.mod(fz / 3.2, 1) < 0.72)
        & (np.mod(fy / 3.3, 1) > 0.3)
        & (np.mod(fy / 3.3, 1) < 0.8)
        & (fy > 3.3)
    )
    shop = (fy > 0.4) & (fy < 2.6) & (np.mod(fz / 6.0, 1) > 0.1) & (np.mod(fz / 6.0, 1) < 0.8)
    win = fmask & (upper | shop)
    glass = np.asarray(_GLASS[d], np.float32) / 255.0
    if d == "target":  # each window reflects differently
        rnd = _tile_sample(look["tile"], col * 7.3 + side * 13, row * 5.1)
        rgb[win] = glass * (0.6 + 1.4 * rnd[win, None])
    else:
        rgb[win] = glass
    gx, gz = cv.ground_x, cv.ground_z
    road = cv.label == ROAD
    ax = np.abs(gx)
    rh = cv.world.road_half
    mark = road & (((ax < 0.08) & (np.mod(gz / 6.0, 1) < 0.5)) | (np.abs(ax - (rh - 0.3)) < 0.07))
    if look["crosswalk"] is not None:
        zc = look["crosswalk"]
        mark |= road & (gz > zc) & (gz < zc + 4.0) & (np.mod(gx / 1.0, 1) < 0.5)
    rgb[mark] = (0.95, 0.95, 0.9) if d == "source" else (0.72, 0.72, 0.68)
    curb = (cv.label == SIDEWALK) & (np.abs(ax - rh) < 0.2)
    rgb[curb] *= 0.8
    return rgb


def apply_look(cv: Canvas, look: dict, rng: np.random.Generator) -> np.ndarray:
    """Final ``uint8 (H, W, 3)`` RGB image of a rasterised frame in the canvas's domain.

    ``rng`` supplies only per-frame randomness (sensor noise); everything else
    comes from ``look`` so consecutive video frames share it.
    """
    rgb = _details(cv, look, cv.albedo.copy())
    sky = cv.label == SKY
    vv = (np.arange(cv.h, dtype=np.float32) + 0.5)[:, None] / max(cv.v0, 1.0)
    if cv.domain == "source":
        top, bottom = np.array([0.2, 0.5, 1.0], np.float32), np.array([0.6, 0.82, 1.0], np.float32)
        grad = top + (bottom - top) * np.clip(vv, 0, 1)[..., None]
        rgb[sky] = np.broadcast_to(grad, rgb.shape)[sky]
        # Cel-shaded outlines: darken pixels on a label boundary (crisp, game-like edges).
        lab = cv.label
        edge = np.zeros_like(sky)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        rgb[edge] *= 0.55
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return _real_camera(cv, look, rng, rgb, sky, vv)


def _real_camera(cv: Canvas, look: dict, rng, rgb, sky, vv) -> np.ndarray:
    """Textures, lighting, haze, colour cast, vignetting, blur and sensor noise (target look)."""
    h, w = cv.h, cv.w
    tile = look["tile"]
    # Textures: world-anchored on the ground and facades, image-anchored elsewhere.
    ground = cv.surface == S_GROUND
    tex = np.zeros((h, w), np.float32)
    g_fine = _tile_sample(tile, cv.ground_x * 9.0, cv.ground_z * 9.0)
    g_coarse = _tile_sample(tile, cv.ground_x * 0.7 + 20, cv.ground_z * 0.7)
    tex[ground] = (0.25 * (g_fine - 0.5) + 0.35 * (g_coarse - 0.5))[ground]
    fz, fy, fmask = _facade_coords(cv)
    f_tex = _tile_sample(tile, fz * 1.5, fy * 1.5 + 31)
    tex[fmask] = 0.3 * (f_tex[fmask] - 0.5)
    img_noise = cv2.resize(look["img_noise"], (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(tile, (w, h), interpolation=cv2.INTER_NEAREST)
    veg = cv.label == 8
    tex[veg] = (0.6 * (fine - 0.5) + 0.3 * (img_noise - 0.5))[veg]
    other = (cv.surface == S_IMAGE) & ~veg & ~sky
    tex[other] = 0.12 * (img_noise[other] - 0.5)
    rgb *= 1.0 + tex[..., None]
    # Sun and shadows: one facade side in shade, its buildings shade the ground next to it.
    ss = look["sun_side"]
    shade_facade = cv.surface == (S_FACADE_L if ss > 0 else S_FACADE_R)
    rgb[shade_facade] *= 0.62
    fx = cv.world.facade_x[0 if ss > 0 else 1]
    shadow = ground & (-ss * cv.ground_x > fx - look["shadow"])
    rgb[shadow] *= 0.6
    # Sky: hazy gradient with soft clouds.
    clouds = cv2.resize(look["sky_noise"], (w, h), interpolation=cv2.INTER_CUBIC)
    base = np.asarray(color("target", SKY, 0.0), np.float32)
    sky_rgb = base * (0.88 + 0.14 * np.clip(vv, 0, 1))[..., None] + 0.12 * clouds[..., None]
    rgb[sky] = sky_rgb[sky]
    # Atmospheric haze: pixels near the horizon fade towards the sky colour.
    vpx = np.arange(h, dtype=np.float32)[:, None, None]
    haze = look["haze"] * np.exp(-np.abs(vpx - cv.v0) / (0.12 * h))
    rgb = rgb * (1 - haze) + base * haze
    # Camera: white balance, exposure, gamma, vignetting, lens blur, sensor noise.
    rgb = (
        np.clip(rgb * look["gain"][None, None, :].astype(np.float32) * look["exposure"], 0, 1)
        ** look["gamma"]
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    rgb *= (1 - 0.18 * r2)[..., None]
    sigma = look["blur"] * w / 256.0
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma)
    noise = rng.normal(0, look["noise"], size=(h, w, 3)) + rng.normal(
        0, look["noise"], size=(h, w, 1)
    )
    rgb = rgb + noise.astype(np.float32)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
