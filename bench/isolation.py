"""Run one function in a forked child process under a time limit and a memory cap.

The runner process is a "zygote": it has imported torch, JAX, the strategies and the problems
but never computes with them, so forking it is cheap (~10 ms) and safe. (After torch has run
an OpenMP region, a forked child that uses OpenMP hangs: libgomp is not fork-safe after use.)

The parent polls the child every `poll_s` seconds: its RSS growth over the parent's (the
pages both share at fork count once) against the cap, and the wall time against the limit.
The child reports through a pipe: partial results while it works, then its final result.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import faulthandler
import gc
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

from . import jax_cache
from .failures import classify, one_line

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


PAUSE = "_paused"  # a partial-message key: True while the child waits for the exclusive lock
QUIET = "_quiet"  # a partial-message key: True while the child times and wants the others stopped
QUIET_SETTLE_S = 0.01  # for the parent to read the message and stop the others


@contextlib.contextmanager
def exclusive(lock_path, send=None, quiet: bool = False):
    """Hold the machine-wide timing lock (an flock, released even if the holder is killed).

    Cases run side by side during their untimed and first-call phases, but steady-state timing
    happens alone. `send` tells the parent to stop this child's clock while it waits.
    `quiet`: the parent also stops (SIGSTOP) the other children while this one holds the lock
    (`Child.hold`). Why: the lock keeps two timings apart, not a timing from the other slot's
    compile or reference work on the other core, which shares the caches and the memory bus
    (issue 16): under a memory-bound load there, ratios of one problem's strategies moved by
    up to 10%, against 2-5% on an idle machine.
    """
    if lock_path is None:
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if send:
            send({PAUSE: True})
        fcntl.flock(fd, fcntl.LOCK_EX)
        if send:
            send({PAUSE: False, **({QUIET: True} if quiet else {})})
            if quiet:
                time.sleep(QUIET_SETTLE_S)
        yield
    finally:
        if send and quiet:
            send({QUIET: False})
        os.close(fd)  # releases the lock


class Child:
    """One forked child running `fn(send)`, watched by `poll`; see `run_isolated`."""

    def __init__(self, fn: Callable[[Callable[[dict], None]], Any], limits: Limits = Limits(),
                 log_path=None):
        self.limits = limits
        # Frozen objects are skipped by the collector: without this, the child's first
        # collection walks (and so copies) every object the zygote imported, ~0.4 s per case.
        gc.freeze()
        self.conn, child_conn = _CTX.Pipe(duplex=False)
        self.base = rss_bytes(os.getpid())
        self.proc = _CTX.Process(target=_child, args=(fn, child_conn, log_path), daemon=True)
        self.start = self.clock_from = time.monotonic()
        self.used = 0.0  # seconds counted against the time limit, pauses left out
        self.holds: set[str] = set()  # why its clock is stopped: "lock" (waits), "stopped"
        self.quiet = False  # it is timing and asks for the other children to be stopped
        self.out = Outcome("error")
        self.final = None
        self.killed = None
        self.eof = False
        with warnings.catch_warnings():
            # Python 3.12 warns on every fork of a process with threads; the zygote's are
            # OpenBLAS's idle workers, which handle fork themselves.
            warnings.filterwarnings("ignore", "This process .* is multi-threaded",
                                    DeprecationWarning)
            self.proc.start()
        child_conn.close()  # so that the child's exit shows as EOF here

    def poll(self, wait_s: float = 0.0) -> Outcome | None:
        """Read what the child sent, check its memory and clock; the Outcome once it ended."""
        if self.final is None and self.killed is None:
            self._read(wait_s)
        if self.final is None and self.killed is None:
            self._watch()
        if self.final is None and self.killed is None and not self.eof and (
                self.proc.is_alive() or self.conn.poll(0)):
            return None
        return self._finish()

    def _read(self, wait_s: float) -> None:
        while self.conn.poll(wait_s):
            wait_s = 0
            try:
                kind, data = self.conn.recv()
            except (EOFError, OSError):
                self.eof = True  # the child ended without a final message
                return
            if kind != "partial":
                self.final = (kind, data)
                return
            if PAUSE in data:
                self._clock("lock", data.pop(PAUSE))
            if QUIET in data:
                self.quiet = data.pop(QUIET)
            self.out.partial.update(data)

    def _clock(self, why: str, held: bool) -> None:
        """Stop (held) or restart the time-limit clock for reason `why`; it runs when no
        reason holds it."""
        now = time.monotonic()
        if held and not self.holds:
            self.used += now - self.clock_from
        elif not held and self.holds == {why}:
            self.clock_from = now
        if held:
            self.holds.add(why)
        else:
            self.holds.discard(why)

    def hold(self, stopped: bool) -> None:
        """Stop (SIGSTOP) or continue this child and the processes it started (e.g.
        inductor's compile workers) while another child times (`exclusive(quiet=True)`); its
        time limit does not run while it is stopped."""
        if stopped == ("stopped" in self.holds) or not self.proc.is_alive():
            return
        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            return
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGSTOP if stopped else signal.SIGCONT)
        self._clock("stopped", stopped)

    def _watch(self) -> None:
        grown = rss_bytes(self.proc.pid) - self.base
        self.out.max_rss_bytes = max(self.out.max_rss_bytes, grown)
        now = time.monotonic()
        used = self.used + (0 if self.holds else now - self.clock_from)
        cap, limit = self.limits.mem_cap_bytes, self.limits.timeout_s
        if grown > cap:
            self.killed = ("oom", f"memory grew past the {cap / GB:.3g} GB cap "
                                  f"({grown / GB:.3g} GB after {now - self.start:.1f} s; --mem-cap "
                                  f"raises it)")
        elif used > limit:
            self.killed = ("timeout", f"exceeded the {limit:g} s time limit")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.hold(False)  # its stopped helper processes must not stay behind stopped
            self.proc.kill()
        self.proc.join()
        self.conn.close()

    def _finish(self) -> Outcome:
        out, proc = self.out, self.proc
        if self.killed or self.final is None:
            if proc.is_alive():
                self.hold(False)
                proc.kill()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        self.conn.close()
        out.wall_s = time.monotonic() - self.start
        if self.killed:
            out.status, out.message = self.killed
        elif self.final is None:
            code = proc.exitcode
            if code is not None and code < 0:
                if -code == signal.SIGKILL:  # not ours: the kernel's out-of-memory killer
                    out.status = "oom"
                    out.message = "killed by SIGKILL (the kernel's out-of-memory killer?)"
                else:
                    out.message = f"child process died of {_signal_name(-code)}"
            else:
                out.message = f"child process exited with status {code} without a result"
        elif self.final[0] == "done":
            out.status, out.result = "done", self.final[1]
        else:
            out.status, out.message = self.final
        return out


class InProcess:
    """`Child`'s interface for running `fn(send)` right here, without a fork: for callers whose
    process cannot fork safely (CUDA or a JAX backend already started, e.g. jacbench.compare
    from a notebook). No time limit or memory cap can be enforced; an exception still becomes
    an 'error' (or 'oom') outcome. The CPU affinity and torch's thread count that the case sets
    (bench.harness.pin_threads) and the JAX cache settings (bench.jax_cache.use) are put back
    afterwards."""

    conn = None  # nothing to wait on: the outcome is ready when the constructor returns

    def __init__(self, fn: Callable[[Callable[[dict], None]], Any], limits: Limits = Limits(),
                 log_path=None):
        import torch

        self.out = Outcome("error")
        affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
        xla_flags = os.environ.get("XLA_FLAGS")
        start = time.monotonic()
        try:
            self.out.result = fn(self.out.partial.update)
            self.out.status = "done"
        except Exception as exc:  # noqa: BLE001 - the case's failure is an outcome
                self.out.status, self.out.message = classify(exc), one_line(exc)
        finally:
            os.sched_setaffinity(0, affinity)
            torch.set_num_threads(threads)
            if xla_flags is None:
                os.environ.pop("XLA_FLAGS", None)
            else:
                os.environ["XLA_FLAGS"] = xla_flags
            jax_cache.put_back()
            self.out.partial.pop(PAUSE, None)
            self.out.partial.pop(QUIET, None)
            self.out.wall_s = time.monotonic() - start

    quiet = False  # nothing else runs beside it

    def poll(self, wait_s: float = 0.0) -> Outcome:
        return self.out

    def hold(self, stopped: bool) -> None:
        """Nothing runs beside an in-process case (one job at a time): nothing to stop."""

    def kill(self) -> None:
        pass


def run_isolated(fn: Callable[[Callable[[dict], None]], Any], limits: Limits = Limits(),
                 log_path=None) -> Outcome:
    """Call `fn(send)` in a forked child and watch it; never raises for the child's failures.

    `fn` may call `send(dict)` any number of times; the dicts are merged into
    `Outcome.partial`. Its return value (picklable) becomes `Outcome.result`.
    """
    child = Child(fn, limits, log_path)
    try:
        while (out := child.poll(limits.poll_s)) is None:
            pass
    except BaseException:
        child.kill()
        raise
    return out


def prepare_zygote() -> None:
    """Import everything a case needs once, here, so children start warm; compute nothing."""
    # Modules torch imports lazily on first use: ~1 s (torch._dynamo, on torch.func's first
    # call) and ~0.3 s (jvp's decompositions) per child if left to each one.
    import torch._decomp.decompositions_for_jvp  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.func  # noqa: F401
    import torch.utils.benchmark  # noqa: F401

    try:
        import jax  # noqa: F401
        import jax.numpy  # noqa: F401
        from jax._src import xla_bridge
    except ImportError:
        return
    if getattr(xla_bridge, "_backends", None):
        import warnings

        warnings.warn("a JAX backend was started before forking cases; JAX is not fork-safe "
                      "after that, so JAX cases may hang (is there JAX work at import time?)",
                      stacklevel=2)
