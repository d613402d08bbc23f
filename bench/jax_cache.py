"""JAX's persistent compilation cache, so that a problem's paired-timing child does not compile
every JAX strategy a second time (issue 16).

Compilation is most of a quick sweep's time (jit 0.7-1 s, eager op by op 2-3 s per case); the
paired child prepares again every JAX strategy that ran alone. So each isolated JAX case writes
what it compiles to a directory of its own, and the paired child reads the union of its
problem's directories: measured on one eager strategy, 1.0 s of first call became 0.37 s, a
jitted one 0.17 s became 0.03 s. Each case starts from an empty directory, so no case's
`first_call_s` is shortened by another case's compilations.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


# The settings `use` changes; `put_back` restores what it found.
_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
_FOUND: list[dict] = []


def use(directory: Path) -> None:
    """Cache every compilation of this process (a fresh child, before it compiles anything)
    in `directory`, however short or small."""
    try:
        import jax
    except ImportError:
        return
    if not _FOUND:
        _FOUND.append({k: getattr(jax.config, k) for k in _SETTINGS})
    directory.mkdir(parents=True, exist_ok=True)
    _set(jax, dict(zip(_SETTINGS, (str(directory), 0, 0))))


def put_back() -> None:
    """Restores the settings `use` changed in this process: a case run in the caller's own
    process (bench.isolation.InProcess) must not leave JAX writing to its directory, which is
    removed after it, nor caching every small compilation from then on."""
    if _FOUND:
        import jax

        _set(jax, _FOUND.pop())


def _set(jax, settings: dict) -> None:
    from jax.experimental.compilation_cache import compilation_cache

    for key, value in settings.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()  # a cache opened on the directory before stays open


def merge(directories, into: Path) -> Path:
    """Hard-link (or copy) the entries of `directories` into `into`; returns `into`. Entries
    are named by a hash of what was compiled: one name is one executable, whichever case
    wrote it."""
    into.mkdir(parents=True, exist_ok=True)
    for d in directories:
        if not d.is_dir():
            continue
        for entry in d.iterdir():
            target = into / entry.name
            if target.exists() or not entry.is_file():
                continue
            try:
                os.link(entry, target)
            except OSError:
                shutil.copyfile(entry, target)
    return into


def drop(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
