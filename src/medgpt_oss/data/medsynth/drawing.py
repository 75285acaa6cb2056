"""MedSynth drawing: every image of a case, rendered from its hidden anatomy and findings.

Geometry is in normalised [0, 1] coordinates and sides follow the radiological convention (the
package docstring says which way each view faces).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from medgpt_oss.data.medsynth.cases import case_seeds

# --------------------------------------------------------------------------
# drawing primitives (vectorised over the whole grid; no per-pixel loops)
# --------------------------------------------------------------------------

class _Canvas:
    """Pixel-centre coordinates mapped into a patient frame (shift + scale)."""

    def __init__(self, size: int, shift_x: float = 0.0, shift_y: float = 0.0, scale: float = 1.0):
        c = (np.arange(size, dtype=np.float64) + 0.5) / size
        self.X = ((c - 0.5 - shift_x) / scale + 0.5)[None, :]
        self.Y = ((c - 0.5 - shift_y) / scale + 0.5)[:, None]
        self.px = size * scale  # pixels per patient unit, for 1 px anti-aliased edges
        self.size = size

    def soft(self, signed_dist: np.ndarray) -> np.ndarray:
        """Coverage in [0, 1] from a signed distance (positive inside) in patient units."""
        return np.clip(signed_dist * self.px + 0.5, 0.0, 1.0)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
        # evaluate only inside the bounding box (plus a pixel): most shapes are small
        reach = max(rx, ry) + 2.0 / self.px
        xs = np.searchsorted(self.X[0], [cx - reach, cx + reach])
        ys = np.searchsorted(self.Y[:, 0], [cy - reach, cy + reach])
        out = np.zeros((self.size, self.size))
        if xs[0] >= xs[1] or ys[0] >= ys[1]:
            return out
        dx, dy = self.X[:, xs[0]:xs[1]] - cx, self.Y[ys[0]:ys[1], :] - cy
        if angle:
            ca, sa = math.cos(angle), math.sin(angle)
            dx, dy = dx * ca + dy * sa, -dx * sa + dy * ca
        # first-order distance to the level set g = 1 (exact at the boundary, so thin
        # shapes keep a 1 px edge instead of fading out along their long axis)
        g = (dx / rx) ** 2 + (dy / ry) ** 2
        grad = 2.0 * np.sqrt((dx / rx**2) ** 2 + (dy / ry**2) ** 2)
        out[ys[0]:ys[1], xs[0]:xs[1]] = self.soft((1.0 - g) / (grad + 1e-12))
        return out


def _paint(img: np.ndarray, mask: np.ndarray, value) -> np.ndarray:
    return img * (1.0 - mask) + value * mask


def _smooth_noise(rng: np.random.Generator, size: int, cells: int = 8) -> np.ndarray:
    """Low-frequency texture in about [-1, 1]: a coarse random grid, bicubic-upsampled."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    up = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(up, dtype=np.float64) / 1.5


def _finish_gray(img: np.ndarray, rng: np.random.Generator, noise: float = 0.02) -> Image.Image:
    gain, offset = rng.uniform(0.94, 1.06), rng.uniform(-0.02, 0.02)
    img = img * gain + offset + rng.normal(0.0, noise, img.shape)
    return Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


# --------------------------------------------------------------------------
# chest radiographs
# --------------------------------------------------------------------------

def _image_x(side: str) -> float:
    """Image-x sign of a patient side: patient left is on the image right."""
    return 1.0 if side == "left" else -1.0


def _lung_center(a: dict, side: str) -> tuple[float, float]:
    return 0.5 + _image_x(side) * a["lung_dx"], a["lung_cy"]


def _nodule_geometry(a: dict, nodule: dict) -> tuple[float, float, float]:
    lcx, lcy = _lung_center(a, nodule["side"])
    r = a["nod_r_small"] if nodule["size"] == "small" else a["nod_r_large"]
    return lcx + a["nod_u"] * a["lung_rx"], lcy + a["nod_v"] * a["lung_ry"], r


def _draw_nodule(c: _Canvas, img: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    disk = c.ellipse(cx, cy, r, r)
    d2 = ((c.X - cx) ** 2 + (c.Y - cy) ** 2) / (r * r)
    return img + disk * (0.42 + 0.1 * np.clip(1.0 - d2, 0.0, 1.0))


def _fluid_mask(c: _Canvas, lung: np.ndarray, top: float, rise: float, lateral01: np.ndarray) -> np.ndarray:
    """Fluid below a meniscus that climbs towards the lateral (or posterior) wall."""
    y_top = top - rise * lateral01 ** 2
    return lung * c.soft(c.Y - y_top)


def render_cxr_frontal(a: dict, f: dict, size: int, rng: np.random.Generator) -> Image.Image:
    c = _Canvas(size, a["shift_x"], a["shift_y"], a["scale"])
    img = np.full((size, size), 0.03)
    tissue = np.maximum.reduce([c.ellipse(0.5, 0.62, a["body_rx"], 0.56), c.ellipse(0.5, 0.04, 0.11, 0.16),
                                c.ellipse(0.5, 0.36, a["body_rx"] + 0.02, 0.22)])  # trunk, neck, shoulders
    img = _paint(img, tissue, a["body_val"] + 0.04 * np.clip((c.Y - 0.75) * 8, 0, 1))
    for side in ("right", "left"):
        lcx, lcy = _lung_center(a, side)
        lung = c.ellipse(lcx, lcy, a["lung_rx"], a["lung_ry"])
        # ribs: faint curved bands, sloping down laterally
        yy = c.Y + 0.6 * (c.X - lcx) ** 2 + 0.15 * _image_x(side) * (c.X - lcx)
        ribs = a["rib_amp"] * (0.5 + 0.5 * np.cos(2 * math.pi * yy * a["rib_freq"] + a["rib_phase"])) ** 8
        lung_val = a["lung_val"] + 0.05 * (c.Y - lcy) / a["lung_ry"] + ribs
        img = _paint(img, lung, lung_val)
        if f["effusion"] and f["effusion"]["side"] == side:
            lateral01 = np.clip((1.0 + _image_x(side) * (c.X - lcx) / a["lung_rx"]) / 2.0, 0.0, 1.0)
            top = lcy + a["lung_ry"] * (1.0 - 2.0 * a["eff_frac"])
            fluid = _fluid_mask(c, lung, top, a["eff_rise"], lateral01)
            img = _paint(img, fluid, a["body_val"] + 0.04 + 0.04 * np.clip((c.Y - top) * 6, 0, 1))
    # clavicles, mediastinum, trachea, heart (on top of the medial lungs)
    for s in (-1.0, 1.0):
        img = img + 0.1 * c.ellipse(0.5 + s * 0.17, 0.2, 0.15, 0.016, angle=s * 0.25)
    img = _paint(img, c.ellipse(0.5, 0.36, 0.065, 0.3), 0.66)
    img = _paint(img, c.ellipse(0.5, 0.2, 0.012, 0.13), 0.36)
    thorax_w = 2.0 * (a["lung_dx"] + a["lung_rx"])
    ctr = a["ctr_enlarged"] if f["cardiomegaly"] else a["ctr_normal"]
    heart_cy = a["lung_cy"] + 0.55 * a["lung_ry"]
    img = _paint(img, c.ellipse(0.5 + a["heart_off"], heart_cy, ctr * thorax_w / 2.0, a["heart_ry"]), a["heart_val"])
    if f["nodule"]:
        img = _draw_nodule(c, img, *_nodule_geometry(a, f["nodule"]))
    img = img + 0.025 * _smooth_noise(rng, size)
    return _finish_gray(img, rng)


def render_cxr_lateral(a: dict, f: dict, size: int, rng: np.random.Generator) -> Image.Image:
    c = _Canvas(size, a["shift_x"], a["shift_y"], a["scale"])
    img = np.full((size, size), 0.03)
    tissue = np.maximum(c.ellipse(0.5, 0.62, 0.42, 0.56), c.ellipse(0.55, 0.04, 0.13, 0.16))
    img = _paint(img, tissue, a["body_val"] + 0.04 * np.clip((c.Y - 0.75) * 8, 0, 1))
    lung_cx, lung_rx = 0.52, 0.27
    lcy, lry = a["lung_cy"], a["lung_ry"]
    lung = c.ellipse(lung_cx, lcy, lung_rx, lry)
    img = _paint(img, lung, a["lung_val"] + 0.05 + 0.05 * (c.Y - lcy) / lry)
    if f["effusion"]:  # posterior costophrenic angle: fluid rises towards the back
        posterior01 = np.clip((c.X - lung_cx) / lung_rx, 0.0, 1.0)
        top = lcy + lry * (1.0 - 2.0 * a["eff_frac"]) + 0.04
        fluid = _fluid_mask(c, lung, top, a["eff_rise"] + 0.04, posterior01) * c.soft(c.X - 0.42)
        img = _paint(img, fluid, a["body_val"] + 0.05)
    # spine (posterior, image right) with disc spaces; sternum (anterior, image left)
    discs = 1.0 - 0.3 * (0.5 + 0.5 * np.cos(2 * math.pi * c.Y * 14.0)) ** 6
    img = _paint(img, c.ellipse(0.83, 0.58, 0.045, 0.5), 0.74 * discs)
    img = _paint(img, c.ellipse(0.12, 0.46, 0.016, 0.16), 0.68)
    heart_big = f["cardiomegaly"]
    hrx, hry = (0.2, 0.165) if heart_big else (0.13, 0.13)
    img = _paint(img, c.ellipse(a["lat_heart_cx"] + (0.03 if heart_big else 0.0), lcy + 0.55 * lry, hrx, hry),
                 a["heart_val"] - 0.03)
    if f["nodule"]:
        _, ny, r = _nodule_geometry(a, f["nodule"])
        img = _draw_nodule(c, img, a["nod_lat_x"], ny, r)
    img = img + 0.025 * _smooth_noise(rng, size)
    return _finish_gray(img, rng)


# --------------------------------------------------------------------------
# CT, MRI, pathology
# --------------------------------------------------------------------------

def render_ct(a: dict, f: dict, size: int, rng: np.random.Generator) -> Image.Image:
    c = _Canvas(size, a["shift_x"], a["shift_y"], a["scale"])
    img = np.full((size, size), 0.02)
    img = _paint(img, c.ellipse(0.5, 0.52, a["body_rx"], a["body_ry"]), 0.3)  # subcutaneous fat
    img = _paint(img, c.ellipse(0.5, 0.52, a["body_rx"] - 0.035, a["body_ry"] - 0.035), 0.46)
    for gx, gy, gr in a["gas"]:  # bowel gas, kept on the patient's left (image right), away from the liver
        img = _paint(img, c.ellipse(0.55 + 0.18 * gx, 0.36 + 0.12 * gy, 0.015 + 0.015 * gr, 0.015 + 0.015 * gr), 0.06)
    liver_cy = 0.45
    img = _paint(img, c.ellipse(a["liver_cx"], liver_cy, a["liver_rx"], a["liver_ry"], a["liver_angle"]), 0.62)
    img = _paint(img, c.ellipse(0.71, 0.44, 0.055, 0.08, 0.4), 0.58)  # spleen
    for kx in (0.36, 0.64):
        img = _paint(img, c.ellipse(kx, 0.66, 0.05, 0.07, 0.3 if kx < 0.5 else -0.3), 0.7)
    img = _paint(img, c.ellipse(0.53, 0.6, 0.024, 0.024), 0.78)  # aorta
    img = _paint(img, c.ellipse(0.5, 0.71, 0.055, 0.05), 0.95)   # vertebral body
    img = _paint(img, c.ellipse(0.5, 0.79, 0.02, 0.035), 0.9)    # spinous process
    if f["liver_lesion"]:
        lx = a["liver_cx"] + a["les_u"] * a["liver_rx"]
        ly = liver_cy + a["les_v"] * a["liver_ry"]
        img = _paint(img, c.ellipse(lx, ly, a["les_r"], a["les_r"]), 0.32)
    img = img + 0.02 * _smooth_noise(rng, size)
    return _finish_gray(img, rng)


def render_mri(a: dict, f: dict, size: int, rng: np.random.Generator) -> Image.Image:
    c = _Canvas(size, a["shift_x"], a["shift_y"], a["scale"])
    rx, ry = a["head_rx"], a["head_ry"]
    img = np.full((size, size), 0.02)
    img = _paint(img, c.ellipse(0.5, 0.5, rx, ry), 0.82)                 # scalp / marrow
    img = _paint(img, c.ellipse(0.5, 0.5, rx - 0.03, ry - 0.03), 0.18)   # cortical bone + CSF
    brain = c.ellipse(0.5, 0.5, rx - 0.045, ry - 0.045)
    img = _paint(img, brain, 0.46 + 0.04 * _smooth_noise(rng, size, 12))
    img = _paint(img, c.ellipse(0.5, 0.5, rx - 0.12, ry - 0.12), 0.56)  # white matter
    img = _paint(img, c.ellipse(0.5, 0.5, 0.005, ry - 0.05), 0.25)       # falx
    for s in (-1.0, 1.0):                                                  # lateral ventricles
        img = _paint(img, c.ellipse(0.5 + s * 0.04, 0.47, 0.028, a["vent_ry"], -s * 0.3), 0.14)
    if f["brain_mass"]:
        mx = 0.5 + _image_x(f["brain_mass"]["side"]) * a["mass_dx"]
        img = _paint(img, c.ellipse(mx, a["mass_y"], a["mass_r"] + 0.015, a["mass_r"] + 0.015), 0.38)  # edema rim
        img = _paint(img, c.ellipse(mx, a["mass_y"], a["mass_r"], a["mass_r"]), 0.93)
    img = img + 0.015 * _smooth_noise(rng, size)
    return _finish_gray(img, rng)


def render_pathology(f: dict, size: int, rng: np.random.Generator) -> Image.Image:
    c = _Canvas(size)
    tumor = f["tumor"]
    density = np.clip(0.55 + 0.35 * _smooth_noise(rng, size, 10), 0.0, 1.0)[..., None]
    pale, eosin = np.array([0.97, 0.9, 0.94]), np.array([0.9, 0.52, 0.72])
    img = pale + (eosin - pale) * density
    if not tumor:  # glands: pale lumens ringed by small regular nuclei
        centers = [(rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.09, 0.13))
                   for _ in range(int(rng.integers(1, 3)))]
        for gx, gy, gr in centers:
            img = _paint(img, c.ellipse(gx, gy, gr, gr * 0.8)[..., None], pale)
    if tumor:
        n = int(rng.integers(55, 75))
        xs, ys = rng.uniform(-0.02, 1.02, n), rng.uniform(-0.02, 1.02, n)
        r0 = rng.uniform(0.038, 0.058, n)
        wobble = rng.uniform(0.12, 0.25, (n, 2))
        color = np.array([0.24, 0.09, 0.42])
    else:
        ring = [(gx + gr * 1.1 * math.cos(t), gy + gr * 0.9 * math.sin(t)) for gx, gy, gr in centers
                for t in np.linspace(0, 2 * math.pi, 9, endpoint=False)]
        n_free = int(rng.integers(10, 18))
        xs = np.concatenate([[p[0] for p in ring], rng.uniform(0, 1, n_free)])
        ys = np.concatenate([[p[1] for p in ring], rng.uniform(0, 1, n_free)])
        n = len(xs)
        r0 = rng.uniform(0.015, 0.021, n)
        wobble = rng.uniform(0.0, 0.05, (n, 2))
        color = np.array([0.36, 0.2, 0.55])
    phase = rng.uniform(0, 2 * math.pi, (n, 2))
    alpha = np.zeros((size, size))
    for i in range(n):  # one small window per nucleus, vectorised inside the window
        half = r0[i] * 1.4
        x0, x1 = max(int((xs[i] - half) * size), 0), min(int((xs[i] + half) * size) + 2, size)
        y0, y1 = max(int((ys[i] - half) * size), 0), min(int((ys[i] + half) * size) + 2, size)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = c.X[:, x0:x1] - xs[i]
        dy = c.Y[y0:y1, :] - ys[i]
        theta = np.arctan2(dy, dx)
        rr = r0[i] * (1.0 + wobble[i, 0] * np.cos(2 * theta + phase[i, 0])
                      + wobble[i, 1] * np.cos(3 * theta + phase[i, 1]))
        m = c.soft(rr - np.sqrt(dx * dx + dy * dy)) * 0.92
        alpha[y0:y1, x0:x1] = np.maximum(alpha[y0:y1, x0:x1], m)
    alpha = alpha * (1.0 - 0.15 * np.clip(_smooth_noise(rng, size, 24), 0, 1))  # chromatin texture
    img = img * (1.0 - alpha[..., None]) + color * alpha[..., None]
    img = img + rng.normal(0.0, 0.015, img.shape)
    return Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def case_views(case: dict[str, Any]) -> list[str]:
    """The views ``render_case`` draws for a case, in its order: records need the names, not the pixels."""
    if case["modality"] != "cxr":
        return [{"ct": "axial", "mri": "axial", "pathology": "patch"}[case["modality"]]]
    views = ["frontal", "lateral"]
    if case["prior"]:
        views += ["prior_frontal", "prior_lateral"]
        views += [f"older{k:02d}_frontal" for k in range(len(case.get("older", [])))]
    return views


def image_path(split: str, index: int, view: str) -> str:
    """Where a view of a case is saved, relative to the data set's root."""
    return f"images/{split}/{index:06d}_{view}.png"


def render_case(case: dict[str, Any], seed: int, image_size: int) -> dict[str, Image.Image]:
    """All images of a case, keyed by view (``frontal``, ``lateral``, ``prior_frontal``, ...; see ``case_views``)."""
    img_ss = case_seeds(seed, case["split"], case["index"])[1]
    rngs = [np.random.default_rng(s) for s in img_ss.spawn(4)]
    a, f, m = case["anatomy"], case["findings"], case["modality"]
    if m == "cxr":
        out = {"frontal": render_cxr_frontal(a, f, image_size, rngs[0]),
               "lateral": render_cxr_lateral(a, f, image_size, rngs[1])}
        if case["prior"]:
            p = case["prior"]
            out["prior_frontal"] = render_cxr_frontal(p["anatomy"], p["findings"], image_size, rngs[2])
            out["prior_lateral"] = render_cxr_lateral(p["anatomy"], p["findings"], image_size, rngs[3])
            older = case.get("older", [])
            for k, (shift, rng) in enumerate(zip(older, map(np.random.default_rng, img_ss.spawn(len(older))))):
                out[f"older{k:02d}_frontal"] = render_cxr_frontal({**p["anatomy"], **shift}, p["findings"],
                                                                  image_size, rng)
        return out
    if m == "ct":
        return {"axial": render_ct(a, f, image_size, rngs[0])}
    if m == "mri":
        return {"axial": render_mri(a, f, image_size, rngs[0])}
    return {"patch": render_pathology(f, image_size, rngs[0])}
