"""Run one function in a forked child process under a time limit and a memory cap.

The runner process is a "zygote": it has imported torch, JAX, the strategies and the problems
but never computes with them, so forking it is cheap (~10 ms) and safe. (After torch has run
an OpenMP region, a forked child that uses OpenMP hangs: libgomp is not fork-safe after use.)

The parent polls the child every `poll_s` seconds: its RSS growth over the parent's (the
pages both share at fork count once) against the cap, and the wall time against the limit.
The child reports through a pipe: partial results while it works, then its final result.
"""
from __future__ import annotations

import ctypes
import faulthandler
import gc
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

_CTX = mp.get_context("fork")
_PAGE = os.sysconf("SC_PAGE_SIZE")
GB = 1024 ** 3


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 30.0
    mem_cap_bytes: int = 4 * GB
    poll_s: float = 0.05


@dataclass
class Outcome:
    """`status`: 'done' (the child returned `result`), 'error' (it raised, or died), 'timeout'
    or 'oom'. `partial` holds what it sent before it ended; `message` says what went wrong."""

    status: str
    result: Any = None
    partial: dict = field(default_factory=dict)
    message: str = ""
    wall_s: float = 0.0
    max_rss_bytes: int = 0


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _die_with_parent() -> None:
    # A sweep killed with kill -9 must not leave its current case running on.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(fn, conn, log_path):
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent handles it and kills this child,
    # which must not report the interrupt as the case's error.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if log_path:
        # Library chatter (XLA logs, vmap fallback notices) goes to the run's log, not the bar.
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        if faulthandler.is_enabled():  # its report of a crash belongs in the log too
            faulthandler.enable(file=sys.stderr)
    try:
        result = fn(lambda partial: conn.send(("partial", partial)))
        conn.send(("done", result))
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent
        traceback.print_exc()
        from .harness import classify, one_line

        try:
            conn.send((classify(exc), one_line(exc)))
        except Exception:
            pass
    finally:
        try:
            conn.close()
        finally:
            os._exit(0)  # skip the parent's atexit handlers and buffered output


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def run_isolated(fn: Callable[[Callable[[dict], None]], Any], limits: Limits = Limits(),
                 log_path=None) -> Outcome:
    """Call `fn(send)` in a forked child and watch it; never raises for the child's failures.

    `fn` may call `send(dict)` any number of times; the dicts are merged into
    `Outcome.partial`. Its return value (picklable) becomes `Outcome.result`.
    """
    # Frozen objects are skipped by the collector: without this, the child's first collection
    # walks (and so copies) every object the zygote imported, ~0.4 s per case.
    gc.freeze()
    parent_conn, child_conn = _CTX.Pipe(duplex=False)
    base = rss_bytes(os.getpid())
    proc = _CTX.Process(target=_child, args=(fn, child_conn, log_path), daemon=True)
    start = time.monotonic()
    proc.start()
    child_conn.close()  # so that the child's exit shows as EOF here
    out = Outcome("error")
    final = None
    killed = None
    try:
        while final is None:
            if parent_conn.poll(limits.poll_s):
                try:
                    kind, data = parent_conn.recv()
                except (EOFError, OSError):
                    break  # the child ended without a final message
                if kind == "partial":
                    out.partial.update(data)
                else:
                    final = (kind, data)
                continue
            grown = rss_bytes(proc.pid) - base
            out.max_rss_bytes = max(out.max_rss_bytes, grown)
            elapsed = time.monotonic() - start
            if grown > limits.mem_cap_bytes:
                killed = ("oom", f"memory grew past the {limits.mem_cap_bytes / GB:.3g} GB cap "
                                 f"({grown / GB:.3g} GB after {elapsed:.1f} s)")
                break
            if elapsed > limits.timeout_s:
                killed = ("timeout", f"exceeded the {limits.timeout_s:g} s time limit")
                break
            if not proc.is_alive() and not parent_conn.poll(0):
                break
    finally:
        if killed or final is None:
            if proc.is_alive():
                proc.kill()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent_conn.close()
    out.wall_s = time.monotonic() - start
    if killed:
        out.status, out.message = killed
    elif final is None:
        code = proc.exitcode
        if code is not None and code < 0:
            name = _signal_name(-code)
            if -code == signal.SIGKILL:  # not ours: the kernel's out-of-memory killer
                out.status = "oom"
                out.message = "killed by SIGKILL (the kernel's out-of-memory killer?)"
            else:
                out.message = f"child process died of {name}"
        else:
            out.message = f"child process exited with status {code} without a result"
    elif final[0] == "done":
        out.status, out.result = "done", final[1]
    else:
        out.status, out.message = final
    return out
