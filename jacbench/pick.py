"""The winner of a comparison, ready to call on your model.

    df = jacbench.compare(model, x, quantities=["ntk"], modes=["trace"])
    pick = jacbench.best(df)                 # Pick(quantity='ntk', strategy=..., ...)
    K = pick(model, x)                       # jacbench.ntk(model, x, mode="trace", strategy=...)
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from .compute import compute, prepare
from jacbench.strategies.torch_auto import AUTO


@dataclasses.dataclass(frozen=True)
class Pick:
    """The fastest exact strategy of one quantity (and NTK mode) in a comparison. Call it
    with the model and the quantity's inputs, as the quantity's function (jacbench.ntk, ...);
    `prepare` likewise gives the prepared callable."""

    quantity: str
    mode: str | None
    strategy: str
    problem: str  # the problem (size) it won at
    median_s: float
    tied: tuple[str, ...] = ()  # strategies timed side by side that the run cannot tell apart

    def __call__(self, model, *inputs, **options):
        return compute(self.quantity, model, *inputs, **self._options(options))

    def prepare(self, model, *inputs, **options):
        return prepare(self.quantity, model, *inputs, **self._options(options))

    def _options(self, options):
        return {"strategy": self.strategy, **({"mode": self.mode} if self.mode else {}),
                **options}


def _present(df: pd.DataFrame, column: str) -> bool:
    return column in df and df[column].notna().any()


def best(results: pd.DataFrame, quantity: str | None = None, mode: str | None = None,
         problem: str | None = None) -> Pick:
    """The winning strategy of a comparison (the DataFrame of jacbench.compare, or
    bench.store.load of a results file): among the rows with status ok of exact strategies
    (torch.auto aside: it is compared with the fastest, never named it), the fastest. Rows timed
    side by side carry their ratio to the problem's fastest, which decides; otherwise the
    median time does. With several quantities or NTK modes, name one (`quantity`, `mode`);
    with several problems (batch sizes), the largest is used unless `problem` names one.
    ValueError when nothing ran ok, or the choice is ambiguous."""
    df = results
    for col, value in (("quantity", quantity), ("mode", mode), ("problem", problem)):
        if value is not None:
            if value not in set(df[col].dropna()):
                raise ValueError(f"no rows with {col} {value!r}; the results have "
                                 f"{', '.join(sorted(map(str, set(df[col].dropna())))) or 'none'}")
            df = df[df[col] == value]
    ok = df[(df["status"] == "ok") & df["exact"].fillna(False).astype(bool)
            & (df["strategy"] != AUTO)]
    if ok.empty:
        raise ValueError("no exact strategy ran ok in these results: nothing to pick")
    kinds = sorted({(q, m if isinstance(m, str) else None)
                    for q, m in zip(ok["quantity"], ok["mode"])}, key=str)
    if len(kinds) > 1:
        raise ValueError("the results hold several quantities or modes; name one: "
                         + ", ".join(f"best(df, {q!r}" + (f", mode={m!r})" if m else ")")
                                     for q, m in kinds))
    q, m = kinds[0]
    if problem is None:  # the largest problem
        ok = ok[ok["scale"] == ok["scale"].max()] if _present(ok, "scale") else ok
        ok = ok[ok["problem"] == sorted(ok["problem"])[-1]]
    if _present(ok, "ratio_to_fastest"):
        ranked = ok.sort_values(["ratio_to_fastest", "median_s"], na_position="last")
    else:
        ranked = ok.sort_values("median_s", na_position="last")
    top = ranked.iloc[0]
    tied = ()
    if _present(ranked, "tied_with_fastest"):
        tied = tuple(ranked.loc[ranked["tied_with_fastest"].fillna(False).astype(bool)
                                & (ranked["strategy"] != top["strategy"]), "strategy"])
    return Pick(q, m, str(top["strategy"]), str(top["problem"]), float(top["median_s"]), tied)
