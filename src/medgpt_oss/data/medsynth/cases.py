"""MedSynth cases: the seeds, and the ground truth of each case (modality, findings, hidden anatomy).

Each case draws from its own ``numpy`` generators seeded by (seed, split, index), so a case is
independent of the other cases and of the split sizes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_MAGIC = 0x4D53594E  # "MSYN": keeps our seed space apart from other users of (seed, i)
CHANGES = ("new", "grown", "resolved", "stable", "none")

# Probabilities that shape the mix.
MODALITY_SHARE = {"cxr": 0.50, "ct": 0.15, "mri": 0.15, "pathology": 0.20}
_P_NORMAL_CXR = 0.20   # fully normal chest studies
_P_FINDING = 0.58      # per finding, given "not normal" and at least one: ~50 % overall
_P_PRIOR = 0.40        # chest patients with a prior study
_OLDER_STUDIES = (3, 17)  # follow-ups before the prior study in a patient's series: 3..16

# Nodule radii as fractions of the image side (x64 = pixels at 64 px).
NODULE_RADIUS = {"small": (0.037, 0.044), "large": (0.074, 0.086)}


def case_seeds(seed: int, split: str, index: int) -> list[np.random.SeedSequence]:
    """A case's three independent streams: case content (here), image noise (drawing), text choices (records)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence([_MAGIC, seed, _SPLIT_CODE[split], index]).spawn(3)


def _sample_cxr_anatomy(rng: np.random.Generator) -> dict[str, float]:
    u = rng.uniform
    return {
        "shift_x": u(-0.02, 0.02), "shift_y": u(-0.02, 0.02), "scale": u(0.95, 1.04),
        "body_rx": u(0.44, 0.47), "body_val": u(0.52, 0.6),
        "lung_dx": u(0.175, 0.195), "lung_rx": u(0.135, 0.15),
        "lung_cy": u(0.485, 0.515), "lung_ry": u(0.28, 0.31), "lung_val": u(0.13, 0.19),
        "rib_freq": u(8.0, 10.0), "rib_phase": u(0.0, 2 * math.pi), "rib_amp": u(0.05, 0.08),
        "heart_off": u(0.025, 0.04), "heart_ry": u(0.11, 0.13), "heart_val": u(0.66, 0.74),
        "ctr_normal": u(0.35, 0.43), "ctr_enlarged": u(0.6, 0.68),
        # nodule geometry, drawn always so the draw sequence never depends on findings
        "nod_u": u(-0.3, 0.3), "nod_v": u(-0.58, -0.2), "nod_lat_x": u(0.4, 0.64),
        "nod_r_small": u(*NODULE_RADIUS["small"]), "nod_r_large": u(*NODULE_RADIUS["large"]),
        "eff_frac": u(0.37, 0.46), "eff_rise": u(0.04, 0.07),
        "lat_heart_cx": u(0.34, 0.38),
    }


def _sample_ct_anatomy(rng: np.random.Generator) -> dict[str, float]:
    u = rng.uniform
    return {"shift_x": u(-0.02, 0.02), "shift_y": u(-0.02, 0.02), "scale": u(0.95, 1.04),
            "body_rx": u(0.41, 0.45), "body_ry": u(0.3, 0.34), "liver_cx": u(0.33, 0.36),
            "liver_rx": u(0.16, 0.18), "liver_ry": u(0.15, 0.17), "liver_angle": u(-0.2, 0.2),
            "les_u": u(-0.45, 0.45), "les_v": u(-0.45, 0.45), "les_r": u(0.05, 0.07),
            "gas": rng.uniform(0, 1, (4, 3)).tolist()}


def _sample_mri_anatomy(rng: np.random.Generator) -> dict[str, float]:
    u = rng.uniform
    return {"shift_x": u(-0.02, 0.02), "shift_y": u(-0.02, 0.02), "scale": u(0.95, 1.04),
            "head_rx": u(0.37, 0.4), "head_ry": u(0.44, 0.47), "vent_ry": u(0.08, 0.11),
            "mass_dx": u(0.13, 0.2), "mass_y": u(0.36, 0.64), "mass_r": u(0.055, 0.08)}


def sample_case(seed: int, split: str, index: int) -> dict[str, Any]:
    """The ground truth of one case (modality, findings, hidden anatomy parameters)."""
    rng = np.random.default_rng(case_seeds(seed, split, index)[0])
    r, modality = rng.random(), list(MODALITY_SHARE)[-1]
    acc = 0.0
    for name, p in MODALITY_SHARE.items():
        acc += p
        if r < acc:
            modality = name
            break
    case: dict[str, Any] = {"modality": modality, "split": split, "index": index}
    if modality == "cxr":
        anatomy = _sample_cxr_anatomy(rng)
        side = lambda: str(rng.choice(["left", "right"]))  # noqa: E731
        flags = [False, False, False]
        if rng.random() >= _P_NORMAL_CXR:
            while not any(flags):
                flags = list(rng.random(3) < _P_FINDING)
        nod_side, nod_size, eff_side = side(), str(rng.choice(["small", "large"])), side()
        f = {"nodule": {"side": nod_side, "size": nod_size} if flags[0] else None,
             "effusion": {"side": eff_side} if flags[1] else None,
             "cardiomegaly": bool(flags[2])}
        has_prior, change = rng.random() < _P_PRIOR, str(rng.choice(CHANGES))
        prior_size = str(rng.choice(["small", "large"]))
        case["prior"] = None
        if has_prior:
            # the change decides the nodule in both studies; the rest is unchanged
            cur = {"side": nod_side, "size": nod_size}
            prior_nod = {"new": None, "grown": {"side": nod_side, "size": "small"},
                         "resolved": {"side": nod_side, "size": prior_size},
                         "stable": dict(cur), "none": None}[change]
            f["nodule"] = {"new": cur, "grown": {"side": nod_side, "size": "large"}, "resolved": None,
                           "stable": cur, "none": None}[change]
            prior_anatomy = dict(anatomy)
            for k in ("shift_x", "shift_y"):
                prior_anatomy[k] = anatomy[k] + rng.uniform(-0.015, 0.015)
            case["prior"] = {"anatomy": prior_anatomy,
                             "findings": {"nodule": prior_nod, "effusion": f["effusion"],
                                          "cardiomegaly": f["cardiomegaly"]}}
            case["change"] = change
            # Older follow-ups before the prior study (frontal views, findings as on the prior): the patient's
            # series that long-context samples are made of. Drawn last, so no earlier draw moves.
            case["older"] = [{"shift_x": prior_anatomy["shift_x"] + rng.uniform(-0.015, 0.015),
                              "shift_y": prior_anatomy["shift_y"] + rng.uniform(-0.015, 0.015)}
                             for _ in range(int(rng.integers(*_OLDER_STUDIES)))]
        case.update(anatomy=anatomy, findings=f)
    elif modality == "ct":
        case.update(anatomy=_sample_ct_anatomy(rng), findings={"liver_lesion": bool(rng.random() < 0.5)})
    elif modality == "mri":
        present, s = rng.random() < 0.5, str(rng.choice(["left", "right"]))
        case.update(anatomy=_sample_mri_anatomy(rng), findings={"brain_mass": {"side": s} if present else None})
    else:
        case.update(anatomy={}, findings={"tumor": bool(rng.random() < 0.5)})
    return case


def positive_findings(modality: str, f: dict) -> list[str]:
    """Finding names present in a case (the unit of finding-level F1)."""
    if modality == "cxr":
        return [k for k in ("nodule", "effusion", "cardiomegaly") if f[k]]
    return [k for k, v in f.items() if v]
