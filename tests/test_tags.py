"""Strategy tags (strategies.registry.TAGS): validated at registration, derived where they can
be, and what reports, claims and torch.auto select by, so that renaming a strategy changes no
verdict."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from jacbench import strategies
from jacbench.bench import store
from jacbench.reports import auto as A
from jacbench.reports import summary as S
from jacbench.strategies import registry
from jacbench.strategies.torch_auto import AUTO, candidates


def _doc(problem, device, dtype):
    """A strategy for the tag tests. Cost: none."""
    return lambda: None


@pytest.mark.parametrize("tags, says", [({"fast"}, "unknown tag"),
                                        ({"dense", "matrix-free"}, "exclude each other"),
                                        ({"approximate"}, "derived"),
                                        ({"peer"}, "derived")])
def test_a_bad_tag_is_rejected_at_registration(tags, says):
    with pytest.raises(ValueError, match=says):
        registry.register("jacobian", "torch.zz_tagged", tags=tags)(_doc)
    with pytest.raises(ValueError, match=says):
        registry.add(registry.Strategy("jacobian", "torch.zz_tagged", "torch", True, _doc,
                                       registry.always, tags=frozenset(tags)))
    assert ("jacobian", "torch.zz_tagged") not in registry._REGISTRY
    with pytest.raises(strategies.UnknownName, match="unknown tag"):
        strategies.strategies(tag="fast")


def test_derived_and_declared_tags():
    every = strategies.strategies()
    assert {t for s in every for t in s.tags} <= set(registry.TAGS)
    for s in every:
        assert ("approximate" in s.tags) == (not s.exact), s.name
        assert ("peer" in s.tags) == (s.framework in registry.PEERS), s.name
        assert not {"dense", "matrix-free"} <= s.tags, s.name
    jax = strategies.strategies(framework="jax")
    # register_jax makes an eager and a jitted strategy of each compute; only the second is jit
    assert sum("jit" in s.tags for s in jax) * 2 == len(jax)
    from jacbench.strategies.torch_compiled import eager_of_twins

    for (q, twin), eager in eager_of_twins().items():
        t, e = strategies.get(q, twin).tags, strategies.get(q, eager).tags
        assert "compiled" in t and t - {"compiled"} == e - {"baseline"}, twin


def test_one_torch_baseline_per_quantity():
    for q in strategies.QUANTITIES:
        base = [s.name for s in strategies.strategies(q, framework="torch", tag="baseline")]
        assert len(base) == 1, (q, base)


# ------------------------------------------------------------------------------ renaming
# Rows for every seed claim, timed by a rule that follows the tags (matrix-free 1000x faster
# and leaner than dense; the baseline slowest), on the registry's own strategies and tags.
def _speed(tags) -> float:
    return 1e-5 if "matrix-free" in tags else (1e-1 if "baseline" in tags else 1e-2)


def _rows() -> pd.DataFrame:
    problems = [("ggn_vp", "seed000_mlp", {"B": 64}),
                ("cross_jacobian", "seed001_sqrt", {"n": 100}),
                ("jac_diag", "seed002_netx", {"N": 3}),
                ("jacobian", "seed004_linear_tanh", {"n": 32, "m": 2048}),
                ("jacobian", "seed004_linear_tanh", {"n": 2048, "m": 32}),
                ("batch_jacobian", "seed004_linear_tanh", {"B": 64})]
    rng = np.random.default_rng(0)
    out = []
    for q, family, sizes in problems:
        pid = f"{family}:{'-'.join(f'{k}{v}' for k, v in sizes.items())}"
        for s in strategies.strategies(q, without="peer"):
            if s.name == AUTO:
                continue
            out.append({"quantity": q, "family": family, "problem": pid, "size": "s",
                        "scale": 1.0, "sizes": sizes, "strategy": s.name,
                        "framework": s.framework, "exact": s.exact, "tags": sorted(s.tags),
                        "status": "ok", "device": "cpu", "dtype": "float32",
                        "median_s": _speed(s.tags) * rng.uniform(0.5, 2.0),
                        "peak_mem_bytes": 1e8 * _speed(s.tags)})
    return pd.DataFrame(out)


def _renamed(df: pd.DataFrame) -> pd.DataFrame:
    # New names that sort the other way round and say nothing; seed 004's jacfwd-vs-jacrev
    # comparison names its two methods, so those keep their names.
    names = sorted(set(df["strategy"]) - {n for n in df["strategy"]
                                          if S._name(n) in ("jacfwd", "jacrev")})
    new = {n: f"{n.split('.')[0]}.s{len(names) - i:03d}" for i, n in enumerate(names)}
    return df.assign(strategy=df["strategy"].map(lambda n: new.get(n, n)))


def _verdicts(df):
    claims = S.seed_claims(S.normalize(df))
    return [(c.seed, c.verdict, len(c.evidence)) for c in claims]


def test_renaming_strategies_changes_no_claim_verdict_or_baseline_speedup():
    rows = _rows()
    before = _verdicts(rows)
    assert [v[0] for v in before] == ["000", "001", "002", "004"]
    assert all(v[2] > 0 for v in before), before
    assert [v[1] for v in before[:3]] == [S.CONFIRMED] * 3, before
    renamed = _renamed(rows)
    assert (renamed["strategy"] != rows["strategy"]).mean() > 0.8
    assert _verdicts(renamed) == before
    # An old results file has no tags column: they come from the registry, same verdicts.
    assert _verdicts(rows.drop(columns="tags")) == before
    t0, t1 = S.summary_table(S.normalize(rows)), S.summary_table(S.normalize(renamed))
    assert t0["speedup_baseline"].notna().all()
    np.testing.assert_allclose(t0["speedup_baseline"], t1["speedup_baseline"])


def test_renaming_a_compiled_twin_leaves_autos_hit_rate_alone():
    # auto's "torch" rivals leave out compiled twins (it never picks one) by their tag: a twin
    # renamed so that its name no longer says "compiled" stays out.
    from jacbench.strategies.torch_compiled import eager_of_twins

    q, twin = "jacobian", "torch.jacrev_compiled"
    eager = eager_of_twins()[(q, twin)]
    base = {"quantity": q, "problem": "p", "device": "cpu", "dtype": "float32", "exact": True,
            "framework": "torch", "status": "ok", "mode": None}
    rows = pd.DataFrame([
        {**base, "strategy": eager, "median_s": 1.0, "message": ""},
        {**base, "strategy": twin, "median_s": 0.1, "message": ""},
        {**base, "strategy": AUTO, "median_s": 1.0, "message": f"picked {eager}: ..."}])
    rows["tags"] = [sorted(strategies.get(q, n).tags) if n != AUTO else [] for n in
                    rows["strategy"]]
    rate, _ = A.hit_rate(rows)
    assert (rate.cases, rate.hits) == (1, 1)
    renamed = rows.replace({"strategy": {twin: "torch.zz_fast"}})
    assert (A.hit_rate(renamed)[0].hits, A.hit_rate(renamed)[0].cases) == (1, 1)


def test_auto_leaves_out_a_renamed_compiled_strategy():
    from jacbench.bench.problems import FAMILIES, make
    from jacbench.strategies.torch_compiled import eager_of_twins

    q, twin = "jacobian", "torch.jacrev_compiled"
    assert (q, twin) in eager_of_twins()
    copy = dataclasses.replace(strategies.get(q, twin), name="torch.zz_renamed")
    registry.add(copy)
    try:
        assert "compiled" in strategies.get(q, "torch.zz_renamed").tags
        family = "seed004_linear_tanh" if q == "jacobian" else "seed000_mlp"
        sizes = FAMILIES[family].ladders["test"][q][0]
        names = {s.name for s in candidates(make(family, q, sizes))}
        assert names and "torch.zz_renamed" not in names and twin not in names
    finally:
        registry.remove(q, "torch.zz_renamed")


def test_with_tags_reads_old_files_and_csv_strings():
    df = pd.DataFrame({"quantity": ["ggn_vp", "ggn_vp", "ggn_vp"],
                       "strategy": ["torch.dense", "torch.gone", "torch.jvp_vjp"],
                       "tags": [None, None, "compiled,matrix-free"]})
    tags = store.with_tags(df)["tags"].tolist()
    assert tags == [frozenset({"baseline", "dense"}), frozenset(),
                    frozenset({"compiled", "matrix-free"})]
