"""SinkhornFairnessLoss and its backends against closed forms, scipy and GeomLoss itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from geomloss import SamplesLoss
from scipy.optimize import linprog
from scipy.stats import wasserstein_distance

from fairvlm_lightning import sinkhorn as sinkhorn_module
from fairvlm_lightning.sinkhorn import (
    DEFAULT_BLUR,
    DEFAULT_SCALING,
    SinkhornFairnessLoss,
    auto_backend,
    epsilon_schedule,
    group_weights,
    quantile_transport_cost,
    sinkhorn_divergences,
)

SINKHORN_BACKENDS = ["fused", "geomloss"]


@pytest.fixture(autouse=True)
def _fast_cpu_settings():
    # GeomLoss on CPU slows down 5-30x on denormal floats, and its many tiny ops slow down
    # 10-100x when intra-op threads wait on a busy machine; restore torch's settings afterwards.
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def _batch(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, generator=g).abs() * 0.8 + torch.rand(b, generator=g) * 2.0
    groups = {
        "race": torch.randint(-1, 3, (b,), generator=g),
        "gender": torch.randint(0, 2, (b,), generator=g),
    }
    values = values + 0.4 * (groups["race"] == 2)
    return values, groups


def _lp_half_w2(x: np.ndarray, y: np.ndarray) -> float:
    """min over couplings of sum P_ij (x_i - y_j)^2 / 2, uniform marginals (scipy linprog)."""
    n, m = len(x), len(y)
    cost = 0.5 * (x[:, None] - y[None, :]) ** 2
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1
    for j in range(m):
        a_eq[n + j, j::m] = 1
    b_eq = np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)])
    return float(linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None)).fun)


# ------------------------------------------------------------------- exact 1-D transport cost
@pytest.mark.parametrize("c", [0.0, 0.5, -2.0])
def test_exact_shift_closed_form(c):
    x = torch.tensor([0.3, -1.0, 2.0, 0.7], dtype=torch.float64)
    assert quantile_transport_cost(x, x + c).item() == pytest.approx(0.5 * c * c, abs=1e-12)
    # Unequal sizes: the same measure written with every atom twice, shifted.
    y = torch.cat([x, x.flip(0)]) + c
    assert quantile_transport_cost(x, y).item() == pytest.approx(0.5 * c * c, abs=1e-12)


@pytest.mark.parametrize("n,m", [(5, 7), (4, 6), (3, 3), (1, 4)])
def test_exact_matches_linear_program(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.randn(m, generator=g, dtype=torch.float64) + 0.3
    ref = _lp_half_w2(x.numpy(), y.numpy())
    assert quantile_transport_cost(x, y).item() == pytest.approx(ref, rel=1e-7, abs=1e-10)


def test_exact_p1_matches_scipy_wasserstein():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(13, generator=g, dtype=torch.float64)
    y = torch.randn(31, generator=g, dtype=torch.float64) * 2
    ref = wasserstein_distance(x.numpy(), y.numpy())
    assert quantile_transport_cost(x, y, p=1).item() == pytest.approx(ref, rel=1e-10)


def test_exact_gradient_is_correct():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: quantile_transport_cost(a, b), (x, y))


def test_exact_bad_inputs():
    with pytest.raises(ValueError, match=r"x must be a non-empty 1-D tensor, got shape \(2, 2\)"):
        quantile_transport_cost(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"y must be a non-empty 1-D tensor, got shape \(0,\)"):
        quantile_transport_cost(torch.zeros(2), torch.zeros(0))
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        quantile_transport_cost(torch.zeros(2), torch.zeros(3), p=3)


# --------------------------------------------------------------------------- the module
def _direct_geomloss(values, groups, blur, scaling, min_size=2):
    """One plain SamplesLoss call per group: the second code path for the batched solver."""
    diameter = max((values.max() - values.min()).item(), blur)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, debias=True, diameter=diameter)
    terms = {}
    for attr, ids in groups.items():
        for gid in sorted(set(ids.tolist()) - {-1}):
            mask = ids == gid
            if int(mask.sum()) >= min_size:
                terms[f"{attr}/{gid}"] = loss(values[mask].unsqueeze(-1), values.unsqueeze(-1))
    return terms


@pytest.mark.parametrize("backend", SINKHORN_BACKENDS)
@pytest.mark.parametrize("blur,scaling", [(1e-2, 0.9), (1e-4, 0.5)])
def test_batched_geomloss_equals_per_group_calls(blur, scaling, backend):
    # float64: the batched solve on the batch's support is the same computation as one call per
    # group. GeomLoss builds |x-y|^2 as x^2 + y^2 - 2xy, the batched path as (x-y)^2: the last
    # digits differ, and C / eps at blur=1e-4 amplifies that to ~1e-11 in the gradients. (In
    # float32 the gradients differ by rounding only, which blur=1e-4 amplifies to ~1e-3.)
    values, groups = _batch(48, seed=1)
    values = values.double()
    v1 = values.clone().requires_grad_(True)
    fn = SinkhornFairnessLoss(blur=blur, scaling=scaling, backend=backend)
    total, terms = fn(v1, groups, return_terms=True)
    total.backward()
    v2 = values.clone().requires_grad_(True)
    ref = _direct_geomloss(v2, groups, blur, scaling)
    sum(ref.values()).backward()
    assert sorted(terms) == sorted(ref) and total.dtype == torch.float64
    for name in ref:
        torch.testing.assert_close(terms[name], ref[name], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(total, sum(terms.values()))
    torch.testing.assert_close(v1.grad, v2.grad, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("backend", SINKHORN_BACKENDS)
def test_batched_geomloss_float32_default_settings(backend):
    values, groups = _batch(48, seed=1)
    v1 = values.clone().requires_grad_(True)
    total = SinkhornFairnessLoss(backend=backend)(v1, groups)
    total.backward()
    v2 = values.clone().requires_grad_(True)
    ref = sum(_direct_geomloss(v2, groups, DEFAULT_BLUR, DEFAULT_SCALING).values())
    ref.backward()
    assert total.dtype == torch.float32
    torch.testing.assert_close(total, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(v1.grad, v2.grad, atol=1e-4, rtol=1e-3)


def test_geomloss_p2_tends_to_half_w2_and_gradients_agree():
    values, groups = _batch(40, seed=2)
    exact_fn = SinkhornFairnessLoss(backend="exact1d")
    v_exact = values.clone().requires_grad_(True)
    exact, exact_terms = exact_fn(v_exact, groups, return_terms=True)
    exact.backward()
    errors, cosines = [], []
    # Shrinking blur and scaling -> 1; the error is set by the epsilon-scaling ratio.
    for blur, scaling in [(1e-2, 0.5), (DEFAULT_BLUR, DEFAULT_SCALING), (1e-3, 0.99)]:
        v = values.clone().requires_grad_(True)
        total, terms = SinkhornFairnessLoss(blur=blur, scaling=scaling)(
            v, groups, return_terms=True
        )
        total.backward()
        assert sorted(terms) == sorted(exact_terms)
        errors.append(abs(total.item() - exact.item()) / exact.item())
        cosines.append(torch.nn.functional.cosine_similarity(v.grad, v_exact.grad, dim=0).item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 5e-3  # reached at blur=1e-3, scaling=0.99: 1.7e-3 (defaults: 2.3e-2)
    assert cosines[1] > 0.95 and cosines[2] > 0.995  # measured 0.974 / 0.998


@pytest.mark.parametrize("c", [0.5, 1.0])
def test_shift_both_backends_against_independent_references(c):
    # A group that is the rest of the batch shifted by c. GeomLoss itself: the two-sample shift
    # has the closed form S_0 = W2^2 / 2 = c^2 / 2 (cost |x-y|^2 / 2).
    x = torch.linspace(0, 1, 16, dtype=torch.float64)
    geom = SamplesLoss("sinkhorn", p=2, blur=1e-3, scaling=0.99, debias=True, diameter=2.0)(
        x.unsqueeze(-1), (x + c).unsqueeze(-1)
    ).item()
    assert geom == pytest.approx(0.5 * c * c, rel=1e-2)
    values = torch.cat([x, x + c])
    groups = {"a": torch.cat([torch.zeros(16), torch.ones(16)]).long()}
    v = values.numpy()
    lp = {f"a/{g}": _lp_half_w2(v[16 * g : 16 * (g + 1)], v) for g in (0, 1)}  # linprog
    # exact1d: the optimal transport cost of each group vs the batch, a linear program
    total, terms = SinkhornFairnessLoss(backend="exact1d")(values, groups, return_terms=True)
    assert sorted(terms) == sorted(lp)
    for name, ref in lp.items():
        assert ref > 0.01 and terms[name].item() == pytest.approx(ref, rel=1e-9)
    assert total.item() == pytest.approx(sum(lp.values()), rel=1e-9)
    # geomloss: one plain SamplesLoss call per group (same blur/scaling), and near the LP value
    blur, scaling = 1e-3, 0.99
    total, terms = SinkhornFairnessLoss(backend="geomloss", blur=blur, scaling=scaling)(
        values, groups, return_terms=True
    )
    ref = _direct_geomloss(values, groups, blur, scaling)
    assert sorted(terms) == sorted(ref)
    for name in ref:
        assert terms[name].item() == pytest.approx(ref[name].item(), rel=1e-10)
        assert terms[name].item() == pytest.approx(lp[name], rel=1e-3)  # 1e-5 measured
    assert total.item() == pytest.approx(sum(r.item() for r in ref.values()), rel=1e-10)


@pytest.mark.parametrize("backend", ["fused", "geomloss", "exact1d"])
def test_term_names_unknowns_and_min_group_size(backend):
    values = torch.tensor([0.1, 0.5, 0.9, 1.3, 2.0, 2.5, 3.0])
    groups = {
        "race": torch.tensor([0, 0, 1, 1, 1, -1, 2]),  # group 2 has one member
        "language": torch.tensor([-1, -1, -1, -1, -1, -1, -1]),
    }
    fn = SinkhornFairnessLoss(backend=backend, min_group_size=2)
    total, terms = fn(values, groups, return_terms=True)
    assert sorted(terms) == ["race/0", "race/1"]
    for name, members in (("race/0", [0, 1]), ("race/1", [2, 3, 4])):
        exact = quantile_transport_cost(values[members], values).item()
        tol = 1e-6 if backend == "exact1d" else 0.1
        assert terms[name].item() == pytest.approx(exact, rel=tol)
    torch.testing.assert_close(total, terms["race/0"] + terms["race/1"])
    terms3 = SinkhornFairnessLoss(backend=backend, min_group_size=3)(values, groups, True)[1]
    assert sorted(terms3) == ["race/1"]
    terms1 = SinkhornFairnessLoss(backend=backend, min_group_size=1)(values, groups, True)[1]
    assert sorted(terms1) == ["race/0", "race/1", "race/2"]


@pytest.mark.parametrize("backend", ["fused", "geomloss", "exact1d"])
def test_no_usable_group_returns_zero_with_grad(backend):
    values = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    groups = {"race": torch.tensor([0, 1, -1])}
    total, terms = SinkhornFairnessLoss(backend=backend)(values, groups, return_terms=True)
    assert terms == {} and total.item() == 0.0 and total.requires_grad
    total.backward()
    torch.testing.assert_close(values.grad, torch.zeros(3))
    assert SinkhornFairnessLoss(backend=backend)(torch.zeros(0), {}).item() == 0.0


@pytest.mark.parametrize("backend", ["fused", "geomloss", "exact1d"])
def test_identical_values_do_not_crash(backend):
    values = torch.full((8,), 2.5, requires_grad=True)
    groups = {"gender": torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])}
    total = SinkhornFairnessLoss(backend=backend, blur=1e-4, scaling=0.5)(values, groups)
    total.backward()
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(values.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_tiny_blur(dtype):
    values, groups = _batch(32, seed=5)
    ref = SinkhornFairnessLoss(blur=1e-4, scaling=0.5)(values, groups)
    low = values.to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = SinkhornFairnessLoss(blur=1e-4, scaling=0.5)(low, groups)
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert torch.isfinite(low.grad.float()).all() and low.grad.dtype == dtype
    assert out.item() == pytest.approx(ref.item(), rel=0.05, abs=1e-3)


def test_bad_inputs():
    fn = SinkhornFairnessLoss()
    v = torch.rand(4)
    ok = {"race": torch.tensor([0, 0, 1, 1])}
    with pytest.raises(ValueError, match=r"values must be 1-D \(B,\), got shape \(2, 2\)"):
        fn(v.view(2, 2), ok)
    with pytest.raises(TypeError, match="values must be a floating-point tensor, got torch.int64"):
        fn(torch.arange(4), ok)
    with pytest.raises(TypeError, match="groups must be a dict"):
        fn(v, [torch.tensor([0, 0, 1, 1])])
    with pytest.raises(TypeError, match=r"groups\['race'\] must hold integer group ids"):
        fn(v, {"race": torch.tensor([0.0, 0.0, 1.0, 1.0])})
    with pytest.raises(TypeError, match=r"groups\['race'\] must be a tensor"):
        fn(v, {"race": [0, 0, 1, 1]})
    with pytest.raises(ValueError, match=r"has shape \(3,\) but values has \(4,\)"):
        fn(v, {"race": torch.tensor([0, 0, 1])})
    with pytest.raises(ValueError, match="holds id -2"):
        fn(v, {"race": torch.tensor([0, 0, -2, 1])})
    for backend in ("fused", "geomloss", "exact1d"):
        with pytest.raises(ValueError, match="NaN or infinity"):
            SinkhornFairnessLoss(backend=backend)(torch.tensor([0.0, float("nan"), 1, 2]), ok)
    for kwargs, match in [
        (dict(blur=0.0), "blur"),
        (dict(p=3), "p must be 1 or 2"),
        (dict(scaling=1.0), "scaling"),
        (dict(min_group_size=0), "min_group_size"),
        (dict(backend="pot"), "backend"),
    ]:
        with pytest.raises(ValueError, match=match):
            SinkhornFairnessLoss(**kwargs)


def test_p1_exact_backend_is_scipy_w1():
    values, groups = _batch(30, seed=6)
    terms = SinkhornFairnessLoss(p=1, backend="exact1d")(values, groups, return_terms=True)[1]
    for name, term in terms.items():
        attr, gid = name.split("/")
        member = values[groups[attr] == int(gid)]
        ref = wasserstein_distance(member.double().numpy(), values.double().numpy())
        assert term.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_precision_matches_cpu():
    values, groups = _batch(256, seed=7)
    ref = SinkhornFairnessLoss(blur=1e-4, scaling=0.5)(values, groups, return_terms=True)[1]
    dev = values.cuda().half().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.float16):
        total, terms = SinkhornFairnessLoss(blur=1e-4, scaling=0.5)(
            dev, {k: v.cuda() for k, v in groups.items()}, return_terms=True
        )
    total.backward()
    assert torch.isfinite(dev.grad).all()
    for name in ref:
        assert terms[name].item() == pytest.approx(ref[name].item(), rel=2e-2, abs=1e-4)
    exact = SinkhornFairnessLoss(backend="exact1d")(
        values.cuda(), {k: v.cuda() for k, v in groups.items()}
    )
    assert exact.item() == pytest.approx(
        SinkhornFairnessLoss(backend="exact1d")(values, groups).item(), rel=1e-5
    )


# ------------------------------------------------------- batched computation of all groups
def _numpy_quantile_cost_and_grad(values: np.ndarray, member: np.ndarray, p: int):
    """1/p int_0^1 |F_g^-1 - F_B^-1|^p dt and its gradient w.r.t. values, by NumPy integration.

    Independent of the torch code: the integral is split at every breakpoint of the two
    quantile step functions (computed as exact fractions), and the gradient is accumulated on
    the samples whose quantile intervals the pieces fall into.
    """
    from fractions import Fraction

    x_idx = np.flatnonzero(member)[np.argsort(values[member], kind="stable")]
    y_idx = np.argsort(values, kind="stable")
    n, m = len(x_idx), len(y_idx)
    cuts = sorted(
        {Fraction(k, n) for k in range(1, n + 1)} | {Fraction(j, m) for j in range(1, m + 1)}
    )
    cost, grad, prev = 0.0, np.zeros_like(values), Fraction(0)
    for t in cuts:
        width = float(t - prev)
        i, j = -(-t.numerator * n // t.denominator) - 1, -(-t.numerator * m // t.denominator) - 1
        d = values[x_idx[i]] - values[y_idx[j]]
        cost += width * (abs(d) if p == 1 else d * d)
        slope = width * (np.sign(d) if p == 1 else 2 * d)
        grad[x_idx[i]] += slope / p
        grad[y_idx[j]] -= slope / p
        prev = t
    return cost / p, grad


def _fairvlmed_like(b: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(b, generator=g).abs() * 0.8 + torch.rand(b, generator=g) * 2).to(dtype)
    groups = {
        "race": torch.randint(-1, 3, (b,), generator=g),
        "gender": torch.randint(0, 2, (b,), generator=g, dtype=torch.int32),
        "ethnicity": torch.randint(-1, 2, (b,), generator=g),
        "language": torch.randint(-1, 3, (b,), generator=g, dtype=torch.int16),
    }
    return values, groups


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("b,min_size", [(9, 1), (33, 2), (64, 5)])
def test_exact_batched_matches_numpy_reference(b, min_size, p):
    values, groups = _fairvlmed_like(b, seed=b + p)
    v = values.clone().requires_grad_(True)
    fn = SinkhornFairnessLoss(backend="exact1d", p=p, min_group_size=min_size)
    total, terms = fn(v, groups, return_terms=True)
    total.backward()
    ref_grad = np.zeros(b)
    expected = []
    for attr, ids in groups.items():
        for gid in sorted(set(ids.tolist()) - {-1}):
            member = (ids == gid).numpy()
            if member.sum() >= min_size:
                cost, grad = _numpy_quantile_cost_and_grad(values.numpy(), member, p)
                expected.append(f"{attr}/{gid}")
                assert terms[f"{attr}/{gid}"].item() == pytest.approx(cost, rel=1e-12, abs=1e-14)
                ref_grad += grad
    assert list(terms) == expected  # attributes in dict order, ids ascending
    np.testing.assert_allclose(v.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-12)


def test_exact_batched_float32_equals_per_group_loop():
    # Today's code path, one quantile_transport_cost per group, as the second reference.
    values, groups = _fairvlmed_like(64, seed=11, dtype=torch.float32)
    v1 = values.clone().requires_grad_(True)
    total, terms = SinkhornFairnessLoss(backend="exact1d")(v1, groups, return_terms=True)
    total.backward()
    v2 = values.clone().requires_grad_(True)
    ref = {}
    for attr, ids in groups.items():
        for gid in sorted(set(ids.tolist()) - {-1}):
            idx = torch.nonzero(ids == gid).flatten()
            if idx.numel() >= 2:
                ref[f"{attr}/{gid}"] = quantile_transport_cost(v2.index_select(0, idx), v2)
    torch.stack(list(ref.values())).sum().backward()
    assert list(terms) == list(ref)
    for name in ref:
        torch.testing.assert_close(terms[name], ref[name], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-5, atol=1e-7)


def _aten_ops(fn, values, groups) -> int:
    from torch.profiler import profile

    v = values.clone().requires_grad_(True)
    with profile() as prof:
        fn(v, groups).backward()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


@pytest.mark.parametrize("backend", ["exact1d", "fused"])
def test_operation_count_does_not_grow_with_groups(backend):
    values, _ = _batch(48, seed=3)
    g = torch.Generator().manual_seed(3)
    few = {
        "a": torch.randint(0, 2, (48,), generator=g),
        "b": torch.randint(-1, 2, (48,), generator=g),
    }
    many = {"a": torch.arange(48) % 12, "b": torch.randint(-1, 9, (48,), generator=g)}
    fn = SinkhornFairnessLoss(backend=backend, blur=0.1, scaling=0.5)
    terms_few = fn(values, few, return_terms=True)[1]
    terms_many = fn(values, many, return_terms=True)[1]
    assert len(terms_few) == 4 and len(terms_many) >= 18
    assert _aten_ops(fn, values, few) == _aten_ops(fn, values, many)


def test_softmin_equals_geomloss_softmin_tensorized():
    from geomloss._legacy.sinkhorn_samples import softmin_tensorized

    from fairvlm_lightning.sinkhorn import _softmin  # the module's own helper, tested directly

    g = torch.Generator().manual_seed(0)
    c = torch.rand(3, 5, 6, generator=g, dtype=torch.float64)
    h = torch.randn(3, 6, generator=g, dtype=torch.float64)
    h[1, 2:] = float("-inf")  # zero-mass points, as off-group points are
    for eps in (1.0, 1e-2, 1e-4):
        ref = softmin_tensorized(eps, c, h)
        torch.testing.assert_close(_softmin(eps, c, h), ref, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(_softmin(eps, c, h), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", SINKHORN_BACKENDS)
def test_geomloss_leaves_grad_mode_alone(backend):
    values, groups = _batch(16, seed=0)
    values.requires_grad_(True)
    with torch.no_grad():
        out = SinkhornFairnessLoss(backend=backend)(values, groups)
        assert not torch.is_grad_enabled()  # GeomLoss's loop switches it on when it returns
    assert torch.is_grad_enabled() and not out.requires_grad


def test_geomloss_is_invariant_to_offset_and_scale():
    # S_blur(s * v + c) = s^2 S_{blur / s}(v): the rescaling to [0, 1] is exact (float64).
    values, groups = _batch(24, seed=8)
    values = values.double()
    base = SinkhornFairnessLoss(blur=1e-2)(values, groups, return_terms=True)[1]
    for s, c in [(1e6, 0.0), (1.0, 1e4), (1e-3, -5.0)]:
        moved = SinkhornFairnessLoss(blur=1e-2 * s)(values * s + c, groups, return_terms=True)[1]
        for name in base:
            assert moved[name].item() == pytest.approx(base[name].item() * s * s, rel=1e-9)


def test_geomloss_huge_values_rescaled_or_clear_error():
    # Plain GeomLoss (SamplesLoss) returns NaN from values of about 1e18 on (issue 11, item 12).
    values, groups = _batch(32, seed=9)
    big = values * 1e18
    exact = SinkhornFairnessLoss(backend="exact1d")(big, groups).item()
    v = big.clone().requires_grad_(True)
    out = SinkhornFairnessLoss(blur=1e5)(v, groups)  # range / blur ~ 3e13: within float32 reach
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(v.grad).all()
    assert out.item() == pytest.approx(exact, rel=0.1)
    with pytest.raises(ValueError, match=r"values span 2\.\d+e\+18.*cannot resolve.*exact1d"):
        SinkhornFairnessLoss()(big, groups)


# ------------------------------------------------------------ backends named for what runs
@pytest.mark.parametrize(
    "p,diameter,blur,scaling",
    [(2, 1.0, 1e-2, 0.95), (2, 1.0, 1e-4, 0.5), (1, 3.7, 0.05, 0.9), (2, 0.3, 0.29, 0.5)]
    + [(2, 1.0, 1e-2 / s, 0.95) for s in (0.37, 1.9, 4.4, 17.0)],
)
def test_epsilon_schedule_equals_geomloss(p, diameter, blur, scaling):
    # GeomLoss's own schedule (from its private module: in the test only); bit for bit, so the
    # fused backend runs exactly the iterations it ran when it imported GeomLoss's function.
    from geomloss._legacy.sinkhorn_divergence import epsilon_schedule as geomloss_schedule

    ours = epsilon_schedule(p, diameter, blur, scaling)
    ref = [float(e) for e in geomloss_schedule(p, diameter, blur, scaling)]
    assert ours == ref and all(type(e) is float for e in ours)


def test_no_private_geomloss_module_imported():
    import inspect

    assert "_legacy" not in inspect.getsource(sinkhorn_module)


def test_geomloss_backend_calls_samplesloss_once_for_all_groups(monkeypatch):
    import geomloss

    calls = []
    real = geomloss.SamplesLoss

    class Spy(real):
        def forward(self, *args):
            calls.append((self.loss, self.backend, self.debias, [tuple(a.shape) for a in args]))
            return super().forward(*args)

    monkeypatch.setattr(geomloss, "SamplesLoss", Spy)
    values, groups = _fairvlmed_like(32, seed=4, dtype=torch.float32)
    total, terms = SinkhornFairnessLoss(backend="geomloss")(values, groups, return_terms=True)
    g = len(terms)
    assert g >= 8
    assert calls == [("sinkhorn", "tensorized", True, [(g, 32), (g, 32, 1), (g, 32), (g, 32, 1)])]
    calls.clear()
    SinkhornFairnessLoss(backend="fused")(values, groups)
    SinkhornFairnessLoss()(values, groups)  # auto on CPU: fused
    assert calls == []


def test_fused_and_geomloss_equal_direct_samplesloss_all_attributes():
    # Four attributes, unknowns, int16/int32 ids: both backends against one plain SamplesLoss call
    # per group, value to 1e-6 relative and gradient (float64).
    values, groups = _fairvlmed_like(40, seed=12)
    ref_v = values.clone().requires_grad_(True)
    ref = _direct_geomloss(ref_v, groups, DEFAULT_BLUR, DEFAULT_SCALING)
    sum(ref.values()).backward()
    for backend in SINKHORN_BACKENDS:
        v = values.clone().requires_grad_(True)
        total, terms = SinkhornFairnessLoss(backend=backend)(v, groups, return_terms=True)
        total.backward()
        assert list(terms) == list(ref), backend
        for name in ref:
            torch.testing.assert_close(terms[name], ref[name], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(v.grad, ref_v.grad, rtol=1e-6, atol=1e-9)


def test_auto_backend_is_fused_on_cpu_bit_for_bit():
    values, groups = _fairvlmed_like(48, seed=13, dtype=torch.float32)
    outs = []
    for backend in ("auto", "fused"):
        v = values.clone().requires_grad_(True)
        total = SinkhornFairnessLoss(backend=backend)(v, groups)
        total.backward()
        outs.append((total, v.grad))
    assert auto_backend("cpu") == "fused" and auto_backend(torch.device("cuda", 0)) == "fused"
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_geomloss_uses_keops_online_on_cuda_only_when_installed(monkeypatch):
    monkeypatch.setattr(sinkhorn_module, "_keops_available", lambda: True)
    assert sinkhorn_module._samples_backend(torch.device("cuda")) == "online"
    assert sinkhorn_module._samples_backend(torch.device("cpu")) == "tensorized"
    monkeypatch.setattr(sinkhorn_module, "_keops_available", lambda: False)
    assert sinkhorn_module._samples_backend(torch.device("cuda")) == "tensorized"


# ------------------------------------------------ the term without host syncs (capturable)
def test_group_weights_and_fixed_diameter_equal_the_module():
    values, groups = _fairvlmed_like(32, seed=14, dtype=torch.float32)
    names, w = group_weights(groups)
    total, terms = SinkhornFairnessLoss(backend="fused")(values, groups, return_terms=True)
    assert names == list(terms)
    np.testing.assert_allclose(w.sum(dim=1).numpy(), 1.0, rtol=1e-6)
    for name, row in zip(names, w, strict=True):
        attr, gid = name.split("/")
        member = (groups[attr] == int(gid)).float()
        torch.testing.assert_close(row, member / member.sum())
    span = (values.max() - values.min()).item()
    static = sinkhorn_divergences(values, w, diameter=span)
    torch.testing.assert_close(static, torch.stack(list(terms.values())), rtol=0, atol=0)
    # A looser fixed bound: a different (longer) schedule, the same divergence up to its error.
    loose = sinkhorn_divergences(values, w, diameter=2 * span)
    torch.testing.assert_close(loose, static, rtol=0.05, atol=1e-4)
    with pytest.raises(ValueError, match="diameter= 1e\\+20"):
        sinkhorn_divergences(values, w, diameter=1e20)


def _count_aten_ops(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


# aten operations of one forward + backward of the term, 4 attributes / 10 groups, B = 32,
# default blur and scaling (a kernel launch each on a GPU, unless captured). Measured: fused
# 1,208 through the module (group layout included), 1,189 with a fixed layout and diameter;
# exact1d 83. The guards leave ~10 % margin.
OP_GUARDS = {"module_fused": 1880, "static_fused": 1880, "module_exact1d": 112}


def _bench_like_batch(b: int = 32):
    g = torch.Generator().manual_seed(0)
    values = torch.rand(b, generator=g) * 3
    sizes = {"race": 3, "gender": 2, "ethnicity": 2, "language": 3}
    groups = {a: torch.arange(b) % n for a, n in sizes.items()}  # every group present: 10
    return values, groups


@pytest.mark.parametrize("case", sorted(OP_GUARDS))
def test_operation_count_guard(case):
    values, groups = _bench_like_batch()
    names, w = group_weights(groups)
    assert len(names) == 10
    v = values.clone().requires_grad_(True)
    if case == "static_fused":
        run = lambda: sinkhorn_divergences(v, w, diameter=3.0).sum().backward()  # noqa: E731
    else:
        fn = SinkhornFairnessLoss(backend=case.removeprefix("module_"))
        run = lambda: fn(v, groups).backward()  # noqa: E731
    n = _count_aten_ops(run)
    print(f"{case}: {n} aten ops")
    assert n <= OP_GUARDS[case]


def test_fixed_layout_term_compiles_as_one_graph():
    # fullgraph=True fails on any graph break (.item(), data-dependent shapes, host syncs). The
    # aot_eager backend traces forward and backward like inductor, without compiling C++.
    torch._dynamo.reset()
    values, groups = _bench_like_batch(16)
    _, w = group_weights(groups)
    blur, scaling = 0.05, 0.5  # a short schedule: tracing time grows with its length

    def term(v):
        return sinkhorn_divergences(v, w, blur=blur, scaling=scaling, diameter=3.0).sum()

    compiled = torch.compile(term, fullgraph=True, backend="aot_eager")
    v1 = values.clone().requires_grad_(True)
    out = compiled(v1)
    out.backward()
    v2 = values.clone().requires_grad_(True)
    ref = term(v2)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(v1.grad, v2.grad)
    torch._dynamo.reset()
