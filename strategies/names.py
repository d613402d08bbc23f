"""Unknown names: the one error every look-up raises (quantity, strategy, framework, problem,
profile ...), with the close matches of a typo."""
from __future__ import annotations

import difflib


class UnknownName(KeyError):
    """An unknown quantity, strategy, framework or problem name; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def unknown(kind: str, name: str, known) -> UnknownName:
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}?" if close else f"known: {', '.join(known)}"
    return UnknownName(f"unknown {kind} {name!r}; {hint}")
