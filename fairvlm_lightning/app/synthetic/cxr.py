"""A chest-X-ray-like, multi-label synthetic twin: small, offline, seeded, in imagefolder layout.

What it models (``docs/howto/multilabel.md`` has the full table):

- five findings of the CheXpert competition, :data:`FINDINGS` (cardiomegaly, edema,
  consolidation, atelectasis, pleural effusion), with the marginal prevalences of
  :data:`PREVALENCE`: the positive rates of CheXpert and MIMIC-CXR pooled (CheXpert labeler,
  uncertain counted as negative; 600,510 images, counts as tabulated in the
  ``inisis/chexpert-competition`` README: 91,346 / 88,810 / 29,458 / 98,423 / 163,144
  positives). Findings co-occur through a Gaussian copula (:data:`LATENT_CORRELATION`): a
  heart-failure cluster (cardiomegaly, edema, effusion) and effusion with atelectasis, the
  pattern reported for CheXpert/MIMIC-CXR; the correlation values themselves are a design
  choice, not fitted to a published matrix. Prevalence rises with age (:data:`AGE_SHIFT`), as
  in the age-sex standardisation of CheXpert vs ChestX-ray14 (Cureus 2025, 10.7759/cureus.97260);
- protected attributes ``sex`` (0 female, 1 male), ``age_group`` (0: 18-39, 1: 40-59,
  2: 60-79, 3: 80+) and ``race`` (0 Asian, 1 Black, 2 White, 3 Hispanic, the FairVLMed order
  with Hispanic added), with roughly MIMIC-CXR's composition (about 48 % female, mostly
  White; Seyyed-Kalantari et al., Nat. Med. 2021) and the smaller race groups enlarged so that
  the test split has positives of every finding in every race group;
- 64 x 64 greyscale frontal-view sketches (body, lungs, diaphragm, ribs, spine, heart) in which
  each finding is drawn where it appears on a radiograph, at the strengths of :data:`SIGNAL` and
  :data:`HEART_WIDTH`;
- group-dependent appearance: acquisition quality by race (:data:`APPEARANCE`: brightness,
  contrast, noise; a stand-in for more portable AP studies) and a soft-tissue (breast) shadow
  over the lower lateral lung zones of female patients, which hides effusion and atelectasis;
- group-dependent report quality: the probability that a present finding is stated in the
  report (:data:`MENTION_P`, by race, times :data:`MENTION_AGE` by age group); a report that
  leaves findings out says something vague instead, and negates absent findings less often;
- planted bad pairs in the training split (:data:`BAD_PAIR_RATE`, drawn
  :data:`BAD_PAIR_RACE_WEIGHT` times more often in some race groups): the report is replaced by
  the report of another clean training patient with a different set of findings; the
  ``is_bad_pair`` column records them.

All these parameters are module constants, fixed before any method was trained on the data and
not to be tuned after looking at results: a change is a new dataset (bump
:data:`FORMAT_VERSION`). Only the seed, the split sizes and the image side are arguments.

Output: one Hugging Face ``imagefolder`` directory per split (``train/``, ``validation/``,
``test/``) with greyscale PNGs and a ``metadata.csv`` (``file_name``, ``text``, the five
finding columns 0/1, ``sex``, ``age_group``, ``race``, ``is_bad_pair``), loadable with
``datasets.load_dataset("imagefolder", data_dir=root)``.

Example:
    >>> import tempfile
    >>> root = write_synthetic_cxr(tempfile.mkdtemp(), sizes={"train": 8, "validation": 4,
    ...                            "test": 4})
    >>> sorted(p.name for p in root.iterdir())
    ['test', 'train', 'validation']
    >>> header = (root / "train" / "metadata.csv").read_text().splitlines()[0]
    >>> header  # doctest: +NORMALIZE_WHITESPACE
    'file_name,text,cardiomegaly,edema,consolidation,atelectasis,pleural_effusion,sex,age_group,race,is_bad_pair'
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairvlm_lightning.app.synthetic.fairvlmed import _interp_matrix, _sigmoid
from fairvlm_lightning.app.synthetic.tiny_model import build_tiny_dual_encoder
from fairvlm_lightning.atomic import MARKER, FileLock, atomic_folder

__all__ = [
    "APPEARANCE",
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "BAD_PAIR_RATE",
    "DEFAULT_SEED",
    "DEFAULT_SIZES",
    "FINDINGS",
    "FINDING_PROMPTS",
    "FORMAT_VERSION",
    "IMAGE_SIZE",
    "MENTION_P",
    "METADATA_COLUMNS",
    "PREVALENCE",
    "SPLITS",
    "ensure_synthetic_cxr",
    "latent_thresholds",
    "synthetic_cxr_settings",
    "write_synthetic_cxr",
]

#: Bump whenever a constant below or the renderer/report code changes (a new dataset).
FORMAT_VERSION = 1
#: Seed of the shipped twin.
DEFAULT_SEED = 0
#: Split folders, in the order they are drawn from the generator.
SPLITS: tuple[str, str, str] = ("train", "validation", "test")
#: Images per split of the shipped twin.
DEFAULT_SIZES: dict[str, int] = {"train": 2500, "validation": 500, "test": 1500}
#: Side of the square greyscale images (the tiny model's input side, so no resizing).
IMAGE_SIZE = 64

#: Finding columns, in this order everywhere (latent dimensions, metadata columns).
FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "edema",
    "consolidation",
    "atelectasis",
    "pleural_effusion",
)
#: Marginal prevalence of each finding over the whole population (see the module docstring).
PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.152,
    "edema": 0.148,
    "consolidation": 0.049,
    "atelectasis": 0.164,
    "pleural_effusion": 0.272,
}
#: Correlation of the latent Gaussian whose thresholds give the findings (FINDINGS order).
LATENT_CORRELATION: tuple[tuple[float, ...], ...] = (
    (1.00, 0.45, 0.00, 0.10, 0.35),
    (0.45, 1.00, 0.10, 0.15, 0.45),
    (0.00, 0.10, 1.00, 0.30, 0.25),
    (0.10, 0.15, 0.30, 1.00, 0.50),
    (0.35, 0.45, 0.25, 0.50, 1.00),
)
#: Shift of every latent by age group (older patients have more findings).
AGE_SHIFT: tuple[float, ...] = (-0.45, -0.15, 0.15, 0.40)

#: Protected attributes and the number of groups of each (codes 0..n-1, no unknowns).
ATTRIBUTES: dict[str, int] = {"sex": 2, "age_group": 4, "race": 4}
#: Display names of the groups, by attribute and code.
ATTRIBUTE_NAMES: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male"),
    "age_group": ("18-39", "40-59", "60-79", "80+"),
    "race": ("Asian", "Black", "White", "Hispanic"),
}
#: Group composition (probabilities by code).
SEX_P: tuple[float, ...] = (0.48, 0.52)
AGE_P: tuple[float, ...] = (0.20, 0.32, 0.34, 0.14)
RACE_P: tuple[float, ...] = (0.08, 0.18, 0.64, 0.10)

#: Acquisition quality by race: (brightness offset, contrast, noise std) on a [0, 1] scale.
APPEARANCE: dict[int, tuple[float, float, float]] = {
    0: (-0.02, 0.85, 0.04),
    1: (-0.06, 0.70, 0.06),
    2: (0.00, 1.00, 0.025),
    3: (-0.04, 0.75, 0.05),
}
#: Peak added brightness of each finding's opacity at full severity (severity is uniform in
#: [0.35, 1]); cardiomegaly is a wider heart instead: half-width (mean, std) without / with it.
SIGNAL: dict[str, float] = {
    "edema": 0.035,
    "consolidation": 0.22,
    "atelectasis": 0.10,
    "pleural_effusion": 0.06,
}
HEART_WIDTH: tuple[tuple[float, float], tuple[float, float]] = ((0.32, 0.035), (0.37, 0.04))
#: Standard deviation of each image's overall brightness (exposure) around its group's offset.
EXPOSURE_STD = 0.05
#: Brightness of the soft-tissue shadow over the lower lateral lung zones of female patients.
BREAST_SHADOW = 0.16

#: Probability that a present finding is stated in the report, by race ...
MENTION_P: dict[int, float] = {0: 0.85, 1: 0.70, 2: 0.93, 3: 0.75}
#: ... times this factor by age group.
MENTION_AGE: tuple[float, ...] = (1.0, 1.0, 0.97, 0.88)
#: Probability that an absent finding is negated ("no pleural effusion"), full / vague report.
NEGATION_P: tuple[float, float] = (0.45, 0.2)

#: Fraction of training pairs whose report is another patient's (none in validation/test).
BAD_PAIR_RATE = 0.1
#: Relative chance of a bad pair by race (under-served groups get more mismatched reports).
BAD_PAIR_RACE_WEIGHT: dict[int, float] = {0: 1.5, 1: 2.0, 2: 1.0, 3: 2.0}

#: Zero-shot prompts per finding, (positive, negative), the CheXzero convention.
FINDING_PROMPTS: dict[str, tuple[str, str]] = {
    "cardiomegaly": ("cardiomegaly.", "heart size is normal."),
    "edema": ("pulmonary edema.", "no pulmonary edema."),
    "consolidation": ("focal consolidation.", "no focal consolidation."),
    "atelectasis": ("atelectasis.", "no atelectasis."),
    "pleural_effusion": ("pleural effusion.", "no pleural effusion."),
}

#: Columns of every split's ``metadata.csv``.
METADATA_COLUMNS: tuple[str, ...] = (
    "file_name",
    "text",
    *FINDINGS,
    *ATTRIBUTES,
    "is_bad_pair",
)

# The generator's identity in every written folder's marker (fixed, not this module's path).
_GENERATOR = "fairvlm_lightning.data.synthetic_cxr"
_WARM_START_STREAM, _WARM_START_SAMPLES, _WARM_START_BATCH = 7, 2000, 64

_POSITIVE: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "the heart is enlarged.",
        "cardiomegaly.",
        "{sev} cardiomegaly.",
        "enlarged cardiac silhouette.",
    ),
    "edema": (
        "{sev} pulmonary edema.",
        "interstitial edema.",
        "vascular congestion with {sev} edema.",
    ),
    "consolidation": (
        "focal consolidation in the {side} {zone} lung.",
        "{side} {zone} consolidation.",
        "airspace consolidation at the {side} {zone} lung.",
    ),
    "atelectasis": (
        "{side} basilar atelectasis.",
        "linear atelectasis at the {side} base.",
        "{sev} {side} lower lobe atelectasis.",
    ),
    "pleural_effusion": (
        "{sev} {side} pleural effusion.",
        "{side} effusion blunting the costophrenic angle.",
        "{sev} {side} pleural effusion with adjacent opacity.",
    ),
}
_NEGATIVE: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("heart size is normal.", "normal cardiac silhouette."),
    "edema": ("no pulmonary edema.", "no edema."),
    "consolidation": ("no focal consolidation.", "no consolidation."),
    "atelectasis": ("no atelectasis.",),
    "pleural_effusion": ("no pleural effusion.", "no effusion."),
}
_OPENERS = ("pa and lateral views.", "portable ap view.", "frontal view of the chest.", "")
_NORMAL = ("no acute cardiopulmonary process.", "lungs are clear.", "no acute findings.")
_VAGUE = (
    "limited study.",
    "lungs grossly unchanged.",
    "stable appearance of the chest.",
    "please correlate clinically.",
)
_SEVERITY = ("mild", "moderate", "large")
_SIDES = ("right", "left", "bilateral")


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def latent_thresholds() -> np.ndarray:
    """Thresholds ``t`` of the latent Gaussians, one per finding (:data:`FINDINGS` order).

    A patient of age group ``a`` has finding ``k`` when ``z_k + AGE_SHIFT[a] > t_k`` with
    ``z ~ N(0, LATENT_CORRELATION)``; ``t_k`` solves
    ``sum_a AGE_P[a] * (1 - Phi(t_k - AGE_SHIFT[a])) = PREVALENCE[k]`` (by bisection), so the
    population prevalence is :data:`PREVALENCE` whatever the age effects.

    Example:
        >>> t = latent_thresholds()
        >>> t.shape, bool(t[FINDINGS.index("consolidation")] > t[FINDINGS.index("edema")])
        ((5,), True)
    """
    out = []
    for name in FINDINGS:
        target = PREVALENCE[name]
        lo, hi = -6.0, 6.0
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            p = sum(w * (1 - _normal_cdf(mid - s)) for w, s in zip(AGE_P, AGE_SHIFT, strict=True))
            lo, hi = (mid, hi) if p > target else (lo, mid)
        out.append(0.5 * (lo + hi))
    return np.array(out)


def _categorical(rng: np.random.Generator, probs: Sequence[float], n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return rng.choice(len(p), size=n, p=p / p.sum()).astype(np.int64)


def _render(p: Mapping[str, np.ndarray], side: int, rng: np.random.Generator) -> np.ndarray:
    """Render a chunk of frontal chest-radiograph-like images (B, side, side) uint8.

    Coordinates run from -1 to 1, ``y`` downwards, the patient's left on the image's right.
    Bright is dense (bone, heart, fluid), dark is air (lungs, outside the body).
    """
    b = len(p["heart_w"])
    axis = (np.arange(side, dtype=np.float32) - (side - 1) / 2) / (side / 2)
    ys, xs = axis[None, :, None], axis[None, None, :]

    def col(name: str) -> np.ndarray:
        return p[name].astype(np.float32)[:, None, None]

    # Body and lungs (two soft ellipses cut by the diaphragm domes).
    body = _sigmoid((1 - (xs / col("body_w")) ** 2 - ((ys - 0.1) / 1.15) ** 2) / 0.08)
    img = 0.06 + 0.40 * body
    lung = np.zeros((b, side, side), dtype=np.float32)
    for sgn in (-1.0, 1.0):
        cx = sgn * col("lung_x")
        r = ((xs - cx) / col("lung_w")) ** 2 + ((ys + 0.05) / 0.62) ** 2
        lung = np.maximum(lung, _sigmoid((1 - r) / 0.08))
    dome = 0.50 + 0.25 * (np.abs(xs) - col("lung_x")) ** 2 - 0.04 * col("inspiration")
    lung = lung * _sigmoid((dome - ys) / 0.03)
    # Ribs: faint bright arcs inside the lungs.
    ribs = np.maximum(0.0, np.sin((ys + 0.35 * xs**2) * 16.0 + col("rib_phase"))) ** 4
    img = img - 0.28 * lung + 0.06 * lung * ribs
    # Spine and mediastinum, then the heart (left of midline on the image's right).
    img = img + 0.22 * _sigmoid((0.10 - np.abs(xs)) / 0.02) * body
    heart = _sigmoid((1 - ((xs - 0.10) / col("heart_w")) ** 2 - ((ys - 0.30) / 0.28) ** 2) / 0.08)
    img = np.maximum(img, (0.40 + 0.18 * heart) * (heart > 0.02))
    texture = rng.standard_normal((b, 8, 8), dtype=np.float32)
    tex = _interp_matrix(side, 8) @ texture @ _interp_matrix(side, 8).T
    lung_free = lung * (1 - heart)

    # Findings (severity 0 means absent).
    edema = col("edema")
    for sgn in (-1.0, 1.0):
        haze = np.exp(-((xs - sgn * 0.22) ** 2) / (2 * 0.16**2) - (ys - 0.05) ** 2 / (2 * 0.3**2))
        img = img + SIGNAL["edema"] * edema * haze * lung_free * (1 + 0.3 * tex)
    for k, sgn in ((0, -1.0), (1, 1.0)):  # image left = patient right
        level = col(f"effusion_{k}")
        lateral = np.clip((sgn * xs - col("lung_x") + col("lung_w")) / (2 * col("lung_w")), 0, 1)
        top = 0.58 - 0.40 * level - 0.30 * level * lateral**2  # meniscus: higher laterally
        fluid = _sigmoid((ys - top) / 0.03) * (level > 0) * (np.sign(xs) == sgn)
        img = img + SIGNAL["pleural_effusion"] * fluid * lung
        atel = col(f"atelectasis_{k}")
        d = (ys - 0.35 - 0.25 * (xs - sgn * col("lung_x")) * sgn) / 0.045
        band = np.exp(-(d**2)) * lung_free * (np.sign(xs) == sgn)
        img = img + SIGNAL["atelectasis"] * atel * band
    cons = col("consolidation")
    blob = np.exp(
        -((xs - col("cons_x")) ** 2 + (ys - col("cons_y")) ** 2) / (2 * col("cons_r") ** 2)
    )
    img = img + SIGNAL["consolidation"] * cons * blob * lung_free * (1 + 0.5 * tex)
    # Soft-tissue (breast) shadow over the lower lateral lung zones.
    for sgn in (-1.0, 1.0):
        shadow = np.exp(-((xs - sgn * 0.5) ** 2) / (2 * 0.22**2) - (ys - 0.45) ** 2 / (2 * 0.2**2))
        img = img + col("breast") * shadow * body

    img = img + 0.03 * tex
    img = col("brightness") + 0.5 + col("contrast") * (img - 0.5)
    img = img + col("noise") * rng.standard_normal((b, side, side), dtype=np.float32)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _phrase(rng: np.random.Generator, name: str, sev: float, side: int, zone: str) -> str:
    template = _POSITIVE[name][rng.integers(len(_POSITIVE[name]))]
    severity = _SEVERITY[min(2, int(sev * 3))]
    return template.format(sev=severity, side=_SIDES[side], zone=zone)


def _reports(
    rng: np.random.Generator,
    labels: np.ndarray,
    severity: np.ndarray,
    sides: np.ndarray,
    zones: Sequence[str],
    p_mention: np.ndarray,
) -> list[str]:
    """Short radiology-like reports: opener, findings stated or negated, a vague filler."""
    n = len(labels)
    out = []
    mentioned = rng.random(labels.shape) < p_mention[:, None]
    vague = (mentioned < labels.astype(bool)).any(axis=1) | (rng.random(n) < 1 - p_mention)
    for i in range(n):
        parts = []
        opener = _OPENERS[rng.integers(len(_OPENERS))]
        if opener:
            parts.append(opener)
        p_neg = NEGATION_P[1] if vague[i] else NEGATION_P[0]
        stated = False
        for k, name in enumerate(FINDINGS):
            if labels[i, k]:
                if mentioned[i, k]:
                    parts.append(_phrase(rng, name, severity[i, k], sides[i, k], zones[i]))
                    stated = True
            elif rng.random() < p_neg:
                parts.append(_NEGATIVE[name][rng.integers(len(_NEGATIVE[name]))])
        if vague[i]:
            parts.append(_VAGUE[rng.integers(len(_VAGUE))])
        elif not labels[i].any() and not stated:
            parts.append(_NORMAL[rng.integers(len(_NORMAL))])
        out.append(" ".join(parts))
    return out


def _sample(rng: np.random.Generator, n: int, side: int) -> dict[str, Any]:
    """Attributes, findings, images and reports of ``n`` patients (no bad pairs)."""
    sex = _categorical(rng, SEX_P, n)
    age = _categorical(rng, AGE_P, n)
    race = _categorical(rng, RACE_P, n)
    chol = np.linalg.cholesky(np.asarray(LATENT_CORRELATION))
    latent = rng.standard_normal((n, len(FINDINGS))) @ chol.T
    latent = latent + np.asarray(AGE_SHIFT)[age][:, None]
    labels = (latent > latent_thresholds()[None, :]).astype(np.int64)
    severity = np.where(labels == 1, rng.uniform(0.35, 1.0, labels.shape), 0.0)
    sides = rng.choice(3, size=labels.shape, p=[0.4, 0.3, 0.3])
    k_eff, k_atel = FINDINGS.index("pleural_effusion"), FINDINGS.index("atelectasis")
    k_cons = FINDINGS.index("consolidation")

    def per_side(k: int, s: int) -> np.ndarray:  # s = 0 right, 1 left; side 2 = bilateral
        return np.where((sides[:, k] == s) | (sides[:, k] == 2), severity[:, k], 0.0)

    cons_side = rng.integers(0, 2, n)  # consolidation is one-sided
    sides[:, k_cons] = cons_side
    lower = rng.random(n) < 0.6
    zones = ["lower" if z else "upper" for z in lower]
    lung_x = rng.uniform(0.40, 0.46, n)
    appearance = np.array([APPEARANCE[int(r)] for r in race])
    params: dict[str, np.ndarray] = {
        "body_w": rng.uniform(0.88, 0.98, n),
        "lung_x": lung_x,
        "lung_w": rng.uniform(0.27, 0.32, n),
        "inspiration": rng.normal(0, 1, n),
        "rib_phase": rng.uniform(0, 2 * np.pi, n),
        "heart_w": np.where(
            labels[:, FINDINGS.index("cardiomegaly")] == 1,
            rng.normal(*HEART_WIDTH[1], n),
            rng.normal(*HEART_WIDTH[0], n),
        ),
        "edema": severity[:, FINDINGS.index("edema")],
        "effusion_0": per_side(k_eff, 0),
        "effusion_1": per_side(k_eff, 1),
        "atelectasis_0": per_side(k_atel, 0),
        "atelectasis_1": per_side(k_atel, 1),
        "consolidation": severity[:, k_cons],
        "cons_x": np.where(cons_side == 0, -1, 1) * lung_x + rng.normal(0, 0.06, n),
        "cons_y": np.where(lower, rng.uniform(0.15, 0.35, n), rng.uniform(-0.45, -0.2, n)),
        "cons_r": rng.uniform(0.09, 0.15, n),
        "breast": np.where(sex == 0, BREAST_SHADOW * rng.uniform(0.7, 1.3, n), 0.0),
        "brightness": appearance[:, 0] + rng.normal(0, EXPOSURE_STD, n),
        "contrast": appearance[:, 1] * rng.uniform(0.9, 1.1, n),
        "noise": appearance[:, 2],
    }
    chunk = max(1, 2_000_000 // (side * side))
    images = np.empty((n, side, side), dtype=np.uint8)
    for s in range(0, n, chunk):
        images[s : s + chunk] = _render({k: v[s : s + chunk] for k, v in params.items()}, side, rng)
    p_mention = np.array([MENTION_P[int(r)] for r in race]) * np.asarray(MENTION_AGE)[age]
    texts = _reports(rng, labels, severity, sides, zones, p_mention)
    return {
        "sex": sex,
        "age_group": age,
        "race": race,
        "labels": labels,
        "images": images,
        "text": texts,
        "is_bad_pair": np.zeros(n, dtype=bool),
    }


def _plant_bad_pairs(rng: np.random.Generator, s: dict[str, Any], rate: float) -> None:
    """Give ``rate * n`` patients the report of a clean patient with other findings."""
    n = len(s["text"])
    n_bad = int(round(rate * n))
    if n_bad == 0:
        return
    w = np.array([BAD_PAIR_RACE_WEIGHT[int(r)] for r in s["race"]])
    bad = rng.choice(n, size=n_bad, replace=False, p=w / w.sum())
    is_bad = np.zeros(n, dtype=bool)
    is_bad[bad] = True
    clean = np.flatnonzero(~is_bad)
    texts = list(s["text"])
    labels = s["labels"]
    for i in np.sort(bad):
        donors = clean[(labels[clean] != labels[i]).any(axis=1)]
        if not len(donors):
            raise ValueError("too few clean training patients with other findings for bad pairs")
        texts[i] = s["text"][int(rng.choice(donors))]
    s["text"], s["is_bad_pair"] = texts, is_bad


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buf, format="PNG", optimize=False
    )
    return buf.getvalue()


def _check_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    full = dict(DEFAULT_SIZES)
    if sizes is not None:
        unknown = sorted(set(sizes) - set(SPLITS))
        if unknown:
            raise ValueError(f"sizes: unknown splits {unknown}; use {list(SPLITS)}")
        full.update({k: int(v) for k, v in sizes.items()})
    bad = {k: v for k, v in full.items() if v < 0}
    if bad:
        raise ValueError(f"sizes must be >= 0, got {bad}")
    return full


def write_synthetic_cxr(
    root: str | os.PathLike[str],
    *,
    seed: int = DEFAULT_SEED,
    sizes: Mapping[str, int] | None = None,
    image_size: int = IMAGE_SIZE,
) -> Path:
    """Write the CXR twin's splits into ``root`` (plain writes; see :func:`ensure_synthetic_cxr`).

    ``root/<split>/`` gets ``00000.png`` ... (greyscale, ``image_size`` square) and
    ``metadata.csv`` with :data:`METADATA_COLUMNS`. Splits are drawn in :data:`SPLITS` order
    from one ``numpy`` generator seeded by ``seed``: same arguments, same bytes. A split of size
    0 is skipped. Bad pairs are planted in ``train`` only.

    Args:
        root: output folder (created); split folders in it must not exist yet.
        seed: seed of the generator.
        sizes: images per split, keys among :data:`SPLITS` (missing keys: :data:`DEFAULT_SIZES`).
        image_size: image side in pixels (>= 16).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: an unknown split, a negative size or an image side below 16.
        FileExistsError: a split folder already exists in ``root``.

    Example:
        >>> import csv, tempfile
        >>> root = write_synthetic_cxr(tempfile.mkdtemp(), seed=1,
        ...                            sizes={"train": 20, "validation": 0, "test": 0})
        >>> rows = list(csv.DictReader(open(root / "train" / "metadata.csv")))
        >>> len(rows), sum(r["is_bad_pair"] == "1" for r in rows)
        (20, 2)
    """
    full = _check_sizes(sizes)
    side = int(image_size)
    if side < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    out = Path(root)
    existing = [s for s in SPLITS if (out / s).exists()]
    if existing:
        raise FileExistsError(f"{out} already holds split folders {existing}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        n = full[split]
        if n == 0:
            continue
        s = _sample(rng, n, side)
        if split == "train":
            _plant_bad_pairs(rng, s, BAD_PAIR_RATE)
        folder = out / split
        folder.mkdir()
        with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(METADATA_COLUMNS)
            for i in range(n):
                name = f"{i:05d}.png"
                (folder / name).write_bytes(_png(s["images"][i]))
                w.writerow(
                    [
                        name,
                        s["text"][i],
                        *(int(v) for v in s["labels"][i]),
                        *(int(s[a][i]) for a in ATTRIBUTES),
                        int(s["is_bad_pair"][i]),
                    ]
                )
    return out


def synthetic_cxr_settings(
    *,
    seed: int = DEFAULT_SEED,
    sizes: Mapping[str, int] | None = None,
    image_size: int = IMAGE_SIZE,
    model_kwargs: Mapping[str, Any] | None = None,
    warm_start_steps: int = 100,
) -> dict[str, Any]:
    """Everything that determines an :func:`ensure_synthetic_cxr` folder, as a JSON-able dict.

    The design constants are included, so a changed constant changes the fingerprint.

    Example:
        >>> a = synthetic_cxr_settings()
        >>> a == synthetic_cxr_settings(sizes=DEFAULT_SIZES), a == synthetic_cxr_settings(seed=1)
        (True, False)
    """
    if int(warm_start_steps) < 0:
        raise ValueError(f"warm_start_steps must be >= 0, got {warm_start_steps}")
    reserved = {"out_dir", "texts", "image_mean", "image_std", "image_size"}
    clash = sorted(set(model_kwargs or {}) & reserved)
    if clash:
        raise TypeError(f"model_kwargs: reserved names {clash}")
    return {
        "generator": _GENERATOR,
        "format": FORMAT_VERSION,
        "seed": int(seed),
        "sizes": _check_sizes(sizes),
        "image_size": int(image_size),
        "model_kwargs": {str(k): v for k, v in sorted(dict(model_kwargs or {}).items())},
        "warm_start_steps": int(warm_start_steps),
        "design": {
            "findings": list(FINDINGS),
            "prevalence": PREVALENCE,
            "latent_correlation": [list(r) for r in LATENT_CORRELATION],
            "age_shift": list(AGE_SHIFT),
            "composition": {"sex": SEX_P, "age_group": AGE_P, "race": RACE_P},
            "appearance": {str(k): list(v) for k, v in APPEARANCE.items()},
            "signal": SIGNAL,
            "heart_width": [list(w) for w in HEART_WIDTH],
            "exposure_std": EXPOSURE_STD,
            "breast_shadow": BREAST_SHADOW,
            "mention_p": {str(k): v for k, v in MENTION_P.items()},
            "mention_age": list(MENTION_AGE),
            "negation_p": list(NEGATION_P),
            "bad_pair_rate": BAD_PAIR_RATE,
            "bad_pair_race_weight": {str(k): v for k, v in BAD_PAIR_RACE_WEIGHT.items()},
            "prompts": {k: list(v) for k, v in FINDING_PROMPTS.items()},
        },
    }


def _fingerprint(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _completed(root: Path) -> dict[str, Any] | None:
    """The marker of a complete folder written by this generator, else ``None``."""
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("generator") != _GENERATOR:
        return None
    files = marker.get("files", {})
    if not all((root / name).is_file() for name in files):
        return None
    return marker


def _warm_start_multilabel(
    model_dir: Path,
    images: np.ndarray,
    texts: Sequence[str],
    labels: np.ndarray,
    steps: int,
    seed: int,
) -> None:
    """Train both towers against one shared multi-label head (BCE), then drop the head.

    The multi-label counterpart of
    :func:`~fairvlm_lightning.app.synthetic.warm_start_dual_encoder`: it puts images and reports
    with the same findings in similar directions, a cheap stand-in for a pretrained checkpoint.
    """
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from fairvlm_lightning.data.transforms import ImageTransform
    from fairvlm_lightning.encoders import DualEncoder

    model = AutoModel.from_pretrained(model_dir)
    encoder = DualEncoder(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    transform = ImageTransform.from_processor(AutoImageProcessor.from_pretrained(model_dir))
    pixels = transform.resize(images)
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    y_all = torch.as_tensor(labels, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = torch.nn.Linear(model.config.projection_dim, labels.shape[1])
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
            model.train()
            order, pos = torch.randperm(len(y_all), generator=gen), 0
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            for _ in range(steps):
                if pos + _WARM_START_BATCH > len(order):
                    order, pos = torch.randperm(len(y_all), generator=gen), 0
                idx = order[pos : pos + _WARM_START_BATCH]
                pos += _WARM_START_BATCH
                img = encoder.encode_image(transform.normalize(pixels[idx]))
                txt = encoder.encode_text(enc["input_ids"][idx], enc["attention_mask"][idx])
                loss = bce(head(img) * 10.0, y_all[idx]) + bce(head(txt) * 10.0, y_all[idx])
                loss.backward()
                opt.step()
                opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(model_dir)


def _train_texts_and_stats(root: Path) -> tuple[list[str], float, float]:
    from PIL import Image

    with open(root / "train" / "metadata.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{root / 'train'}: the tiny model needs a non-empty train split")
    total = total_sq = count = 0.0
    for row in rows:
        with Image.open(root / "train" / row["file_name"]) as im:
            px = np.asarray(im, dtype=np.float64) / 255.0
        total += px.sum()
        total_sq += (px**2).sum()
        count += px.size
    mean = total / count
    std = max(math.sqrt(max(total_sq / count - mean**2, 0.0)), 1e-3)
    return [r["text"] for r in rows], mean, std


def ensure_synthetic_cxr(
    root: str | os.PathLike[str],
    *,
    seed: int = DEFAULT_SEED,
    sizes: Mapping[str, int] | None = None,
    image_size: int = IMAGE_SIZE,
    model: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    warm_start_steps: int = 100,
    lock_timeout: float = 600.0,
) -> Path:
    """Make sure ``root`` holds the CXR twin (and ``root/"tiny_model"``); write it if not.

    The whole folder is written into a temporary sibling and renamed into place
    (:func:`~fairvlm_lightning.atomic.atomic_folder`), with a completion marker holding the
    settings (:func:`synthetic_cxr_settings`) and their fingerprint. A complete folder with the
    same fingerprint is returned as is; one this generator wrote with other settings is
    replaced; any other non-empty folder is refused. A lock serialises concurrent callers.
    With ``model``, a tiny CLIP (:func:`~fairvlm_lightning.app.synthetic.build_tiny_dual_encoder`)
    is built with a tokenizer trained on the training reports and :data:`FINDING_PROMPTS`, pixel
    statistics of the training images, and a multi-label warm start on a separate clean sample from
    its own random stream.

    Args:
        root: the dataset folder (``load_dataset("imagefolder", data_dir=root)`` reads it).
        seed: seed of the data (and of the model unless ``model_kwargs`` sets one).
        sizes: images per split (see :func:`write_synthetic_cxr`).
        image_size: image side; also the tiny model's input side.
        model: also build ``root/"tiny_model"``.
        model_kwargs: more keyword arguments of ``build_tiny_dual_encoder`` (e.g.
            ``hidden_size``).
        warm_start_steps: steps of the multi-label warm start (0: random initialisation).
        lock_timeout: seconds to wait for another process writing ``root``.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` is a non-empty folder this generator did not write.
        ValueError: a bad size, image side or ``warm_start_steps``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp()) / "cxr"
        >>> kw = dict(sizes={"train": 16, "validation": 4, "test": 4}, warm_start_steps=1)
        >>> ensure_synthetic_cxr(root, **kw) == root
        True
        >>> sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        ['test', 'tiny_model', 'train', 'validation']
        >>> mtime = (root / ".complete.json").stat().st_mtime_ns
        >>> _ = ensure_synthetic_cxr(root, **kw)  # complete with these settings: nothing to do
        >>> (root / ".complete.json").stat().st_mtime_ns == mtime
        True
    """
    out = Path(os.path.abspath(root))
    settings = synthetic_cxr_settings(
        seed=seed,
        sizes=sizes,
        image_size=image_size,
        model_kwargs=model_kwargs,
        warm_start_steps=warm_start_steps,
    )
    settings["model"] = bool(model)
    fingerprint = _fingerprint(settings)
    with FileLock(out.parent / f".{out.name}.cxr.lock", what=str(out), timeout=lock_timeout):
        found = _completed(out)
        if found is not None and found.get("fingerprint") == fingerprint:
            return out
        if found is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(
                f"{out} is not empty and was not written by {_GENERATOR}; delete it or choose "
                "another folder"
            )
        info = {"generator": _GENERATOR, "fingerprint": fingerprint, "settings": settings}
        with atomic_folder(out, overwrite=True, info=info, lock_timeout=lock_timeout) as tmp:
            write_synthetic_cxr(tmp, seed=seed, sizes=sizes, image_size=image_size)
            if model:
                texts, mean, std = _train_texts_and_stats(tmp)
                prompts = [p for pair in FINDING_PROMPTS.values() for p in pair]
                kwargs = {"seed": int(seed), **dict(model_kwargs or {})}
                build_tiny_dual_encoder(
                    tmp / "tiny_model",
                    [*texts, *prompts],
                    image_size=int(image_size),
                    image_mean=mean,
                    image_std=std,
                    **kwargs,
                )
                if warm_start_steps:
                    n = min(_WARM_START_SAMPLES, int(warm_start_steps) * _WARM_START_BATCH)
                    corpus = _sample(
                        np.random.default_rng([int(seed), _WARM_START_STREAM]), n, int(image_size)
                    )
                    _warm_start_multilabel(
                        tmp / "tiny_model",
                        corpus["images"],
                        corpus["text"],
                        corpus["labels"],
                        int(warm_start_steps),
                        int(kwargs["seed"]),
                    )
    return out
