"""What a sweep shows while it runs (a bar, or one line per case) and what it prints at the end."""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .cases import Case


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _fmt_time(s) -> str:
    if s is None:
        return ""
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


class Progress:
    """A tqdm bar with the current case and an ETA on a terminal; one line per case otherwise
    (CI logs), each with count/total, elapsed time and ETA."""

    def __init__(self, total: int, stream=None, tty: bool | None = None):
        self.total, self.count, self.start = total, 0, time.monotonic()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        if self.tty and total:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread in the process that forks
            self.bar = tqdm(total=total, file=self.stream, unit="case", dynamic_ncols=True,
                            smoothing=0.05, mininterval=0.25)

    def begin(self, case: Case) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{case.quantity}/{case.problem.id}/{case.strategy.name}",
                                     refresh=True)

    def end(self, case: Case, row: dict) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.count * (self.total - self.count)
        detail = _fmt_time(row.get("median_s")) if row["status"] in ("ok", "disagrees") else \
            (row.get("message") or "")[:100]
        print(f"[{self.count}/{self.total} {_clock(elapsed)} eta {_clock(eta)}] {case.quantity} "
              f"{case.problem.id} {case.strategy.name}: {row['status']} {detail}".rstrip(),
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class Summary:
    run_id: str
    results: Path
    log: Path
    statuses: Counter = field(default_factory=Counter)
    already_done: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    paired: int = 0  # problems whose ok strategies were timed side by side
    unpaired: int = 0  # problems (with an ok case) that kept their isolated timings

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        done = f" ({self.already_done} already done, skipped by --resume)" if self.already_done \
            else ""
        head = "interrupted after" if self.interrupted else "ran"
        pairs = f"\ntimed side by side: {self.paired} problems; alone: {self.unpaired}" \
            if self.paired or self.unpaired else ""
        return (f"{head} {sum(self.statuses.values())} cases in {self.elapsed_s:.0f} s{done}: "
                f"{counts or 'nothing to do'}{pairs}\nresults: {self.results}\n"
                f"child output: {self.log}")
