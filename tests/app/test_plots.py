"""The benchmark figures are readable: checked on their geometry, from matplotlib's renderer.

Labels are measured as drawn (``get_window_extent``), the Pareto front is recomputed here by
brute force, histogram heights are recounted with NumPy, PNG sizes are read back with Pillow, and
the group names of the benchmark tables are compared with those the ``fairvlm`` CLI prints.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from fairvlm_lightning.app import plots  # noqa: E402
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS  # noqa: E402

MAX_WIDTH_PX = 1000  # a docs page column shows a figure this wide without shrinking it

# Crowded like the real benchmark page: 17 variants within 0.03 AUC / 0.04 ES-AUC.
CROWDED = [
    ("synthetic_clip", "synthetic_clip", 0.853, 0.767),
    ("synthetic_clip_balanced", "synthetic_clip_balanced", 0.829, 0.753),
    ("synthetic_fairclip", "synthetic_fairclip", 0.858, 0.783),
    ("synthetic_dbpm", "synthetic_dbpm", 0.858, 0.777),
    ("synthetic_robust_fair", "synthetic_robust_fair", 0.862, 0.784),
    ("synthetic_fairclip_lambda0.01", "synthetic_fairclip", 0.859, 0.782),
    ("synthetic_fairclip_lambda0.3", "synthetic_fairclip", 0.857, 0.768),
    ("synthetic_fairclip_lambda1", "synthetic_fairclip", 0.849, 0.761),
    ("synthetic_dbpm_beta1", "synthetic_dbpm", 0.869, 0.792),
    ("synthetic_dbpm_beta1.5", "synthetic_dbpm", 0.870, 0.798),
    ("synthetic_dbpm_beta2", "synthetic_dbpm", 0.864, 0.785),
    ("synthetic_robust_fair_lambda0.01", "synthetic_robust_fair", 0.858, 0.778),
    ("synthetic_robust_fair_lambda0.3", "synthetic_robust_fair", 0.857, 0.767),
    ("synthetic_robust_fair_lambda1", "synthetic_robust_fair", 0.847, 0.760),
    ("synthetic_robust_fair_beta1", "synthetic_robust_fair", 0.857, 0.774),
    ("synthetic_robust_fair_beta1.5", "synthetic_robust_fair", 0.864, 0.784),
    ("synthetic_robust_fair_beta2", "synthetic_robust_fair", 0.861, 0.781),
]


def crowded_points() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"name": n, "group": g, "auc": a, "es_auc": e, "auc_std": float(rng.uniform(0.005, 0.016)),
         "es_auc_std": float(rng.uniform(0.01, 0.025))}
        for n, g, a, e in CROWDED
    ]


def front_by_brute_force(xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return sorted(
        p for p in xy if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in xy)
    )


def line_vertices_px(ax, line) -> np.ndarray:
    return ax.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------------------
# Pareto plot
# ------------------------------------------------------------------------------------------------
def test_pareto_labels_do_not_overlap_each_other_or_other_points() -> None:
    points = crowded_points()
    fig = plots.pareto_figure(points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    texts = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in texts) == sorted(n.removeprefix("synthetic_")
                                                         for n, *_ in CROWDED)
    # the text itself (an Annotation's own extent includes its leader line)
    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in texts}
    frame = ax.get_window_extent(renderer)
    names = list(boxes)
    for i, a in enumerate(names):
        box = boxes[a]
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, a
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1, a
        for b in names[i + 1 :]:
            assert not box.overlaps(boxes[b]), (a, b)
    for text in texts:  # a leader line crosses no other label
        arrow = getattr(text, "arrow_patch", None)
        if arrow is None:
            continue
        path = arrow.get_transform().transform_path(arrow.get_path())
        ends = path.vertices[[0, -1]]
        samples = ends[0] + np.linspace(0, 1, 50)[:, None] * (ends[1] - ends[0])
        for other, box in boxes.items():
            if other != text.get_text():
                inside = [box.contains(x, y) for x, y in samples]
                assert not any(inside), (text.get_text(), other)
    centres = ax.transData.transform([(p["auc"], p["es_auc"]) for p in points])
    for text in texts:
        box = boxes[text.get_text()]
        for (cx, cy), p in zip(centres, points, strict=True):
            covered = box.x0 <= cx <= box.x1 and box.y0 <= cy <= box.y1
            assert not covered, (text.get_text(), p["name"])


def test_pareto_front_is_drawn_and_in_the_legend() -> None:
    points = crowded_points()
    fig = plots.pareto_figure(points)
    fig.canvas.draw()
    (ax,) = fig.axes
    front = front_by_brute_force([(p["auc"], p["es_auc"]) for p in points])
    assert front == [(0.870, 0.798)]  # one point dominates all: the front is that point
    front_px = ax.transData.transform(front)
    lines = [ln for ln in ax.get_lines() if ln.get_visible() and len(ln.get_xdata()) >= 3]
    assert lines, "no front line"
    staircase = max(lines, key=lambda ln: np.ptp(line_vertices_px(ax, ln), axis=0).sum())
    vertices = line_vertices_px(ax, staircase)
    for fx, fy in front_px:
        assert np.min(np.hypot(*(vertices - (fx, fy)).T)) < 0.5
    extent = np.ptp(vertices, axis=0)
    assert extent[0] > 50 and extent[1] > 50  # reaches the axes' edges, not a dot
    assert staircase.get_zorder() > max(c.get_zorder() for c in ax.collections)  # over errorbars
    legend = fig.legends[0]
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert "Pareto front" in labels
    assert {"clip", "clip_balanced", "fairclip", "dbpm", "robust_fair"} <= set(labels)


def test_pareto_front_with_several_points_joins_all_of_them() -> None:
    pts = [{"name": n, "auc": a, "es_auc": e} for n, a, e in
           [("a", 0.80, 0.80), ("b", 0.85, 0.75), ("c", 0.90, 0.70), ("d", 0.82, 0.70)]]
    fig = plots.pareto_figure(pts)
    fig.canvas.draw()
    (ax,) = fig.axes
    front_px = ax.transData.transform(front_by_brute_force([(p["auc"], p["es_auc"]) for p in pts]))
    assert len(front_px) == 3
    vertices = np.concatenate([line_vertices_px(ax, ln) for ln in ax.get_lines()
                               if len(ln.get_xdata()) >= 2 * len(front_px)])
    for fx, fy in front_px:
        assert np.min(np.hypot(*(vertices - (fx, fy)).T)) < 0.5


def test_saved_figures_are_at_most_a_page_wide_and_written_whole(tmp_path: Path) -> None:
    from PIL import Image

    stats = {m: {a: {"mean": 0.7 + 0.01 * i, "std": 0.02} for a in [*ATTRIBUTE_GROUPS, "mean"]}
             for i, m in enumerate(["synthetic_clip", "synthetic_clip_balanced",
                                    "synthetic_fairclip", "synthetic_dbpm",
                                    "synthetic_robust_fair"])}
    files = [
        plots.plot_pareto(crowded_points(), tmp_path / "pareto.png"),
        plots.plot_es_auc(stats, tmp_path / "es_auc.png"),
        plots.plot_dbpm_histogram({"statistic": np.linspace(0, 3, 300),
                                   "race": np.arange(300) % 3}, (0.5, 2.5),
                                  tmp_path / "dbpm.png"),
        plots.plot_group_roc({m: {"score": np.arange(60) % 7, "label": np.arange(60) % 2,
                                  "race": np.arange(60) % 3} for m in stats}, "race",
                             tmp_path / "roc.png"),
    ]
    for file in files:
        with Image.open(file) as im:
            assert im.width <= MAX_WIDTH_PX and im.height <= 700, (file.name, im.size)
    names = ["dbpm.png", "es_auc.png", "pareto.png", "roc.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary file left


# ------------------------------------------------------------------------------------------------
# ES-AUC per attribute
# ------------------------------------------------------------------------------------------------
def test_es_auc_plot_legend_outside_the_data_and_honest_axis() -> None:
    methods = ["synthetic_clip", "synthetic_clip_balanced", "synthetic_fairclip",
               "synthetic_dbpm", "synthetic_robust_fair"]
    attrs = [*ATTRIBUTE_GROUPS, "mean"]
    rng = np.random.default_rng(1)
    stats = {m: {a: {"mean": float(rng.uniform(0.6, 0.85)), "std": float(rng.uniform(0.01, 0.03))}
                 for a in attrs} for m in methods}
    stats["synthetic_dbpm"]["race"]["std"] = math.nan
    fig = plots.es_auc_figure(stats)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    width_px = fig.get_size_inches()[0] * fig.dpi
    assert width_px <= MAX_WIDTH_PX
    assert ax.get_ylabel()
    legend = fig.legends[0] if fig.legends else ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [m.removeprefix("synthetic_")
                                                          for m in methods]
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8
    assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    ylo, yhi = ax.get_ylim()
    if bars:  # a bar's length must mean something: then the axis starts at 0
        assert ylo == 0
    # every mean is drawn at its value, inside the axis
    drawn = sorted(y for ln in ax.get_lines() for y in ln.get_ydata() if ln.get_marker() == "o")
    expected = sorted(stats[m][a]["mean"] for m in methods for a in attrs)
    np.testing.assert_allclose(drawn, expected)
    assert ylo <= min(expected) and max(expected) <= yhi
    assert [t.get_text() for t in ax.get_xticklabels()] == [*ATTRIBUTE_GROUPS, "mean of attributes"]


# ------------------------------------------------------------------------------------------------
# DBPM histogram
# ------------------------------------------------------------------------------------------------
def test_dbpm_histogram_has_count_label_group_names_and_true_counts() -> None:
    rng = np.random.default_rng(2)
    n = 900
    stat = np.r_[rng.normal(2.0, 0.3, n), rng.normal(3.2, 0.3, 60), [np.nan] * 5]
    race = rng.integers(0, 3, stat.size)
    race[:4] = -1
    bad = np.r_[np.zeros(n, bool), np.ones(60, bool), np.zeros(5, bool)]
    fig = plots.dbpm_histogram_figure({"statistic": stat, "race": race, "is_bad_pair": bad},
                                      (1.2, 2.9), bins=30)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["Asian", "Black", "White"]
    assert axes[0].get_ylabel().startswith("pairs")
    assert all(ax.get_xlabel() == "mean past loss" for ax in axes)
    assert all(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes)
    edges = np.histogram_bin_edges(stat[~np.isnan(stat)], bins=30)
    for g, ax in enumerate(axes):
        heights = np.array([p.get_height() for p in ax.patches if isinstance(p, Rectangle)])
        member = (race == g) & ~np.isnan(stat)
        clean, _ = np.histogram(stat[member & ~bad], bins=edges)
        planted, _ = np.histogram(stat[member & bad], bins=edges)
        np.testing.assert_array_equal(heights, np.r_[clean, planted])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["clean", "planted bad"]


# ------------------------------------------------------------------------------------------------
# benchmark tables
# ------------------------------------------------------------------------------------------------
def test_benchmark_tables_name_the_groups_as_the_cli_prints_them() -> None:
    from fairvlm_lightning.app.benchmark import render_markdown, summarise
    from fairvlm_lightning.tables import fairness_table

    metrics = ("es_auc", "es_acc", "dpd", "deodds")
    test = {"auc": 0.8, "acc": 0.7}
    for attr, groups in ATTRIBUTE_GROUPS.items():
        test.update({f"{attr}/{m}": 0.5 for m in metrics})
        test.update({f"{attr}/auc_group_{g}": 0.6 + 0.01 * g for g in range(groups)})
    runs = [{"variant": v, "seed": s, "test": test, "val": test}
            for v in ("synthetic_clip", "synthetic_dbpm") for s in (0, 1)]
    summary = summarise(runs, baseline="synthetic_clip")
    md = render_markdown({"summary": summary, "seeds": [0, 1], "date": "d",
                          "variants": [{"name": v, "sweep": {}} for v in
                                       ("synthetic_clip", "synthetic_dbpm")],
                          "runs": runs, "total_run_seconds": 0.0}, {})
    cli = fairness_table({f"test/{k}": v for k, v in test.items()}, ATTRIBUTE_GROUPS)
    for attr, groups in ATTRIBUTE_GROUPS.items():
        row = next(line for line in cli.splitlines() if line.startswith(attr + " "))
        cli_names = [c.rsplit(" ", 1)[0] for c in row.split("  ")[-1].strip().split(", ")]
        assert len(cli_names) == groups
        section = md.split(f"### {attr}\n", 1)[1]
        header = section.strip().splitlines()[0]
        assert header.endswith(" | ".join(f"AUC {name}" for name in cli_names) + " |"), header
        assert "AUC group" not in header
