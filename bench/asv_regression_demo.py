"""The planted regression: shows that asv history catches a slowdown (issue 6).

Builds a throwaway git repository from this checkout's files with two commits: the baseline,
then one where strategy vjp/torch.autograd_grad does its whole computation ten times per call
(the kind of slip a refactor makes). asv runs at both commits the way `make asv-history` does
(bench.asv_history: a worktree per commit, `--set-commit-hash`), over two tiny benchmarks: the
slowed strategy and an untouched one. `asv compare --only-changed --no-stats --factor 3` must
list the slowed one as worse and must not list the untouched one.

    python -m jacbench.asv_regression_demo [--keep]      # exit status 0 when the slowdown is caught
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jacbench.bench.asv_history import git, history

QUANTITY, SLOWED, CONTROL = "vjp", "torch.autograd_grad", "torch.func_vjp"
REDO = 10  # the slowed strategy computes its result this many times per call
FACTOR = 3.0  # asv compare's threshold; REDO leaves a wide margin over timing noise
# Medians only (asv compare --no-stats): on a loaded machine a few preempted samples widen asv's
# confidence interval of a 10x slower benchmark until it overlaps the baseline's, and asv then
# calls a 10x step insignificant; the median ratio stays near REDO.
MACHINE = "jacbench-demo"

# Appended to strategies/__init__.py in the second commit: re-registers SLOWED with a prepare()
# whose callable repeats the work, so the planted commit differs from the baseline in one place.
PLANT = '''
# Planted regression (bench/asv_regression_demo.py): {quantity}/{name} repeats its work.
import dataclasses as _dataclasses

from .registry import add as _add, get as _get


def _repeating(prepare):
    def prepare_repeating(*args, **kwargs):
        fn = prepare(*args, **kwargs)

        def call():
            for _ in range({redo} - 1):
                fn()
            return fn()
        return call
    return prepare_repeating


_slowed = _get({quantity!r}, {name!r})
_add(_dataclasses.replace(_slowed, prepare=_repeating(_slowed.prepare)))
'''


@dataclass
class Outcome:
    table: str  # asv compare's output
    slowed_row: str | None  # the table row of the slowed strategy, when listed
    control_row: str | None  # the untouched strategy's row, when (wrongly) listed
    asv_status: dict[str, int]  # asv run's exit status per commit

    @property
    def caught(self) -> bool:
        return (self.slowed_row is not None and self.slowed_row.lstrip("| ").startswith("+")
                and self.control_row is None and not any(self.asv_status.values()))


def copy_checkout(src: Path, dst: Path) -> None:
    """The files git would commit from `src` (tracked and untracked, not ignored), as they are
    now, so the demo checks this working tree rather than its last commit."""
    files = git(src, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for rel in filter(None, files):
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=jacbench demo", "-c", "user.email=demo@jacbench.invalid",
        "commit", "-q", "--no-verify", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def row_of(table: str, strategy: str) -> str | None:
    """The compare table's row of `strategy`'s time_ benchmark, or None."""
    needle = f"time_{QUANTITY}('{strategy}'"
    return next((line for line in table.splitlines() if needle in line), None)


def run(workdir: Path, src: Path) -> Outcome:
    repo = workdir / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    copy_checkout(src, repo)
    base = commit_all(repo, "baseline")
    with open(repo / "strategies" / "__init__.py", "a") as f:
        f.write(PLANT.format(quantity=QUANTITY, name=SLOWED, redo=REDO))
    planted = commit_all(repo, f"planted regression: {QUANTITY}/{SLOWED} repeats its work")

    # asv keeps machine descriptions in ~/.asv-machine.json: a home of its own keeps the user's
    # untouched. The test ladder's tiny problem keeps each asv run to seconds.
    env = {**os.environ, "HOME": str(workdir / "home"), "JACBENCH_ASV_LADDER": "test"}
    (workdir / "home").mkdir()
    cls = "".join(w.capitalize() for w in QUANTITY.split("_"))
    names = "|".join(re.escape(s) for s in (SLOWED, CONTROL))
    only = rf"\.{cls}\.time_{QUANTITY}\('({names})'"
    status = history(repo, [base, planted], MACHINE, ["--bench", only, "--show-stderr"], env)
    table = subprocess.run(
        [sys.executable, "-m", "asv", "compare", "--only-changed", "--no-stats",
         "--factor", str(FACTOR),
         "--machine", MACHINE, base, planted],
        cwd=repo, env=env, check=True, capture_output=True, text=True).stdout
    return Outcome(table, row_of(table, SLOWED), row_of(table, CONTROL), status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jacbench.asv_regression_demo",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the throwaway repository")
    args = ap.parse_args(argv)
    src = Path(git(Path.cwd(), "rev-parse", "--show-toplevel"))
    workdir = Path(tempfile.mkdtemp(prefix="jacbench-asv-demo-"))
    try:
        out = run(workdir, src)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"asv compare --only-changed --no-stats --factor {FACTOR} baseline planted:\n"
          f"{out.table}")
    if args.keep:
        print(f"kept {workdir / 'repo'} (results in .asv/results)")
    print("caught: the planted slowdown is flagged, the untouched strategy is not" if out.caught
          else f"NOT caught: slowed row {out.slowed_row!r}, control row {out.control_row!r}, "
               f"asv exit statuses {list(out.asv_status.values())}")
    return 0 if out.caught else 1


if __name__ == "__main__":
    sys.exit(main())
