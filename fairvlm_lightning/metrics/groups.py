"""Intersectional groups: the cells of several protected attributes taken together.

The cell of an intersection ``(a_1, ..., a_k)`` of attributes with ``n_1, ..., n_k`` groups is the
mixed-radix code ``((g_1 * n_2 + g_2) * n_3 + g_3) ...``; for two attributes, race ``r`` and
gender ``s`` give the cell ``r * n_gender + s``. A sample whose group is unknown in any of the
attributes has an unknown cell. The intersection is named by joining the attribute names with
``*`` (``"race*gender"``), and its display names join the groups' display names with a space
(``"Black Female"``).

These are plain functions of tensors and mappings (no state), so the metrics, the Sinkhorn
fairness term and DBPM's scope can all build the same cells.

Example:
    >>> import torch
    >>> attributes = {"race": 3, "gender": 2}
    >>> expand_attributes(attributes, [("race", "gender")])
    {'race': 3, 'gender': 2, 'race*gender': 6}
    >>> intersection_codes([torch.tensor([1, 2, -1]), torch.tensor([0, 1, 1])], [3, 2])
    tensor([ 2,  5, -1])
    >>> names = {"race": ("Asian", "Black", "White"), "gender": ("Female", "Male")}
    >>> intersection_group_names(("race", "gender"), attributes, names)[2]
    'Black Female'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "INTERSECTION_SEPARATOR",
    "Intersection",
    "add_intersection_groups",
    "expand_attributes",
    "intersection_codes",
    "intersection_group_names",
    "intersection_name",
    "parse_intersections",
    "reported_group_names",
]

#: Joins the attribute names of an intersection: ``("race", "gender")`` -> ``"race*gender"``.
INTERSECTION_SEPARATOR = "*"

#: An intersection as given by a user: a sequence of attribute names, or one string
#: ``"race*gender"``.
Intersection = Sequence[str] | str


def intersection_name(attributes: Sequence[str]) -> str:
    """The name of an intersection: ``("race", "gender")`` -> ``"race*gender"``."""
    return INTERSECTION_SEPARATOR.join(attributes)


def parse_intersections(
    intersections: Sequence[Intersection] | None, attributes: Mapping[str, int]
) -> list[tuple[str, ...]]:
    """Validate intersections against the configured attributes; return them as name tuples.

    Args:
        intersections: e.g. ``[("race", "gender")]`` or ``["race*gender"]`` (a YAML list of
            lists or of strings); ``None`` or empty for none.
        attributes: attribute name -> number of groups.

    Returns:
        One tuple of attribute names per intersection, in the given order.

    Raises:
        TypeError: if an intersection is not a string or a sequence of strings.
        ValueError: if an intersection names fewer than 2 attributes, an unknown or repeated
            attribute, an attribute name containing ``*``, or repeats another intersection.

    Example:
        >>> parse_intersections(["race*gender"], {"race": 3, "gender": 2})
        [('race', 'gender')]
    """
    if intersections is None:
        return []
    if isinstance(intersections, str) or not isinstance(intersections, Sequence):
        raise TypeError(
            "`intersections` must be a list of attribute-name lists, e.g. "
            f"[['race', 'gender']], got {intersections!r}"
        )
    out: list[tuple[str, ...]] = []
    for item in intersections:
        if isinstance(item, str):
            names = tuple(item.split(INTERSECTION_SEPARATOR))
        elif isinstance(item, Sequence) and all(isinstance(n, str) for n in item):
            names = tuple(item)
        else:
            raise TypeError(
                "each intersection must be a list of attribute names such as ['race', 'gender'] "
                f"or a string 'race*gender', got {item!r}"
            )
        if len(names) < 2:
            raise ValueError(f"an intersection needs at least 2 attributes, got {list(names)}")
        unknown = [n for n in names if n not in attributes]
        if unknown:
            raise ValueError(
                f"intersection {list(names)} names unknown attribute(s) {unknown}; the "
                f"configured attributes are {list(attributes)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"intersection {list(names)} repeats an attribute")
        bad = [n for n in names if INTERSECTION_SEPARATOR in n]
        if bad:
            raise ValueError(
                f"attribute names used in an intersection must not contain "
                f"{INTERSECTION_SEPARATOR!r}, got {bad}"
            )
        if names in out:
            raise ValueError(f"intersection {list(names)} is given twice")
        out.append(names)
    return out


def expand_attributes(
    attributes: Mapping[str, int], intersections: Sequence[Intersection] | None
) -> dict[str, int]:
    """The attributes followed by one entry per intersection, ``name -> number of cells``.

    Example:
        >>> expand_attributes({"race": 3, "gender": 2}, [("race", "gender")])
        {'race': 3, 'gender': 2, 'race*gender': 6}
    """
    out = dict(attributes)
    for names in parse_intersections(intersections, attributes):
        size = 1
        for n in names:
            size *= attributes[n]
        out[intersection_name(names)] = size
    return out


def intersection_codes(
    groups: Sequence[Tensor], num_groups: Sequence[int], *, ignore_index: int = -1
) -> Tensor:
    """Cell ids of an intersection from the group ids of its attributes.

    Args:
        groups: one integer tensor of group ids per attribute, all of one shape; a value outside
            ``[0, n)`` (e.g. ``ignore_index``) is unknown.
        num_groups: the number of groups ``n`` of each attribute.
        ignore_index: the id given to a cell that is unknown in any attribute.

    Returns:
        int64 tensor of cell ids in ``[0, prod(num_groups))`` or ``ignore_index``.

    Example:
        >>> intersection_codes([torch.tensor([0, 1, 2]), torch.tensor([1, -1, 0])], [3, 2])
        tensor([ 1, -1,  4])
    """
    if len(groups) != len(num_groups) or len(groups) < 1:
        raise ValueError(
            f"`groups` and `num_groups` must have one entry per attribute, got {len(groups)} "
            f"and {len(num_groups)}"
        )
    code = torch.zeros(groups[0].shape, dtype=torch.int64, device=groups[0].device)
    known = torch.ones(groups[0].shape, dtype=torch.bool, device=groups[0].device)
    for g, n in zip(groups, num_groups, strict=True):
        if g.shape != groups[0].shape:
            raise ValueError(
                f"group tensors of an intersection must share one shape, got {tuple(g.shape)} "
                f"and {tuple(groups[0].shape)}"
            )
        g64 = g.to(torch.int64)
        known &= (g64 >= 0) & (g64 < n)
        code = code * n + g64.clamp(0, n - 1)
    return torch.where(known, code, torch.full_like(code, ignore_index))


def add_intersection_groups(
    groups: Mapping[str, Tensor],
    attributes: Mapping[str, int],
    intersections: Sequence[Intersection] | None,
    *,
    ignore_index: int = -1,
) -> dict[str, Tensor]:
    """``groups`` plus one tensor of cell ids per intersection, keyed ``"race*gender"``.

    Example:
        >>> g = {"race": torch.tensor([1, 2]), "gender": torch.tensor([0, -1])}
        >>> add_intersection_groups(g, {"race": 3, "gender": 2}, [("race", "gender")])
        {'race': tensor([1, 2]), 'gender': tensor([ 0, -1]), 'race*gender': tensor([ 2, -1])}
    """
    out = dict(groups)
    for names in parse_intersections(intersections, attributes):
        out[intersection_name(names)] = intersection_codes(
            [groups[n] for n in names], [attributes[n] for n in names], ignore_index=ignore_index
        )
    return out


def intersection_group_names(
    intersection: Intersection,
    attributes: Mapping[str, int],
    group_names: Mapping[str, Sequence[str]] | None = None,
) -> tuple[str, ...]:
    """Display name of every cell of an intersection, in cell-id order.

    A cell's name joins its groups' display names with a space (``"Black Female"``); an
    attribute without display names contributes ``"<attribute> <id>"`` (``"site 2"``).

    Example:
        >>> intersection_group_names("race*site", {"race": 2, "site": 2}, {"race": ("A", "B")})
        ('A site 0', 'A site 1', 'B site 0', 'B site 1')
    """
    (names,) = parse_intersections([intersection], attributes)
    group_names = group_names or {}
    labels: list[list[str]] = []
    for attribute in names:
        given = list(group_names.get(attribute, ()))
        n = attributes[attribute]
        labels.append([given[g] if g < len(given) else f"{attribute} {g}" for g in range(n)])
    cells = [""]
    for options in labels:
        cells = [f"{prefix} {o}".strip() for prefix in cells for o in options]
    return tuple(cells)


def reported_group_names(
    attributes: Mapping[str, int],
    intersections: Sequence[Intersection] | None = None,
    group_names: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Display names of the groups of every reported attribute, intersections last.

    The keys are those of :func:`expand_attributes`; an attribute without display names gets
    ``"group <id>"``.

    Example:
        >>> names = {"race": ("Asian", "Black", "White"), "gender": ("Female", "Male")}
        >>> reported = reported_group_names({"race": 3, "gender": 2}, ["race*gender"], names)
        >>> reported["gender"], reported["race*gender"][3]
        (('Female', 'Male'), 'Black Male')
    """
    group_names = group_names or {}
    out: dict[str, tuple[str, ...]] = {}
    for name, count in attributes.items():
        given = list(group_names.get(name, ()))
        out[name] = tuple(given[g] if g < len(given) else f"group {g}" for g in range(count))
    for names in parse_intersections(intersections, attributes):
        out[intersection_name(names)] = intersection_group_names(names, attributes, group_names)
    return out
