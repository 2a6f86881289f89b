"""Synthetic concrete/asphalt surfaces with cracks and hard negatives (numpy/scipy/PIL only).

Every image is drawn from its own ``numpy.random.Generator`` seeded with ``(seed, index)``, so
the same seed gives byte-identical files and changing ``count`` never changes earlier images.

An image is built in layers:

1. surface: tone and colour temperature, multi-scale mottling, aggregate speckle, pores, chips,
   fine grain and a lighting gradient (asphalt-like or concrete-like);
2. hard negatives, never in the mask: saw-cut joints, painted lines, oil/water stains, cast
   shadows, scratches, leaves, tar sealant lines;
3. cracks, the only thing in the mask: branching random walks with tortuosity, a width that
   varies along the crack (1-6 px), dark soft-edged interiors and slight shadowed rims;
4. camera: defocus blur, sensor noise and JPEG compression at a random quality.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from fissure.errors import DataError
from fissure.progress import iterate

TASKS = ("classify", "segment")
NEGATIVE_KINDS = ("joint", "paint", "stain", "shadow", "scratches", "leaves", "tar")
_RELIEF_P = 0.45  # share of surfaces with raking-light relief
_SS = 2  # supersampling factor for line drawing (anti-aliased, sub-pixel widths)


@dataclass
class Sample:
    """One synthetic image: RGB uint8 [H, W, 3], boolean crack mask [H, W], JPEG quality."""

    image: np.ndarray
    mask: np.ndarray
    quality: int
    cracks: int = 0
    negatives: list[str] = field(default_factory=list)

    def jpeg_bytes(self) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.image, "RGB").save(buf, format="JPEG", quality=self.quality)
        return buf.getvalue()

    def mask_png_bytes(self) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.mask.astype(np.uint8) * 255, "L").save(buf, format="PNG", optimize=False)
        return buf.getvalue()


def image_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for one image; independent of how many images are drawn."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


# --------------------------------------------------------------------------- noise helpers


def _resize_f(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr.astype(np.float32), "F").resize((w, h), Image.BICUBIC))


def _fbm(rng: np.random.Generator, h: int, w: int, cells: int, octaves: int, gain: float) -> np.ndarray:
    """Fractal value noise: octaves of upsampled Gaussian grids, normalised to unit std."""
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for _ in range(octaves):
        gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
        out += amp * _resize_f(rng.standard_normal((gh, gw)), h, w)
        amp *= gain
        cells *= 2
        if cells > max(h, w) // 2:
            break
    return (out - out.mean()) / (out.std() + 1e-6)


def _blurred_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, unit std; wide kernels run on a coarser grid."""
    f = max(1, int(sigma // 1.5))
    gh, gw = -(-h // f), -(-w // f)
    out = ndimage.gaussian_filter(rng.standard_normal((gh, gw), dtype=np.float32), sigma / f,
                                  mode="wrap", truncate=3.0)
    if f > 1:
        out = _resize_f(out, h, w)
    return out / (out.std() + 1e-6)


def _canvas(h: int, w: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (w * _SS, h * _SS), 0)
    return img, ImageDraw.Draw(img)


def _coverage(img: Image.Image, h: int, w: int) -> np.ndarray:
    return np.asarray(img.resize((w, h), Image.BOX), dtype=np.float32) / 255.0


# --------------------------------------------------------------------------- surface


def _surface(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Return luminance [H, W] (0..255 float) and an RGB tint [3]."""
    asphalt = rng.random() < 0.5
    if asphalt:
        tone = rng.uniform(75, 150)
        fine_amp, agg_sigma, agg_amp = rng.uniform(6, 14), rng.uniform(1.0, 1.8), rng.uniform(4, 12)
        mottle = rng.uniform(2, 7)
        pore_density, pore_depth = rng.uniform(0.03, 0.08), rng.uniform(20, 50)
    else:
        tone = rng.uniform(115, 195)
        fine_amp, agg_sigma, agg_amp = rng.uniform(3, 8), rng.uniform(1.0, 2.0), rng.uniform(2, 7)
        mottle = rng.uniform(2, 7)
        pore_density, pore_depth = rng.uniform(0.004, 0.025), rng.uniform(25, 60)

    lum = np.full((h, w), tone, np.float32)
    lum += mottle * _fbm(rng, h, w, cells=int(rng.integers(2, 5)), octaves=5, gain=0.6)
    # speckle at sand scale and aggregate at stone scale
    lum += fine_amp * _blurred_noise(rng, h, w, rng.uniform(0.45, 0.7))
    lum += agg_amp * _blurred_noise(rng, h, w, agg_sigma)
    # sparse larger stones with flat tops and crisp edges (exposed aggregate, worn asphalt)
    if rng.random() < 0.6:
        big = _blurred_noise(rng, h, w, rng.uniform(1.8, 3.0))
        stones = np.clip((big - rng.uniform(1.0, 1.6)) * 3.0, 0, 1)
        lum += rng.choice([-1, 1], p=[0.3, 0.7]) * rng.uniform(6, 20) * stones
    # pores: small dark holes where a second noise field is very low
    pores = _blurred_noise(rng, h, w, rng.uniform(0.6, 1.1))
    thr = np.quantile(pores, pore_density)
    lum -= pore_depth * np.clip((thr - pores) / (abs(thr) * 0.5 + 1e-3), 0, 1)
    # relief: raking light on a rough height field (broom finish, exposed aggregate, worn seal)
    if rng.random() < _RELIEF_P:
        height = np.tanh(1.5 * _blurred_noise(rng, h, w, rng.uniform(1.0, 2.5)))
        gy, gx = np.gradient(height)
        a = rng.uniform(0, 2 * np.pi)
        shade = np.cos(a) * gx + np.sin(a) * gy
        lum += rng.uniform(4, 15) * shade / (shade.std() + 1e-6)
    # pitting: sparse larger holes (air voids, lost stones), dark inside, the classic false crack
    if rng.random() < 0.5:
        canvas, draw = _canvas(h, w)
        n = rng.poisson(rng.uniform(2, 25) * h * w / 65536)
        for cx, cy, rx, ry in zip(rng.uniform(0, w, n), rng.uniform(0, h, n), rng.uniform(0.8, 4, n),
                                  rng.uniform(0.8, 4, n)):
            draw.ellipse([(cx - rx) * _SS, (cy - ry) * _SS, (cx + rx) * _SS, (cy + ry) * _SS], fill=255)
        holes = ndimage.gaussian_filter(_coverage(canvas, h, w), 0.5)
        lum *= 1 - rng.uniform(0.3, 0.65) * holes
    # bright chips
    chips = _blurred_noise(rng, h, w, 0.8)
    thr = np.quantile(chips, 1 - rng.uniform(0.005, 0.03))
    lum += rng.uniform(10, 35) * np.clip((chips - thr) / (abs(thr) * 0.3 + 1e-3), 0, 1)
    # grit: sparse, crisp light and dark grains of one or two pixels
    grit = rng.random((h, w), dtype=np.float32)
    density = rng.uniform(0.01, 0.06) if asphalt else rng.uniform(0.003, 0.03)
    dots = (grit < density / 2).astype(np.float32) * rng.uniform(15, 45) - \
        (grit > 1 - density / 2).astype(np.float32) * rng.uniform(15, 45)
    lum += ndimage.gaussian_filter(dots, 0.5, truncate=2.0)
    # fine grain
    lum += rng.uniform(2, 6) * rng.standard_normal((h, w), dtype=np.float32)
    # lighting: a linear gradient and a soft vignette/hotspot
    yy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.35) * (np.cos(a) * xx + np.sin(a) * yy)
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    light *= 1 - rng.uniform(-0.12, 0.2) * ((yy - cy) ** 2 + (xx - cx) ** 2)
    lum *= light

    # colour temperature (warm/cool) plus a small random cast; mostly grey
    temp = rng.normal(0, 0.025) if rng.random() < 0.8 else rng.uniform(0.03, 0.07)  # some sandy/beige
    tint = np.array([1 + temp, 1 + 0.3 * max(temp, 0), 1 - temp], np.float32) + rng.normal(0, 0.012, 3).astype(np.float32)
    return lum, tint


# --------------------------------------------------------------------------- cracks


def _walk(rng: np.random.Generator, start: np.ndarray, angle: float, length: float,
          tortuosity: float) -> np.ndarray:
    """A jagged random walk: mean-reverting heading drift plus per-step zigzag."""
    step = rng.uniform(2.0, 4.5)
    n = max(2, int(length / step))
    drift = np.zeros(n, np.float32)
    kicks = rng.normal(0, 0.12 * tortuosity + 0.03, n)
    for i in range(1, n):  # AR(1): long, lazy bends
        drift[i] = 0.93 * drift[i - 1] + kicks[i]
    zig = rng.normal(0, 0.7 * tortuosity, n)
    # rare sharp turns, as in real crack paths that follow aggregate edges
    turns = np.cumsum(np.where(rng.random(n) < 0.02, rng.normal(0, 0.6, n), 0.0))
    heading = angle + drift + zig + 0.5 * turns
    steps = step * np.stack([np.cos(heading), np.sin(heading)], 1)
    return np.vstack([start[None], start[None] + np.cumsum(steps, 0)]).astype(np.float32)


MAX_WIDTH = 12.0  # px; typical cracks stay within 1-6 px, rare wide open cracks reach this


def _width_profile(rng: np.random.Generator, n: int, base: float) -> np.ndarray:
    """Width along a path: smooth log-normal variation, tapering to hairline at the tip."""
    knots = rng.normal(0, 0.35, max(2, n // 12 + 2))
    var = np.interp(np.linspace(0, len(knots) - 1, n), np.arange(len(knots)), knots)
    taper = np.clip(np.linspace(1.0, 0.0, n) * rng.uniform(1.5, 4.0), 0.25, 1.0)
    return np.clip(base * np.exp(var) * taper, 0.8, 6.0 if base <= 5.0 else MAX_WIDTH)


def _draw_path(draw: ImageDraw.ImageDraw, pts: np.ndarray, widths: np.ndarray) -> None:
    """Draw a polyline whose width changes along it, with round joints."""
    pts = pts * _SS
    w_px = np.maximum(1, np.round(widths * _SS)).astype(int)
    i = 0
    n = len(pts)
    while i < n - 1:
        j = i + 1
        while j < n - 1 and w_px[j] == w_px[i]:
            j += 1
        seg = [tuple(p) for p in pts[i:j + 1].tolist()]
        draw.line(seg, fill=255, width=int(w_px[i]), joint="curve")
        i = j


def _crack_paths(rng: np.random.Generator, h: int, w: int, wide: float = 0.1) -> list[tuple[np.ndarray, np.ndarray]]:
    """One crack: a trunk grown both ways from an interior point, plus branches."""
    size = max(h, w)
    start = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h], np.float32)
    angle = rng.uniform(0, np.pi)
    tort = rng.uniform(0.4, 1.3)
    if rng.random() < wide:  # a wide, open crack with broken edges
        base = rng.uniform(5.5, 9.0)
    else:  # mostly thin: hairline to a few pixels
        base = float(np.clip(rng.lognormal(np.log(2.4), 0.45), 1.0, 5.5))
    paths = []
    for direction in (0.0, np.pi):
        length = rng.uniform(0.25, 1.0) * size
        pts = _walk(rng, start, angle + direction, length, tort)
        widths = _width_profile(rng, len(pts), base)
        paths.append((pts, widths))
    # branches, some of them with their own hairline sub-branches
    queue = [(p, wd, 0) for p, wd in paths]
    out = []
    while queue:
        pts, widths, depth = queue.pop(0)
        out.append((pts, widths))
        if depth >= 2:
            continue
        for _ in range(rng.poisson(0.45 if depth == 0 else 0.25)):
            k = int(rng.integers(len(pts) // 5, max(len(pts) // 5 + 1, len(pts) - 2)))
            seg = pts[min(k + 1, len(pts) - 1)] - pts[max(k - 1, 0)]
            heading = float(np.arctan2(seg[1], seg[0]))
            heading += rng.choice([-1, 1]) * rng.uniform(0.4, 1.2)
            blen = rng.uniform(0.05, 0.3) * size * (0.6 ** depth)
            bpts = _walk(rng, pts[k], heading, blen, rng.uniform(0.4, 1.3))
            bw = _width_profile(rng, len(bpts), float(widths[k]) * rng.uniform(0.35, 0.7))
            queue.append((bpts, bw, depth + 1))
    return out


def _render_cracks(rng: np.random.Generator, lum: np.ndarray, n_cracks: int,
                   wide: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    h, w = lum.shape
    canvas, draw = _canvas(h, w)
    widest = 0.0
    for _ in range(n_cracks):
        for pts, widths in _crack_paths(rng, h, w, wide):
            _draw_path(draw, pts, widths)
            widest = max(widest, float(widths.max()))
    cov = _coverage(canvas, h, w)
    if not cov.any():
        return lum, np.zeros((h, w), bool)
    # chipped, irregular lips: perturb the coverage near its edges only
    edge = 4 * cov * (1 - cov)
    if widest > 6.0:  # broken, rocky lips on wide cracks
        edge = np.maximum(edge, ndimage.gaussian_filter(cov, 1.5) * (1 - cov) * 2)
    cov = np.clip(cov + 0.3 * edge * _blurred_noise(rng, h, w, 0.8), 0, 1)
    soft = np.maximum(cov ** 0.7, ndimage.gaussian_filter(cov, 0.6))
    # shadowed rim: light falls across the crack, darkening one lip more than the other
    rim = ndimage.gaussian_filter(cov, rng.uniform(1.2, 2.5))
    dy, dx = rng.integers(-1, 2, 2)
    rim = np.roll(rim, (int(dy), int(dx)), (0, 1))
    # mostly dark, sometimes faint (shallow or dusty cracks, as in road-survey images)
    # (wide cracks are open and deep, so always dark)
    faint = rng.random() < 0.35 and widest <= 4.0
    depth = rng.uniform(0.3, 0.5) if faint else rng.uniform(0.55, 0.9) if widest <= 6.0 else rng.uniform(0.7, 0.92)
    depth = depth + 0.1 * _blurred_noise(rng, h, w, 6)
    interior = np.clip(depth, 0.25, 0.92)
    # keep some texture inside: darker floor with a bit of grain, and soft edges
    floor = 0.12 * lum.mean() * (1 + 0.3 * rng.standard_normal((h, w), dtype=np.float32))
    dark = lum * (1 - interior * soft) + floor * soft * 0.3
    dark *= 1 - rng.uniform(0.06, 0.18) * np.clip(rim - cov, 0, 1)
    mask = cov >= 0.45
    return dark, mask


# --------------------------------------------------------------------------- hard negatives


def _line_across(rng: np.random.Generator, h: int, w: int, straight: bool = True) -> np.ndarray:
    """Endpoints (or a gently curved polyline) crossing the image."""
    a = rng.uniform(0, np.pi)
    if rng.random() < 0.6:  # mostly near axis-aligned, as joints and markings are
        a = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.08)
    c = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
    d = np.array([np.cos(a), np.sin(a)])
    t = np.linspace(-1.5, 1.5, 40 if not straight else 2)[:, None] * max(h, w)
    pts = c + t * d
    if not straight:  # smooth bends only: no zigzag
        normal = np.array([-d[1], d[0]])
        bend = np.cumsum(rng.normal(0, 1.0, len(t)))
        bend = ndimage.gaussian_filter1d(bend - bend.mean(), 3) * rng.uniform(0.5, 2.0)
        pts = pts + bend[:, None] * normal
    return pts


def _neg_joint(rng, lum):
    """Saw-cut / expansion joint: straight, constant width, crisp parallel edges."""
    h, w = lum.shape
    canvas, draw = _canvas(h, w)
    width = rng.uniform(3, 10)
    pts = _line_across(rng, h, w)
    draw.line([tuple(p) for p in (pts * _SS).tolist()], fill=255, width=max(1, round(width * _SS)))
    cov = _coverage(canvas, h, w)
    lip = np.clip(ndimage.gaussian_filter(cov, rng.uniform(1.0, 2.5)) - cov, 0, 1)
    dark = rng.uniform(0.35, 0.8)
    core = ndimage.gaussian_filter(cov, width / 4)  # darker toward the centre of the cut
    lum = lum * (1 - dark * cov * (0.7 + 0.3 * core)) + rng.uniform(-0.15, 0.35) * lip * lum
    return lum


def _neg_paint(rng, lum, rgb_over):
    h, w = lum.shape
    canvas, draw = _canvas(h, w)
    width = rng.uniform(8, 0.25 * max(h, w))
    pts = _line_across(rng, h, w)
    draw.line([tuple(p) for p in (pts * _SS).tolist()], fill=255, width=max(1, round(width * _SS)))
    cov = _coverage(canvas, h, w)
    wear = np.clip(0.5 + 0.6 * _fbm(rng, h, w, 8, 4, 0.6), 0, 1) * rng.uniform(0.55, 0.95)
    color = [np.array([235, 235, 228]), np.array([230, 195, 70]), np.array([220, 220, 220])][int(rng.integers(0, 3))]
    rgb_over.append((cov * wear, color.astype(np.float32)))
    return lum


def _neg_stain(rng, lum):
    h, w = lum.shape
    field_ = _fbm(rng, h, w, int(rng.integers(2, 5)), 4, 0.5)
    thr = rng.uniform(0.2, 1.1)
    blob = np.clip((field_ - thr) * rng.uniform(1.0, 3.0), 0, 1)
    blob = ndimage.gaussian_filter(blob, rng.uniform(1, 4))
    sign = -1 if rng.random() < 0.85 else 1  # mostly dark (oil, water), sometimes light (dried salt)
    return lum * (1 + sign * rng.uniform(0.15, 0.45) * blob)


def _neg_shadow(rng, lum):
    h, w = lum.shape
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    a = rng.uniform(0, 2 * np.pi)
    off = rng.uniform(-0.3, 0.3) * max(h, w)
    edge = (xx - w / 2) * np.cos(a) + (yy - h / 2) * np.sin(a) - off
    edge = edge + rng.uniform(2, 15) * _fbm(rng, h, w, 4, 3, 0.5)  # ragged like foliage/objects
    soft = rng.uniform(2, 12)
    region = 1 / (1 + np.exp(-edge / soft))
    return lum * (1 - rng.uniform(0.2, 0.5) * region)


def _neg_scratches(rng, lum):
    h, w = lum.shape
    canvas, draw = _canvas(h, w)
    base = rng.uniform(0, np.pi)
    for _ in range(int(rng.integers(3, 15))):
        c = rng.uniform(0, 1, 2) * [w, h]
        a = base + rng.normal(0, 0.2)
        L = rng.uniform(0.1, 0.5) * max(h, w)
        p0, p1 = c - L / 2 * np.array([np.cos(a), np.sin(a)]), c + L / 2 * np.array([np.cos(a), np.sin(a)])
        draw.line([tuple(p0 * _SS), tuple(p1 * _SS)], fill=int(rng.integers(120, 255)),
                  width=int(rng.integers(1, 3)))
    cov = _coverage(canvas, h, w)
    sign = 1 if rng.random() < 0.7 else -1  # scratches are usually lighter than the surface
    return lum * (1 + sign * rng.uniform(0.15, 0.4) * cov)


def _neg_leaves(rng, lum, rgb_over):
    h, w = lum.shape
    canvas, draw = _canvas(h, w)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, 1, 2) * [w, h]
        length = rng.uniform(0.08, 0.25) * max(h, w)
        width = length * rng.uniform(0.3, 0.55)
        a = rng.uniform(0, 2 * np.pi)
        t = np.linspace(0, 2 * np.pi, 32)
        # pointed at both ends, slightly asymmetric, with a wobbly outline
        x = length / 2 * np.cos(t)
        y = width / 2 * np.sin(t) * np.abs(np.sin(t)) ** 0.3 * (1 - 0.25 * np.cos(t))
        y *= 1 + 0.08 * rng.standard_normal(len(t))
        pts = np.stack([cx + x * np.cos(a) - y * np.sin(a), cy + x * np.sin(a) + y * np.cos(a)], 1)
        draw.polygon([tuple(p) for p in (pts * _SS).tolist()], fill=255)
    cov = ndimage.gaussian_filter(_coverage(canvas, h, w), 0.6)
    palette = [[120, 80, 40], [150, 120, 50], [90, 100, 45], [70, 50, 35], [170, 140, 90]]
    color = np.array(palette[int(rng.integers(0, len(palette)))], np.float32) * rng.uniform(0.75, 1.1)
    tex = 1 + 0.12 * _blurred_noise(rng, h, w, 1.5)  # blotchy, dried leaf
    rgb_over.append((cov * rng.uniform(0.8, 0.97), color * tex[..., None]))
    return lum


def _neg_tar(rng, lum, cover: list | None = None):
    """Crack sealant: a smooth, meandering, glossy black band (a repaired crack, not a crack)."""
    h, w = lum.shape
    canvas, draw = _canvas(h, w)
    size = max(h, w)
    start = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h], np.float32)
    angle = rng.uniform(0, np.pi)
    width = rng.uniform(6, 18) if rng.random() < 0.8 else rng.uniform(18, 35)  # overbanding
    halves = [_walk(rng, start, angle + d, rng.uniform(0.5, 1.0) * size, 0.15) for d in (0.0, np.pi)]
    pts = np.vstack([halves[1][::-1], halves[0][1:]])
    pts = np.stack([ndimage.gaussian_filter1d(pts[:, k], 4, mode="nearest") for k in (0, 1)], 1)
    draw.line([tuple(p) for p in (pts * _SS).tolist()], fill=255, width=max(1, round(width * _SS)),
              joint="curve")
    cov = ndimage.gaussian_filter(_coverage(canvas, h, w), rng.uniform(0.5, 1.2))
    tar = rng.uniform(18, 45) + 5 * _blurred_noise(rng, h, w, 2)
    gloss = 25 * np.clip(_blurred_noise(rng, h, w, 3) - 1.2, 0, None)  # specular patches
    if cover is not None:
        cover.append(cov)
    return lum * (1 - cov) + (tar + gloss) * cov


_NEGATIVES = {
    "joint": _neg_joint,
    "paint": _neg_paint,
    "stain": _neg_stain,
    "shadow": _neg_shadow,
    "scratches": _neg_scratches,
    "leaves": _neg_leaves,
    "tar": _neg_tar,
}
_NEG_WEIGHTS = np.array([0.18, 0.12, 0.18, 0.16, 0.14, 0.1, 0.12])


# Hard negatives that a segmenter most often mistakes for cracks (docs/benchmarks.md): straight
# constant-width joints and smooth sealant bands. Training draws them onto its crops.
AUGMENT_KINDS = ("joint", "tar")


def _draw_onto(rng: np.random.Generator, image: np.ndarray, draw) -> np.ndarray:
    """Apply ``draw`` (luminance -> luminance) to a finished uint8 RGB image as a per-pixel gain,
    with the image's own slight blur and grain on what changed, so that the drawn layer is no
    crisper or cleaner than the photograph around it."""
    rgb = image.astype(np.float32)
    lum = np.maximum(rgb.mean(-1), 1.0)
    gain = ndimage.gaussian_filter(draw(lum) / lum, rng.uniform(0.3, 0.7))
    grain = rng.normal(0, 1.5, rgb.shape).astype(np.float32) * (np.abs(gain - 1) > 0.02)[..., None]
    return np.clip(rgb * gain[..., None] + grain + 0.5, 0, 255).astype(np.uint8)


def add_hard_negative(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                      kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw one hard negative (``AUGMENT_KINDS``; random when None) onto a finished image
    (uint8 [H, W, 3]) and its crack mask.

    A joint is cut into the surface (cracks keep their label); sealant lies on top and hides the
    cracks under it (they leave the mask), as in :func:`render`. Works on any image, synthetic
    or real: it is an augmentation, not part of the data.
    """
    kind = kind or AUGMENT_KINDS[int(rng.integers(0, len(AUGMENT_KINDS)))]
    if kind not in AUGMENT_KINDS:
        raise ValueError(f"unknown hard-negative augmentation {kind!r}; known: {AUGMENT_KINDS}")
    cover: list[np.ndarray] = []
    out = _draw_onto(rng, image, (lambda lum: _neg_joint(rng, lum)) if kind == "joint"
                     else (lambda lum: _neg_tar(rng, lum, cover)))
    return out, (mask & (cover[0] < 0.5)) if cover else mask


def add_crack(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
              wide: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Draw one more crack onto a finished image and add it to the mask; ``wide`` is the chance
    that it is a wide open crack (0.1 in :func:`render`): a model taught to reject dark sealant
    bands needs more of these rare wide cracks to keep finding them."""
    drawn: list[np.ndarray] = []

    def crack(lum):
        cracked, crack_mask = _render_cracks(rng, lum, 1, wide=wide)
        drawn.append(crack_mask)
        return cracked

    out = _draw_onto(rng, image, crack)
    return out, mask | drawn[0]


# --------------------------------------------------------------------------- one image


def render(rng: np.random.Generator, size: int = 256, cracks: int | None = None,
           negatives: list[str] | int | None = None) -> Sample:
    """Draw one image.

    ``cracks``: number of cracks (None: random, about 20% of images have none).
    ``negatives``: hard-negative kinds to add, or how many random ones (None: random).
    """
    h = w = int(size)
    lum, tint = _surface(rng, h, w)
    if cracks is None:
        cracks = int(rng.choice([0, 1, 2, 3], p=[0.2, 0.52, 0.2, 0.08]))
    if negatives is None:
        negatives = int(rng.choice([0, 1, 2], p=[0.4, 0.42, 0.18] if cracks else [0.15, 0.5, 0.35]))
    if isinstance(negatives, int):
        idx = rng.choice(len(NEGATIVE_KINDS), size=negatives, replace=False, p=_NEG_WEIGHTS)
        negatives = [NEGATIVE_KINDS[i] for i in sorted(idx)]
    unknown = [n for n in negatives if n not in _NEGATIVES]
    if unknown:
        raise ValueError(f"unknown hard-negative kinds {unknown}; known: {NEGATIVE_KINDS}")

    overlays: list[tuple[np.ndarray, np.ndarray]] = []
    # stains, joints, scratches and paint are on the surface and cracks cut through them;
    # tar sealant and leaves lie on top of cracks (and hide them: not in the mask); shadows last
    for kind in negatives:
        if kind in ("stain", "joint", "scratches"):
            lum = _NEGATIVES[kind](rng, lum)
    for kind in negatives:
        if kind == "paint":
            lum = _neg_paint(rng, lum, overlays)
    mask = np.zeros((h, w), bool)
    rgb = lum[..., None] * tint
    if overlays:  # painted lines are recoloured before the cracks cut through them
        for alpha, color in overlays:
            shade = (lum / max(lum.mean(), 1))[..., None]
            rgb = rgb * (1 - alpha[..., None]) + alpha[..., None] * color * np.clip(shade, 0.6, 1.3)
        overlays = []
    lum2 = rgb.mean(-1)
    if cracks:
        cracked, mask = _render_cracks(rng, lum2, cracks)
        rgb = rgb * (cracked / np.maximum(lum2, 1))[..., None]
    if "tar" in negatives:
        cover: list[np.ndarray] = []
        lum3 = rgb.mean(-1)
        sealed = _neg_tar(rng, lum3, cover)
        rgb = rgb * (sealed / np.maximum(lum3, 1))[..., None]
        mask &= cover[0] < 0.5
    if "leaves" in negatives:
        _neg_leaves(rng, lum2, overlays)
        alpha, color = overlays[0]
        rgb = rgb * (1 - alpha[..., None]) + alpha[..., None] * color
        mask &= alpha < 0.5
    for kind in negatives:
        if kind == "shadow":
            shaded = _neg_shadow(rng, rgb.mean(-1))
            rgb = rgb * (shaded / np.maximum(rgb.mean(-1), 1))[..., None]

    # camera: defocus, sensor noise, JPEG quality (applied when encoding)
    sigma = rng.uniform(0.15, 0.7)
    rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0))
    rgb += rng.uniform(1.0, 4.0) * rng.standard_normal((h, w, 1), dtype=np.float32)
    rgb += rng.uniform(0.5, 2.0) * rng.standard_normal((h, w, 3), dtype=np.float32)
    image = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(60, 96))
    return Sample(image=image, mask=mask, quality=quality, cracks=cracks, negatives=list(negatives))


def render_for_task(seed: int, index: int, task: str, size: int = 256) -> tuple[Sample, str | None]:
    """The ``index``-th image for a task; for ``classify`` also its label (even index: crack)."""
    if task == "segment":
        return render(image_rng(seed, index), size), None
    if task != "classify":
        raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
    rng = image_rng(seed, index, stream=1)
    if index % 2 == 0:
        min_frac = 0.004
        for _ in range(20):  # a crack patch must show a crack, not just graze a corner
            sample = render(rng, size, cracks=int(rng.choice([1, 1, 1, 2])))
            if sample.mask.mean() >= min_frac:
                break
        return sample, "crack"
    return render(rng, size, cracks=0, negatives=int(rng.choice([0, 1, 1, 2]))), "no_crack"


# --------------------------------------------------------------------------- writing datasets


def check_options(task: str, count: int, seed: int = 0, size: int = 256) -> None:
    """:func:`write_dataset`'s arguments, checked: a :class:`DataError` naming the option
    (``fissure data synth`` reports it as a usage error, exit code 2)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if count < 1:
        raise DataError(f"--count must be at least 1 (got {count})")
    if seed < 0:
        raise DataError(f"--seed must be at least 0 (got {seed})")
    if not 32 <= size <= 4096:
        raise DataError(f"--size must be between 32 and 4096 pixels (got {size})")


def write_dataset(out: str | os.PathLike, task: str, count: int, seed: int = 0, size: int = 256,
                  progress: bool | None = None, start: int = 0) -> dict:
    """Write ``count`` images in the task's folder layout; return counts.

    segment:  OUT/images/<id>.jpg + OUT/masks/<id>.png (0/255, cracks only)
    classify: OUT/crack/<id>.jpg, OUT/no_crack/<id>.jpg (balanced: even index = crack)

    ``progress`` as ``enabled`` of :class:`fissure.progress.Progress` (None: a bar on a terminal only).
    """
    check_options(task, count, seed, size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    dirs = ("images", "masks") if task == "segment" else ("crack", "no_crack")
    for d in dirs:
        (out / d).mkdir(parents=True, exist_ok=True)
    counts = {d: 0 for d in dirs}
    for index in iterate(range(start, start + count), f"synth {task}", count, unit="images", enabled=progress):
        sample, label = render_for_task(seed, index, task, size)
        name = f"synth-{seed}-{index:06d}"
        if task == "segment":
            (out / "images" / f"{name}.jpg").write_bytes(sample.jpeg_bytes())
            (out / "masks" / f"{name}.png").write_bytes(sample.mask_png_bytes())
            counts["images"] += 1
            counts["masks"] += 1
        else:
            (out / label / f"{name}.jpg").write_bytes(sample.jpeg_bytes())
            counts[label] += 1
    return counts
