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


def use(directory: Path) -> None:
    """Cache every compilation of this process (a fresh child, before it compiles anything)
    in `directory`, however short or small."""
    try:
        import jax
    except ImportError:
        return
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
