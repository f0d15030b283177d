"""A synthetic twin of Harvard-FairVLMed, written in the same on-disk layout, seeded.

What it models (see ``docs/data.md``):

- grayscale, optic-disc-centred fundus-like images: vignetted background, low-frequency
  texture, vessels leaving the disc, a fovea, and a bright cup inside the disc whose vertical
  cup-to-disc ratio (CDR) carries the glaucoma label (class-conditional normals that overlap);
- protected attributes with FairVLMed's imbalance (race 8% Asian / 15% Black / 77% White; some
  unknown ethnicity and language);
- group-dependent appearance (brightness, contrast, noise, cup visibility) and note
  informativeness (how often a note states the diagnosis), so that a plain contrastive fine-tune
  is less accurate on some groups;
- template clinical notes (CDR wording, findings, distractor sentences): a short summary in the
  notes CSV (as the GPT-4 summaries) and a longer note in each npz ``note`` field;
- injected bad pairs in the training split: a note taken from another patient with the other
  diagnosis, at rate ``bad_pair_rate``, with a chosen share of them in chosen groups, recorded as
  ``is_bad_pair`` in every npz.

Everything is drawn from one ``numpy`` generator seeded by ``seed``; images are rendered in
vectorised chunks (2,000 training samples take a few seconds).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairvlm_lightning.app.synthetic.tiny_model import (
    build_tiny_dual_encoder,
    warm_start_dual_encoder,
)
from fairvlm_lightning.schema import (
    ATTRIBUTE_GROUPS,
    ATTRIBUTES,
    BAD_PAIR_FIELD,
    CLASS_PROMPTS,
    IMAGE_FIELD,
    LABEL_FIELD,
    NOTE_FIELD,
    NOTES_FILENAMES,
    SPLIT_FOLDERS,
    SYNTHETIC_MARKER,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_PROMPTS",
    "DEFAULT_SIZES",
    "cache_dir",
    "ensure_synthetic_assets",
    "expand_cache_path",
    "write_synthetic_fairvlmed",
]

#: Samples per split when ``sizes`` is not given (FairVLMed's 7:1:2 split is 7,000/1,000/2,000).
DEFAULT_SIZES: dict[str, int] = {"train": 2000, "val": 500, "test": 1000}
#: Zero-shot class prompts of the paper's code; the tiny tokenizer is trained on them too.
DEFAULT_PROMPTS: tuple[str, ...] = CLASS_PROMPTS

#: Environment variable naming the cache folder of the synthetic data and tiny models.
CACHE_ENV = "FAIRVLM_CACHE"


def cache_dir() -> Path:
    """The user cache folder for synthetic data and tiny models (not the working directory).

    ``$FAIRVLM_CACHE`` when set, else ``$XDG_CACHE_HOME/fairvlm-lightning``, else
    ``~/.cache/fairvlm-lightning``. The shipped configs name it as ``${FAIRVLM_CACHE}``.

    Example:
        >>> import os
        >>> os.environ["FAIRVLM_CACHE"] = "/tmp/fv"
        >>> str(cache_dir())
        '/tmp/fv'
        >>> del os.environ["FAIRVLM_CACHE"]
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fairvlm-lightning"


def expand_cache_path(path: str) -> str:
    """Replace ``${FAIRVLM_CACHE}`` / ``$FAIRVLM_CACHE`` in ``path`` by :func:`cache_dir`.

    Example:
        >>> import os
        >>> os.environ["FAIRVLM_CACHE"] = "/tmp/fv"
        >>> expand_cache_path("${FAIRVLM_CACHE}/synthetic/tiny_model")
        '/tmp/fv/synthetic/tiny_model'
        >>> expand_cache_path("data/FairVLMed")
        'data/FairVLMed'
        >>> del os.environ["FAIRVLM_CACHE"]
    """
    for token in ("${" + CACHE_ENV + "}", "$" + CACHE_ENV):
        if token in path:
            path = path.replace(token, str(cache_dir()))
    return path


_FOLDERS = {split: names[0] for split, names in SPLIT_FOLDERS.items()}
# Written last by ensure_synthetic_assets: its presence means the folder is complete.
_MARKER = SYNTHETIC_MARKER
_STARTED = ".fairvlm_synthetic.incomplete"  # written first: a crashed write is redone
_LOCK = ".fairvlm_synthetic.lock"
_FORMAT_VERSION = 2  # bump when the generated data or model change

# Group composition (value -> probability). Race and gender follow FairVLMed; the minority
# ethnicity and language groups are enlarged a little so that a 1,000-sample test split still has
# both classes in every group.
_RACE_P = {0: 0.08, 1: 0.15, 2: 0.77}
_GENDER_P = {0: 0.56, 1: 0.44}
_ETHNICITY_P = {0: 0.88, 1: 0.07, -1: 0.05}
_LANGUAGE_P = {0: 0.85, 1: 0.05, 2: 0.05, -1: 0.05}
_SPANISH_IF_HISPANIC = 0.5  # P(language = Spanish | Hispanic): the two attributes correlate
_GLAUCOMA_P = {0: 0.50, 1: 0.60, 2: 0.47}  # P(glaucoma | race)
_CDR_MEAN = (0.45, 0.68)  # vertical cup-to-disc ratio given (non-glaucoma, glaucoma)
_CDR_STD = 0.10
# Appearance by race: (brightness offset, contrast, noise std, cup visibility) on a [0, 1]
# intensity scale; visibility scales the cup's brightness over the rim (a paler, less distinct cup
# is harder to measure: a pixel-level logistic regression reaches AUC ~0.86 on White and ~0.70
# on Asian and Black patients, see tests/app/synthetic/test_data_synthetic.py).
_APPEARANCE = {
    0: (-0.03, 0.70, 0.13, 0.30),
    1: (-0.10, 0.55, 0.17, 0.20),
    2: (0.0, 1.0, 0.05, 1.0),
}
# Probability that the note states the diagnosis, by race, times a factor by language.
_INFORMATIVE = {0: 0.65, 1: 0.60, 2: 0.85}
_INFORMATIVE_LANGUAGE = {0: 1.0, 1: 0.7, 2: 0.7, -1: 0.85}
_DEFAULT_BAD_GROUPS: dict[str, tuple[int, ...]] = {"race": (0, 1)}
# Warm start of the tiny model: a separate, clean corpus drawn from its own random stream.
_WARM_START_STREAM, _WARM_START_SAMPLES, _WARM_START_BATCH = 7, 2000, 64
# Optic disc geometry (units: half the shorter image side) and brightness of disc and cup.
_DISC_X, _DISC_JITTER, _DISC_R = 0.1, 0.08, (0.55, 0.65)
_DISC_GAIN, _CUP_GAIN = 0.25, 0.5

_CDR_TEMPLATES = (
    "cup-to-disc ratio {c:.2f} {eye}.",
    "c/d ratio of {c:.1f} in the {side} eye.",
    "vertical cup to disc ratio measured at {c:.2f}.",
)
_FINDINGS = (
    (  # non-glaucoma
        "assessment: non-glaucoma.",
        "healthy optic nerve, non-glaucoma.",
        "no glaucoma, normal rim.",
        "findings non-glaucoma, routine follow-up.",
        "fundus image: a photo of non-glaucoma.",
    ),
    (  # glaucoma
        "assessment: glaucoma.",
        "findings consistent with primary open-angle glaucoma.",
        "glaucomatous optic neuropathy with rim thinning.",
        "diagnosis of glaucoma, continue drops.",
        "fundus image: a photo of glaucoma.",
    ),
)
_VAGUE = (
    "optic nerve appearance reviewed.",
    "exam limited, see imaging.",
    "stable appearance compared with prior.",
)
_DISTRACTORS = (
    "intraocular pressure {iop} mmhg.",
    "visual acuity 20/{va}.",
    "mild dry eye, artificial tears as needed.",
    "cataract grade {k}.",
    "blood pressure well controlled.",
    "follow up in {m} months.",
    "refraction updated.",
    "history of type 2 diabetes without retinopathy.",
    "patient reports occasional floaters.",
)
_REASONS = ("routine eye exam", "optic nerve evaluation", "follow-up visit", "blurred vision")
_PLANS = ("return in 6 months", "repeat imaging next visit", "continue current care")


def _categorical(rng: np.random.Generator, probs: Mapping[int, float], n: int) -> np.ndarray:
    values = np.array(list(probs), dtype=np.int64)
    p = np.array(list(probs.values()), dtype=np.float64)
    return values[rng.choice(len(values), size=n, p=p / p.sum())]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear-interpolation matrix (n_out, n_in) for smooth upsampling of a coarse grid."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.floor(pos).astype(int).clip(0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _render(
    p: Mapping[str, np.ndarray], shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Render a chunk of fundus-like images (B, H, W) uint8 from per-image parameters."""
    h, w = shape
    b = len(p["cdr"])
    scale = min(h, w) / 2
    ys = ((np.arange(h, dtype=np.float32) - (h - 1) / 2) / scale)[None, :, None]
    xs = ((np.arange(w, dtype=np.float32) - (w - 1) / 2) / scale)[None, None, :]

    def col(name: str) -> np.ndarray:
        return p[name].astype(np.float32)[:, None, None]

    # Background: vignette + low-frequency texture + a dark fovea.
    img = 0.32 + 0.22 * np.exp(-(xs**2 + ys**2) / (2 * 0.65**2))
    coarse = rng.standard_normal((b, 6, 6), dtype=np.float32)
    img = img + 0.04 * (_interp_matrix(h, 6) @ coarse @ _interp_matrix(w, 6).T)
    fx, fy = col("disc_x") * -1.1, col("disc_y") * 0.5
    img = img - 0.10 * np.exp(-((xs - fx) ** 2 + (ys - fy) ** 2) / (2 * 0.12**2))

    dx, dy = xs - col("disc_x"), ys - col("disc_y")
    rho = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    rd = col("disc_r")
    # Vessels: curved dark streaks leaving the disc (a Gaussian profile across each streak).
    fade = (-0.16 * np.exp(-rho / 1.3)) * (rho > 0.6 * rd)
    vessels = np.zeros_like(rho)
    for k in range(p["vessel_angle"].shape[1]):
        ang = p["vessel_angle"][:, k].astype(np.float32)[:, None, None] - np.float32(np.pi)
        curv = p["vessel_curve"][:, k].astype(np.float32)[:, None, None]
        d = (np.mod(theta - ang - curv * rho, np.float32(2 * np.pi)) - np.float32(np.pi)) * rho
        vessels = np.maximum(vessels, np.exp(-np.square(d * np.float32(1 / 0.03))))
    img = img + fade * vessels
    # Optic disc, then the cup (an ellipse: vertical radius cdr * disc radius).
    img = img + _DISC_GAIN * _sigmoid((rd - rho) / 0.015)
    cup_v = col("cdr") * rd
    cup_h = cup_v * col("cup_aspect")
    cup_rho = np.sqrt((dx / cup_h) ** 2 + (dy / cup_v) ** 2)
    img = img + col("cup_gain") * _sigmoid((1 - cup_rho) / 0.06)

    # Group-dependent appearance.
    img = col("brightness") + 0.5 + col("contrast") * (img - 0.5)
    img = img + col("noise") * rng.standard_normal((b, h, w), dtype=np.float32)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _notes(
    rng: np.random.Generator,
    label: np.ndarray,
    cdr: np.ndarray,
    informative: np.ndarray,
    gender: np.ndarray,
    right_eye: np.ndarray,
) -> tuple[list[str], list[str]]:
    """Template notes: (summary for the CSV, longer note for the npz ``note`` field)."""
    n = len(label)
    age = rng.integers(35, 90, n)
    iop = np.rint(np.where(label == 1, rng.normal(20.0, 4.0, n), rng.normal(15.5, 3.0, n)))
    cdr_t = rng.integers(0, len(_CDR_TEMPLATES), n)
    find_t = rng.integers(0, len(_FINDINGS[0]), n)
    vague_t = rng.integers(0, len(_VAGUE), n)
    with_cdr = informative | (rng.random(n) < 0.4)  # vague notes quote the CDR less often
    dis = np.argsort(rng.random((n, len(_DISTRACTORS))), axis=1)[:, :4]  # 4 distinct distractors
    va = rng.choice([20, 25, 30, 40, 50], n)
    k = rng.integers(1, 4, n)
    months = rng.choice([3, 6, 12], n)
    reason = rng.integers(0, len(_REASONS), n)
    plan = rng.integers(0, len(_PLANS), n)
    summaries, long_notes = [], []
    for i in range(n):
        eye, side = ("od", "right") if right_eye[i] else ("os", "left")
        parts = []
        if with_cdr[i]:
            parts.append(_CDR_TEMPLATES[cdr_t[i]].format(c=cdr[i], eye=eye, side=side))
        if informative[i]:
            parts.append(_FINDINGS[label[i]][find_t[i]])
        else:
            parts.append(_VAGUE[vague_t[i]])
        extra = [
            _DISTRACTORS[j].format(iop=int(iop[i]), va=va[i], k=k[i], m=months[i]) for j in dis[i]
        ]
        summary = " ".join([*parts, extra[0]])
        sex = "female" if gender[i] == 0 else "male"
        opener = f"{age[i]}-year-old {sex} seen for {_REASONS[reason[i]]}."
        long_note = " ".join([opener, *parts, *extra, f"plan: {_PLANS[plan[i]]}."])
        summaries.append(summary)
        long_notes.append(long_note)
    return summaries, long_notes


def _lerp_groups(
    values: np.ndarray, table: Mapping[int, Any], ref: Any, effect: float
) -> np.ndarray:
    """Per-sample value of ``table[group]`` moved towards ``ref`` as ``effect`` goes to 0."""
    out = np.array([table[int(v)] for v in values], dtype=np.float64)
    return np.asarray(ref, dtype=np.float64) + effect * (out - np.asarray(ref, dtype=np.float64))


def _sample_split(
    rng: np.random.Generator, n: int, image_shape: tuple[int, int], group_effect: float
) -> dict[str, Any]:
    race = _categorical(rng, _RACE_P, n)
    gender = _categorical(rng, _GENDER_P, n)
    ethnicity = _categorical(rng, _ETHNICITY_P, n)
    language = _categorical(rng, _LANGUAGE_P, n)
    spanish = (ethnicity == 1) & (rng.random(n) < _SPANISH_IF_HISPANIC)
    language = np.where(spanish, 1, language)
    label = (rng.random(n) < np.array([_GLAUCOMA_P[int(r)] for r in race])).astype(np.int64)
    cdr = np.clip(rng.normal(np.take(_CDR_MEAN, label), _CDR_STD), 0.15, 0.92).astype(np.float32)
    right_eye = rng.random(n) < 0.5
    appearance = _lerp_groups(race, _APPEARANCE, _APPEARANCE[2], group_effect)
    p_inf = _lerp_groups(race, _INFORMATIVE, _INFORMATIVE[2], group_effect) * _lerp_groups(
        language, _INFORMATIVE_LANGUAGE, 1.0, group_effect
    )
    informative = rng.random(n) < p_inf
    params: dict[str, np.ndarray] = {
        "cdr": cdr,
        "disc_x": np.where(right_eye, _DISC_X, -_DISC_X) + rng.normal(0, _DISC_JITTER, n),
        "disc_y": rng.normal(0, _DISC_JITTER, n),
        "disc_r": rng.uniform(*_DISC_R, n),
        "cup_aspect": rng.uniform(0.85, 1.0, n),
        "vessel_angle": rng.uniform(-np.pi, np.pi, (n, 5)),
        "vessel_curve": rng.normal(0, 0.8, (n, 5)),
        "brightness": appearance[:, 0] + rng.normal(0, 0.03, n),
        "contrast": appearance[:, 1] * rng.uniform(0.85, 1.15, n),
        "noise": appearance[:, 2],
        "cup_gain": _CUP_GAIN * appearance[:, 3],
    }
    chunk = max(1, 2_000_000 // (image_shape[0] * image_shape[1]))
    images = np.empty((n, *image_shape), dtype=np.uint8)
    for s in range(0, n, chunk):
        images[s : s + chunk] = _render(
            {k: v[s : s + chunk] for k, v in params.items()}, image_shape, rng
        )
    summaries, long_notes = _notes(rng, label, cdr, informative, gender, right_eye)
    return {
        "race": race,
        "gender": gender,
        "ethnicity": ethnicity,
        "language": language,
        "label": label,
        "cdr": cdr,
        "informative": informative,
        "images": images,
        "summary": summaries,
        "note": long_notes,
        "is_bad_pair": np.zeros(n, dtype=bool),
    }


def _inject_bad_pairs(
    rng: np.random.Generator,
    s: dict[str, Any],
    rate: float,
    groups: Mapping[str, Sequence[int]],
    concentration: float | None,
) -> None:
    """Swap the notes of ``rate * n`` samples for notes of clean samples with the other label."""
    n = len(s["label"])
    n_bad = int(round(rate * n))
    if n_bad == 0:
        return
    in_group = np.zeros(n, dtype=bool)
    for attr, values in groups.items():
        in_group |= np.isin(s[attr], np.asarray(list(values), dtype=np.int64))
    if concentration is None or not groups:
        bad = rng.choice(n, size=n_bad, replace=False)
    else:
        idx_in, idx_out = np.flatnonzero(in_group), np.flatnonzero(~in_group)
        n_in = min(int(round(concentration * n_bad)), len(idx_in))
        n_in = max(n_in, n_bad - len(idx_out))
        bad = np.concatenate(
            [
                rng.choice(idx_in, size=n_in, replace=False),
                rng.choice(idx_out, size=n_bad - n_in, replace=False),
            ]
        )
    is_bad = np.zeros(n, dtype=bool)
    is_bad[bad] = True
    summaries, notes = list(s["summary"]), list(s["note"])
    informative = s["informative"].copy()
    for y in (0, 1):
        takers = np.flatnonzero(is_bad & (s["label"] == y))
        donors = np.flatnonzero(~is_bad & (s["label"] != y))
        if len(takers) and not len(donors):
            raise ValueError("bad_pair_rate too high: no clean sample with the other label")
        for i, j in zip(takers, rng.choice(donors, size=len(takers)), strict=True):
            summaries[i], notes[i] = s["summary"][j], s["note"][j]
            informative[i] = s["informative"][j]
    s["summary"], s["note"], s["is_bad_pair"] = summaries, notes, is_bad
    s["informative"] = informative


def write_synthetic_fairvlmed(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    sizes: Mapping[str, int] | None = None,
    bad_pair_rate: float = 0.1,
    bad_pair_groups: Mapping[str, Sequence[int]] | None = None,
    bad_pair_concentration: float | None = 0.5,
    image_shape: Sequence[int] = (128, 128),
    group_effect: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Write a seeded synthetic FairVLMed twin under ``root`` in the real dataset's layout.

    ``root/Training``, ``root/Validation``, ``root/Test`` get ``data_xxxxx.npz`` files (numbered
    across splits) with the real fields and dtypes — ``slo_fundus`` uint8 (H, W); ``glaucoma``,
    ``race``, ``gender``, ``ethnicity``, ``language`` 0-d int64; ``note`` 0-d ``<U`` string — plus
    ``is_bad_pair`` (0-d bool), ``cdr`` (0-d float32) and ``age``. ``root`` also gets
    ``gpt-4_summarized_notes.csv`` (file name, long note, summary) and ``data_summary.csv``
    (per-file ground truth: split, label, attributes, CDR, whether the note is informative, bad
    pair). Read it back with :func:`~fairvlm_lightning.data.load_fairvlmed`.

    Args:
        root: output folder (created).
        seed: seed of the single ``numpy`` generator; same seed, same data.
        sizes: samples per split, keys among ``train``, ``val``, ``test`` (missing keys take
            :data:`DEFAULT_SIZES`; a size of 0 skips the split).
        bad_pair_rate: fraction of *training* pairs whose note is replaced by the note of another
            training patient with the other diagnosis; in ``[0, 0.5]``.
        bad_pair_groups: groups where bad pairs are concentrated, as ``{attribute: [group ids]}``;
            ``None`` means ``{"race": (0, 1)}`` (Asian and Black patients, 23% of the data), ``{}``
            spreads them uniformly.
        bad_pair_concentration: share of the bad pairs drawn from ``bad_pair_groups`` (0.5 by
            default, i.e. about twice their share of the data); ``None`` spreads them uniformly.
        image_shape: (H, W) of the images (the real ones are 664 x 512).
        group_effect: strength of the group-dependent appearance and note informativeness; 1 is
            the default design, 0 makes every group look and read like the majority.
        overwrite: replace ``.npz`` files already in the split folders; otherwise a split folder
            that holds ``.npz`` files is an error.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a size, rate, concentration, group or shape out of range.
        FileExistsError: a split folder already holds ``.npz`` files and ``overwrite`` is false.

    Example:
        >>> import tempfile
        >>> root = write_synthetic_fairvlmed(tempfile.mkdtemp(), sizes={"train": 20, "val": 4,
        ...     "test": 4}, image_shape=(32, 32), bad_pair_rate=0.25)
        >>> sorted(p.name for p in root.iterdir())  # doctest: +NORMALIZE_WHITESPACE
        ['Test', 'Training', 'Validation', 'data_summary.csv', 'gpt-4_summarized_notes.csv']
        >>> z = np.load(root / "Training" / "data_00001.npz")
        >>> z["slo_fundus"].dtype, z["slo_fundus"].shape, z["race"].dtype, z["note"].dtype.kind
        (dtype('uint8'), (32, 32), dtype('int64'), 'U')
        >>> sum(bool(np.load(p)["is_bad_pair"]) for p in (root / "Training").glob("*.npz"))
        5
    """
    root = Path(root)
    sizes_full = dict(DEFAULT_SIZES)
    if sizes is not None:
        unknown = set(sizes) - set(DEFAULT_SIZES)
        if unknown:
            raise ValueError(f"sizes has unknown splits {sorted(unknown)}; use train, val, test")
        sizes_full.update({k: int(v) for k, v in sizes.items()})
    if any(v < 0 for v in sizes_full.values()):
        raise ValueError(f"sizes must be >= 0, got {sizes_full}")
    if not 0.0 <= bad_pair_rate <= 0.5:
        raise ValueError(f"bad_pair_rate must be in [0, 0.5], got {bad_pair_rate}")
    if bad_pair_concentration is not None and not 0.0 <= bad_pair_concentration <= 1.0:
        raise ValueError(f"bad_pair_concentration must be in [0, 1], got {bad_pair_concentration}")
    groups = dict(_DEFAULT_BAD_GROUPS if bad_pair_groups is None else bad_pair_groups)
    for attr, values in groups.items():
        if attr not in ATTRIBUTE_GROUPS:
            raise ValueError(
                f"bad_pair_groups: unknown attribute {attr!r}; known {list(ATTRIBUTE_GROUPS)}"
            )
        bad = [v for v in values if not -1 <= int(v) < ATTRIBUTE_GROUPS[attr]]
        if bad:
            raise ValueError(f"bad_pair_groups[{attr!r}]: group ids {bad} out of range")
    shape = tuple(int(v) for v in image_shape)
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"image_shape must be (H, W) with H, W >= 16, got {tuple(image_shape)}")
    if not 0.0 <= group_effect <= 1.0:
        raise ValueError(f"group_effect must be in [0, 1], got {group_effect}")

    for folder in _FOLDERS.values():
        d = root / folder
        if d.is_dir() and any(d.glob("*.npz")):
            if not overwrite:
                raise FileExistsError(f"{d} already holds .npz files; pass overwrite=True")
            for p in d.glob("*.npz"):
                p.unlink()
    rng = np.random.default_rng(seed)
    csv_rows: list[list[Any]] = []
    summary_rows: list[list[Any]] = []
    number = 0
    for split, folder in _FOLDERS.items():
        n = sizes_full[split]
        if n == 0:
            continue
        s = _sample_split(rng, n, shape, group_effect)
        if split == "train":
            _inject_bad_pairs(rng, s, bad_pair_rate, groups, bad_pair_concentration)
        age = rng.integers(35, 90, n).astype(np.float64)
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            number += 1
            name = f"data_{number:05d}.npz"
            fields: dict[str, Any] = {
                IMAGE_FIELD: s["images"][i],
                LABEL_FIELD: np.array(s["label"][i], dtype=np.int64),
                **{a: np.array(s[a][i], dtype=np.int64) for a in ATTRIBUTES},
                NOTE_FIELD: np.array(s["note"][i]),
                BAD_PAIR_FIELD: np.array(s["is_bad_pair"][i], dtype=bool),
                "cdr": np.array(s["cdr"][i], dtype=np.float32),
                "age": np.array(age[i]),
            }
            np.savez(d / name, **fields)
            csv_rows.append([name, s["note"][i], s["summary"][i]])
            summary_rows.append(
                [
                    name,
                    folder,
                    int(s["label"][i]),
                    *(int(s[a][i]) for a in ATTRIBUTES),
                    f"{float(s['cdr'][i]):.4f}",
                    int(s["informative"][i]),
                    int(s["is_bad_pair"][i]),
                ]
            )
    with open(root / NOTES_FILENAMES[0], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "note", "gpt4_summary"])
        w.writerows(csv_rows)
    with open(root / "data_summary.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "filename",
                "split",
                LABEL_FIELD,
                *ATTRIBUTES,
                "cdr",
                "informative_note",
                BAD_PAIR_FIELD,
            ]
        )
        w.writerows(summary_rows)
    return root


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _settings(
    seed: int,
    synthetic_kwargs: Mapping[str, Any],
    model_kwargs: Mapping[str, Any],
    warm_start_steps: int,
) -> dict[str, Any]:
    """Normalised, JSON-comparable settings; unknown keyword names raise TypeError here."""
    data_sig = inspect.signature(write_synthetic_fairvlmed)
    bound = data_sig.bind_partial(seed=seed, **synthetic_kwargs)  # TypeError on unknown names
    if "overwrite" in bound.arguments:
        raise TypeError("ensure_synthetic_assets manages overwriting itself; drop 'overwrite'")
    data = {
        k: bound.arguments.get(k, p.default)
        for k, p in data_sig.parameters.items()
        if k not in ("root", "overwrite")
    }
    # Spell defaults out, so that equivalent requests compare equal.
    data["sizes"] = {**DEFAULT_SIZES, **{k: int(v) for k, v in (data["sizes"] or {}).items()}}
    if data["bad_pair_groups"] is None:
        data["bad_pair_groups"] = _DEFAULT_BAD_GROUPS
    model_sig = inspect.signature(build_tiny_dual_encoder)
    reserved = {"out_dir", "texts", "image_mean", "image_std"}
    bad = sorted((set(model_kwargs) - set(model_sig.parameters)) | (set(model_kwargs) & reserved))
    if bad:
        raise TypeError(f"model_kwargs: unexpected or reserved names {bad}")
    model_bound = model_sig.bind_partial(**model_kwargs)
    model = {
        k: model_bound.arguments.get(k, data["seed"] if k == "seed" else p.default)
        for k, p in model_sig.parameters.items()
        if k not in reserved
    }
    if model.get("preset") is None:  # keeps folders written before presets existed valid
        model.pop("preset", None)
    if int(warm_start_steps) < 0:
        raise ValueError(f"warm_start_steps must be >= 0, got {warm_start_steps}")
    return {
        "format": _FORMAT_VERSION,
        "data": _jsonable(data),
        "model": _jsonable(model),
        "warm_start_steps": int(warm_start_steps),
    }


def _train_texts_and_stats(root: Path) -> tuple[list[str], float, float]:
    """Training notes (CSV summaries and long notes) and the mean/std of training pixels."""
    texts: list[str] = []
    total = total_sq = count = 0.0
    train = root / _FOLDERS["train"]
    names = set()
    for path in sorted(train.glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            img = z[IMAGE_FIELD].astype(np.float64) / 255.0
            texts.append(str(z[NOTE_FIELD]))
        total += img.sum()
        total_sq += (img**2).sum()
        count += img.size
        names.add(path.name)
    with open(root / NOTES_FILENAMES[0], encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        texts.extend(row[2] for row in reader if row[0] in names)
    if count == 0:
        raise ValueError(f"no training images under {train}: the tiny model needs a train split")
    mean = total / count
    std = max(float(np.sqrt(max(total_sq / count - mean**2, 0.0))), 1e-3)
    return texts, float(mean), std


def ensure_synthetic_assets(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
    warm_start_steps: int = 100,
    **synthetic_kwargs: Any,
) -> Path:
    """Make sure ``root`` holds the synthetic dataset and ``root/"tiny_model"``; write them if not.

    Idempotent and safe to call from several processes: a file lock serialises writers, the data
    go in first behind an "incomplete" marker, and a completion marker (holding the settings) is
    written last. A folder whose completion marker exists is returned as is; an interrupted write
    is wiped and redone, and so (with a warning) is a folder written by an older version of this
    generator. The tiny model's tokenizer is trained on the training notes (and the
    default zero-shot prompts), its image processor normalises with the training pixels'
    mean/std, and it is warm-started
    (:func:`~fairvlm_lightning.app.synthetic.warm_start_dual_encoder`) on a separate clean corpus
    from the same generator (its own random stream, no bad pairs, not the dataset's splits), so that
    it starts from meaningful features as a Hub checkpoint would.

    Args:
        root: target folder (created).
        seed: seed of the data (and, unless ``model_kwargs`` sets one, of the model).
        model_kwargs: keyword arguments of
            :func:`~fairvlm_lightning.app.synthetic.build_tiny_dual_encoder` (e.g. ``hidden_size``).
        warm_start_steps: steps of the warm start (0: keep the random initialisation).
        **synthetic_kwargs: keyword arguments of :func:`write_synthetic_fairvlmed` (``sizes``,
            ``bad_pair_rate``, ...).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: ``root`` was completed with other settings (delete it or pick another
            folder), or it holds files that this function did not write.

    Example:
        >>> import tempfile
        >>> from transformers import AutoModel, AutoTokenizer
        >>> kwargs = dict(sizes={"train": 24, "val": 8, "test": 8}, image_shape=(32, 32),
        ...               warm_start_steps=2)
        >>> root = ensure_synthetic_assets(tempfile.mkdtemp(), **kwargs)
        >>> ensure_synthetic_assets(root, **kwargs) == root  # second call: nothing to do
        True
        >>> type(AutoModel.from_pretrained(root / "tiny_model")).__name__
        'CLIPModel'
    """
    from filelock import FileLock

    root = Path(root)
    settings = _settings(seed, synthetic_kwargs, model_kwargs or {}, warm_start_steps)
    root.mkdir(parents=True, exist_ok=True)
    marker, started = root / _MARKER, root / _STARTED
    with FileLock(str(root / _LOCK)):
        if marker.is_file():
            found = json.loads(marker.read_text(encoding="utf-8")).get("settings", {})
            if found == settings:
                return root
            if found.get("format") == _FORMAT_VERSION:
                raise ValueError(
                    f"{root} holds synthetic assets made with other settings ({found}) than "
                    f"requested ({settings}); delete the folder or choose another root"
                )
            # Written by an older version of this generator: ours to replace.
            warnings.warn(
                f"{root}: synthetic assets of format {found.get('format')} are outdated "
                f"(current {_FORMAT_VERSION}); writing them again",
                UserWarning,
                stacklevel=2,
            )
            started.write_text("incomplete\n", encoding="utf-8")
            marker.unlink()
        ours = {
            *_FOLDERS.values(),
            "tiny_model",
            "data_summary.csv",
            NOTES_FILENAMES[0],
            ".cache",
            _LOCK,
            _STARTED,
            _MARKER + ".tmp",
        }
        foreign = sorted(p.name for p in root.iterdir() if p.name not in ours)
        has_splits = any((root / f).exists() for f in _FOLDERS.values())
        if foreign or (has_splits and not started.exists()):
            raise ValueError(
                f"refusing to write synthetic data into {root}: it holds files this function did "
                f"not write ({foreign or 'split folders without a synthetic marker'})"
            )
        started.write_text("incomplete\n", encoding="utf-8")
        for name in ours - {_LOCK, _STARTED}:
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        write_synthetic_fairvlmed(root, seed=seed, overwrite=True, **synthetic_kwargs)
        texts, mean, std = _train_texts_and_stats(root)
        build_tiny_dual_encoder(
            root / "tiny_model",
            [*texts, *DEFAULT_PROMPTS],
            image_mean=mean,
            image_std=std,
            **settings["model"],
        )
        steps = settings["warm_start_steps"]
        if steps:
            data = settings["data"]
            corpus = _sample_split(
                np.random.default_rng([seed, _WARM_START_STREAM]),
                min(_WARM_START_SAMPLES, steps * _WARM_START_BATCH),
                tuple(data["image_shape"]),
                float(data["group_effect"]),
            )
            warm_start_dual_encoder(
                root / "tiny_model",
                corpus["images"],
                corpus["summary"],
                corpus["label"],
                steps=steps,
                batch_size=_WARM_START_BATCH,
                seed=settings["model"]["seed"],
            )
        tmp = root / (_MARKER + ".tmp")
        tmp.write_text(
            json.dumps({"settings": settings}, indent=1, sort_keys=True), encoding="utf-8"
        )
        os.replace(tmp, marker)
        started.unlink()
    return root
