"""World sampling for the synthetic street benchmark: a 2.5-D street laid out in metres.

A *world* is a straight street seen by a forward-looking pinhole camera. The
street runs along +Z; X is lateral (right positive), Y is up, the ground is
``Y = 0``. Everything is sampled from a per-domain :class:`Layout` so the two
domains differ not only in looks (see ``render.py``) but in layout statistics:
camera height, horizon row, focal length, road width, object sizes and how
often each class appears.

Objects are plain dicts (``kind``, position, size, velocity, colour seed) so a
world can be re-rendered at any frame ``t``: the camera moves forward
(ego-motion) and objects move with their own velocities, which gives the video
sequences their temporal continuity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Cityscapes train IDs used by the generator (pipa_core.labels.CLASSES order).
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

#: Visible street depth in metres; the far skyline closes the street there.
FAR = 75.0
#: Near clipping distance in metres (geometry closer than this is cut).
NEAR = 0.6
#: Width of the parking strip along each curb (m).
PARKING = 2.3


@dataclass(frozen=True)
class Layout:
    """Layout statistics of one domain; every ``(lo, hi)`` pair is a uniform range."""

    cam_height: tuple[float, float]  # metres above the ground
    horizon: tuple[float, float]  # horizon row as a fraction of the image height
    focal: tuple[float, float]  # focal length as a fraction of the image width
    road_half: tuple[float, float]  # half road width (m)
    sidewalk: tuple[float, float]  # sidewalk width (m)
    setback: tuple[float, float]  # extra strip between sidewalk and facades (m)
    terrain_p: float  # probability that the setback strip is grass (else paved)
    building_h: tuple[float, float]  # facade heights (m)
    gap_p: float  # probability that a facade slot is a gap (trees / sky)
    parked_per_100m: tuple[float, float]  # parked cars per 100 m per side
    moving_per_100m: tuple[float, float]  # moving cars per 100 m per lane
    persons_per_100m: tuple[float, float]
    cyclists_per_100m: tuple[float, float]
    trees_per_100m: tuple[float, float]
    pole_spacing: tuple[float, float]  # metres between poles on a side
    fence_p: float  # probability of a fence segment per slot
    wall_p: float  # probability of a wall segment per slot
    rare_p: dict[str, float]  # per-scene probability of truck / bus / train / motorcycle
    size_scale: tuple[float, float]  # multiplies object sizes (people, vehicles)
    speed: tuple[float, float]  # ego speed in metres per frame (videos)
    hood: tuple[float, float]  # ego-vehicle hood height as image fraction (0 = none)


LAYOUTS: dict[str, Layout] = {
    # The "game": high camera, horizon well above the centre, wide angle, wide
    # roads and tall facades, many cars, few pedestrians and cyclists.
    "source": Layout(
        cam_height=(2.0, 2.6),
        horizon=(0.34, 0.42),
        focal=(0.48, 0.56),
        road_half=(5.0, 7.0),
        sidewalk=(2.5, 4.0),
        setback=(0.0, 2.0),
        terrain_p=0.25,
        building_h=(12.0, 32.0),
        gap_p=0.12,
        parked_per_100m=(8.0, 14.0),
        moving_per_100m=(3.0, 7.0),
        persons_per_100m=(3.0, 8.0),
        cyclists_per_100m=(0.5, 2.0),
        trees_per_100m=(2.0, 6.0),
        pole_spacing=(14.0, 22.0),
        fence_p=0.15,
        wall_p=0.25,
        rare_p={"truck": 0.2, "bus": 0.12, "train": 0.05, "motorcycle": 0.3},
        size_scale=(0.95, 1.05),
        speed=(0.5, 0.7),
        hood=(0.0, 0.0),
    ),
    # The "real" city: low dash-cam, horizon near the centre, narrower field of
    # view (objects look bigger), narrow roads, lower buildings, more greenery,
    # pedestrians and bicycles, an ego-vehicle hood at the bottom (ignore).
    "target": Layout(
        cam_height=(1.2, 1.5),
        horizon=(0.45, 0.52),
        focal=(0.62, 0.72),
        road_half=(4.0, 5.5),
        sidewalk=(2.0, 3.5),
        setback=(0.5, 3.5),
        terrain_p=0.5,
        building_h=(8.0, 20.0),
        gap_p=0.25,
        parked_per_100m=(5.0, 10.0),
        moving_per_100m=(2.0, 5.0),
        persons_per_100m=(8.0, 16.0),
        cyclists_per_100m=(2.0, 5.0),
        trees_per_100m=(5.0, 10.0),
        pole_spacing=(10.0, 16.0),
        fence_p=0.25,
        wall_p=0.15,
        rare_p={"truck": 0.12, "bus": 0.1, "train": 0.08, "motorcycle": 0.25},
        size_scale=(1.0, 1.12),
        speed=(0.4, 0.6),
        hood=(0.06, 0.10),
    ),
}


@dataclass
class World:
    """A sampled street; all lengths in metres. See the module docstring for axes."""

    domain: str
    cam_height: float
    horizon: float  # fraction of H
    focal: float  # fraction of W
    cam_x: float  # lateral camera position
    speed: float  # ego forward motion per frame
    sway: tuple[float, float]  # lateral sway amplitude (m) and phase
    road_half: float
    sidewalk: float
    setback: float
    terrain: bool  # setback strip is grass (terrain) rather than pavement
    facade_x: tuple[float, float]  # |X| of the left and right facade planes
    facades: list[dict] = field(default_factory=list)  # {side, z0, z1, h, cls, tone}
    skyline: list[dict] = field(default_factory=list)  # {x0, x1, h, tone}
    objects: list[dict] = field(default_factory=list)
    hood: float = 0.0  # hood height as a fraction of H (target only)
    look: dict = field(default_factory=dict)  # rendering parameters (render.py)

    def camera(self, t: float) -> tuple[float, float]:
        """Camera ``(x, z)`` at frame ``t`` (ego-motion plus a gentle lateral sway)."""
        amp, phase = self.sway
        return self.cam_x + amp * np.sin(0.35 * t + phase), self.speed * t


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _count(rng: np.random.Generator, per_100m: tuple[float, float], length: float) -> int:
    return int(rng.poisson(_u(rng, per_100m) * length / 100.0))


def sample_world(rng: np.random.Generator, domain: str, n_frames: int = 1) -> World:
    """Sample a street of ``domain`` ("source" or "target") long enough for ``n_frames`` of ego-motion."""
    lay = LAYOUTS[domain]
    road_half = _u(rng, lay.road_half)
    w = World(
        domain=domain,
        cam_height=_u(rng, lay.cam_height),
        horizon=_u(rng, lay.horizon),
        focal=_u(rng, lay.focal),
        cam_x=0.0,
        speed=_u(rng, lay.speed),
        sway=(float(rng.uniform(0.0, 0.15)), float(rng.uniform(0, 2 * np.pi))),
        road_half=road_half,
        sidewalk=_u(rng, lay.sidewalk),
        setback=_u(rng, lay.setback),
        terrain=bool(rng.random() < lay.terrain_p),
        facade_x=(0.0, 0.0),
        hood=_u(rng, lay.hood),
    )
    lc = lane_center(w)  # drive in the middle of the right lane
    w.cam_x = lc + float(rng.uniform(-0.25, 0.25)) * lc
    curb = road_half + w.sidewalk
    w.facade_x = (curb + w.setback + rng.uniform(0, 1), curb + w.setback + rng.uniform(0, 1))
    z_end = FAR + w.speed * n_frames + 10.0
    _sample_facades(rng, w, lay, z_end)
    _sample_skyline(rng, w, lay)
    scale = _u(rng, lay.size_scale)
    _sample_street_furniture(rng, w, lay, z_end)
    _sample_vehicles(rng, w, lay, z_end, scale)
    _sample_people(rng, w, lay, z_end, scale)
    return w


def _sample_facades(rng, w: World, lay: Layout, z_end: float) -> None:
    """Building slots along both sides; gaps become tree lines or open sky."""
    for side in (-1, 1):
        z = -5.0
        while z < z_end:
            length = float(rng.uniform(7.0, 20.0))
            if rng.random() < lay.gap_p:
                cls = VEGETATION if rng.random() < 0.6 else None
                h = float(rng.uniform(4.0, 9.0))
            else:
                cls, h = BUILDING, _u(rng, lay.building_h)
            if cls is not None:
                w.facades.append(
                    {
                        "side": side,
                        "z0": z,
                        "z1": z + length,
                        "h": h,
                        "cls": cls,
                        "tone": rng.random(),
                    }
                )
            z += length
            # Walls and fences stand on the outer edge of the sidewalk in some slots.
            r = rng.random()
            if r < lay.wall_p + lay.fence_p:
                kind = WALL if r < lay.wall_p else FENCE
                seg = float(rng.uniform(4.0, 12.0))
                z0 = z - length + float(rng.uniform(0, max(length - seg, 0.1)))
                w.objects.append(
                    {
                        "kind": "barrier",
                        "cls": kind,
                        "x": side * (w.road_half + w.sidewalk + 0.1),
                        "z": z0,
                        "len": seg,
                        "h": float(
                            rng.uniform(1.4, 2.4) if kind == WALL else rng.uniform(1.0, 1.6)
                        ),
                        "vx": 0.0,
                        "vz": 0.0,
                        "tone": rng.random(),
                    }
                )


def _sample_skyline(rng, w: World, lay: Layout) -> None:
    """Distant blocks closing the street at ``FAR`` (building or vegetation)."""
    x = -60.0
    while x < 60.0:
        width = float(rng.uniform(6.0, 20.0))
        cls = BUILDING if rng.random() < 0.75 else VEGETATION
        h = _u(rng, lay.building_h) * (1.0 if cls == BUILDING else 0.4)
        w.skyline.append({"x0": x, "x1": x + width, "h": h, "cls": cls, "tone": rng.random()})
        x += width


def _sample_street_furniture(rng, w: World, lay: Layout, z_end: float) -> None:
    """Poles carrying traffic lights / signs / lamps, stand-alone signs and trees."""
    for side in (-1, 1):
        x = side * (w.road_half + 0.4)
        z = float(rng.uniform(0.0, 8.0))
        while z < z_end:
            r = rng.random()
            carries = "light" if r < 0.3 else "sign" if r < 0.7 else "lamp"
            w.objects.append(
                {
                    "kind": "pole",
                    "x": x,
                    "z": z,
                    "h": float(rng.uniform(3.5, 7.0)),
                    "carries": carries,
                    "sign_shape": int(rng.integers(0, 3)),
                    "side": side,
                    "vx": 0.0,
                    "vz": 0.0,
                    "tone": rng.random(),
                }
            )
            z += _u(rng, lay.pole_spacing)
        for _ in range(_count(rng, lay.trees_per_100m, z_end)):
            edge = w.road_half + w.sidewalk
            x_t = side * float(rng.uniform(edge - 1.0, edge + w.setback + 0.3))
            w.objects.append(
                {
                    "kind": "tree",
                    "x": x_t,
                    "z": float(rng.uniform(0, z_end)),
                    "h": float(rng.uniform(4.0, 9.0)),
                    "r": float(rng.uniform(1.2, 2.8)),
                    "vx": 0.0,
                    "vz": 0.0,
                    "tone": rng.random(),
                    "blobs": rng.uniform(-1, 1, size=(5, 3)).tolist(),
                }
            )


def _vehicle(rng, kind: str, x: float, z: float, vz: float, scale: float) -> dict:
    dims = {  # width, height, length (m)
        "car": (1.8, 1.5, 4.4),
        "truck": (2.5, 3.6, 8.0),
        "bus": (2.6, 3.3, 12.0),
        "train": (2.6, 3.5, 28.0),
    }[kind]
    jit = rng.uniform(0.92, 1.08, size=3) * scale
    return {
        "kind": kind,
        "x": x,
        "z": z,
        "w": dims[0] * jit[0],
        "h": dims[1] * jit[1],
        "len": dims[2] * jit[2],
        "vx": 0.0,
        "vz": vz,
        "tone": rng.random(),
    }


def lane_center(w: World) -> float:
    """Lateral centre of the right driving lane; a 2.3 m parking strip lines each curb."""
    return max(w.road_half - PARKING, 1.0) / 2.0


def _sample_vehicles(rng, w: World, lay: Layout, z_end: float, scale: float) -> None:
    """Parked cars along both curbs, traffic in both lanes, rare big vehicles and motorcycles.

    Same-direction traffic keeps at least the ego speed so the ego camera never
    drives into it in a video; oncoming traffic stays left of the camera.
    """
    lc = lane_center(w)
    for side in (-1, 1):
        z = float(rng.uniform(-4.0, 6.0))
        n = _count(rng, lay.parked_per_100m, z_end)
        for _ in range(n):
            z += float(rng.uniform(5.0, 5.0 + 2 * z_end / max(n, 1)))
            if z > z_end:
                break
            car = _vehicle(rng, "car", 0.0, z, 0.0, scale)
            car["x"] = side * (w.road_half - 0.2) - (car["w"] if side > 0 else 0.0)
            w.objects.append(car)
    kinds = ["car"] * (_count(rng, lay.moving_per_100m, z_end) * 2)
    kinds += [k for k in ("truck", "bus", "train") if rng.random() < lay.rare_p[k]]
    for kind in kinds:
        v = _vehicle(
            rng, kind, 0.0, float(rng.uniform(8.0, z_end if kind == "car" else 45.0)), 0.0, scale
        )
        if rng.random() < 0.5:  # ahead of us in our lane, at least as fast as we drive
            v["x"], v["vz"] = lc - v["w"] / 2, w.speed * float(rng.uniform(1.0, 1.4))
        else:  # oncoming lane
            v["x"] = min(-lc - v["w"] / 2, w.cam_x - 0.8 - v["w"])
            v["vz"] = -float(rng.uniform(0.2, 0.8))
        w.objects.append(v)
    if rng.random() < lay.rare_p["motorcycle"]:
        for _ in range(int(rng.integers(1, 3))):
            m = _two_wheeler(rng, "motorcycle", 0.0, float(rng.uniform(6, 40)), scale)
            if rng.random() < 0.5:
                m["x"], m["vz"] = (
                    lc + float(rng.uniform(-0.3, 0.3)),
                    w.speed * float(rng.uniform(1.0, 1.4)),
                )
            else:
                m["x"], m["vz"] = -lc, -float(rng.uniform(0.3, 0.7))
            w.objects.append(m)


def _two_wheeler(rng, kind: str, x: float, z: float, scale: float, ridden: bool = True) -> dict:
    return {
        "kind": kind,
        "x": x,
        "z": z,
        "ridden": ridden,
        "scale": scale * float(rng.uniform(0.95, 1.05)),
        "vx": 0.0,
        "vz": float(rng.uniform(0.2, 0.5)) if ridden else 0.0,
        "tone": rng.random(),
        "tone2": rng.random(),
    }


def _sample_people(rng, w: World, lay: Layout, z_end: float, scale: float) -> None:
    """Pedestrians on sidewalks (a few crossing), cyclists near the curb, parked bicycles."""
    for _ in range(_count(rng, lay.persons_per_100m, z_end) * 2):
        side = 1 if rng.random() < 0.5 else -1
        crossing = rng.random() < 0.1
        if crossing:
            x = float(rng.uniform(-w.road_half, w.road_half))
        else:
            x = side * float(rng.uniform(w.road_half + 0.6, w.road_half + w.sidewalk - 0.3))
        w.objects.append(
            {
                "kind": "person",
                "x": x,
                "z": float(rng.uniform(2.0, z_end)),
                "h": 1.72 * scale * float(rng.uniform(0.88, 1.1)),
                "vx": float(rng.uniform(-0.06, 0.06)) if not crossing else 0.08 * -np.sign(x),
                "vz": float(rng.uniform(-0.06, 0.06)),
                "tone": rng.random(),
                "tone2": rng.random(),
                "phase": float(rng.uniform(0, 2 * np.pi)),
            }
        )
    for _ in range(_count(rng, lay.cyclists_per_100m, z_end) * 2):
        # Cyclists use the bike lane on the sidewalk edge, riding with the traffic of their side.
        side = 1 if rng.random() < 0.65 else -1
        x = side * (w.road_half + float(rng.uniform(0.4, 0.9)))
        bike = _two_wheeler(rng, "bicycle", x, float(rng.uniform(4.0, z_end)), scale)
        bike["vz"] *= side
        w.objects.append(bike)
    # Parked bicycles on the sidewalk: bicycles without riders.
    for _ in range(int(rng.poisson(1.0 if w.domain == "target" else 0.4))):
        side = 1 if rng.random() < 0.5 else -1
        x = side * (w.road_half + w.sidewalk - 0.6)
        w.objects.append(
            _two_wheeler(rng, "bicycle", x, float(rng.uniform(3.0, 30.0)), scale, ridden=False)
        )
