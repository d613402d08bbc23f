"""`jacbench run --scheduler`: a sweep on a Dask cluster as a user runs one. A scheduler and two
workers start as separate processes on localhost, the sweep's client is the command line, and
one worker is killed (its whole process group, as when its machine dies) while it runs a
problem: the results must hold every case of the selection exactly once, nothing lost and
nothing doubled, and --resume must finish what an interrupted client left."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest

from jacbench.bench import store
from jacbench.bench.cases import select_cases
from jacbench.cli import main

pytest.importorskip("distributed")

# Two small problems (jvp and vjp of an MLP, 11 cases): a task each, a few seconds (most of it
# the task's fresh process importing torch and JAX).
SELECTION = ["--profile", "test", "--quantity", "jvp,vjp", "--problem", "mlp_width",
             "--framework", "torch"]
PLAIN = ("ok", "disagrees", "not_applicable")  # what these cases may end in on any machine


def _spawn(args, log, **env):
    # Its own process group: killing the group is a machine dying (worker, nanny, their runs).
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **env})


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def cluster(tmp_path):
    """(scheduler address, {worker name: its process}, a client to look at the scheduler)."""
    from distributed import Client

    log = open(tmp_path / "cluster.log", "w")
    address_file = tmp_path / "scheduler.json"
    # A task whose worker dies is retried once on another worker, then reported (the README
    # tells users to set the same on their scheduler; Dask's default is 3 tries).
    scheduler = _spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--scheduler-file", str(address_file)], log,
                       DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1")
    procs = [scheduler]
    try:
        for _ in range(300):
            if address_file.exists() and address_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(address_file.read_text())["address"]
        workers = {}
        for name in ("w1", "w2"):
            workers[name] = _spawn(["distributed.cli.dask_worker", address, "--nworkers", "1",
                                    "--nthreads", "1", "--memory-limit", "0", "--no-dashboard",
                                    "--name", name], log)
            procs.append(workers[name])
        client = Client(address, timeout=30, set_as_default=False)
        client.wait_for_workers(2, timeout=60)
        yield address, workers, client
        client.close()
    finally:
        for p in procs:
            _stop(p)
        log.close()


def _busy_worker(client, timeout_s=60.0) -> str:
    """The name of a worker running a task, once one is (its task's run has started)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        names = {a: w.get("name") for a, w in client.scheduler_info()["workers"].items()}
        # two calls, two moments: a worker processing may not be in the client's (periodically
        # refreshed) scheduler info yet; the next look finds it
        busy = [names[a] for a, keys in client.processing().items() if keys and a in names]
        if busy:
            return busy[0]
        time.sleep(0.1)
    raise AssertionError(f"no worker started a task within {timeout_s:.0f} s")


def test_sweep_survives_a_dead_worker_and_resumes(cluster, tmp_path):
    address, workers, client = cluster
    results = tmp_path / "results.jsonl"
    run = [sys.executable, "-m", "jacbench", "run", *SELECTION, "--jobs", "1", "--quiet",
           "--results", str(results), "--scheduler", address]
    sweep = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = _busy_worker(client)
    time.sleep(1.0)  # into the task's run, not at its start
    _stop(workers[victim])
    out, _ = sweep.communicate(timeout=240)
    assert sweep.returncode == 0, out

    expected = {c.case_id for c in select_cases("test", ["jvp", "vjp"], None,
                                                ["mlp_width"], None, ["torch"])}
    rows = store.read_rows(results)
    counts = Counter(r["case_id"] for r in rows)
    assert set(counts) == expected  # what a local run of the selection writes a row for
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert {r["status"] for r in rows} <= set(PLAIN), Counter(r["status"] for r in rows)
    assert len({r["run_id"] for r in rows}) == 1  # one sweep, one run in the report
    assert all(r["hostname"] and r["cpu"] for r in rows)  # where each row was measured
    assert f"ran {len(expected)} cases" in out

    # An interrupted client: the last problem's rows never arrived. --resume runs only it.
    last = rows[-1]["problem"], rows[-1]["quantity"]
    kept = [r for r in rows if (r["problem"], r["quantity"]) != last]
    results.unlink()
    store.append_rows(results, kept)
    again = subprocess.run(run + ["--resume"], capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"ran {len(rows) - len(kept)} cases" in again.stdout
    assert f"({len(kept)} already done, skipped by --resume)" in again.stdout
    assert {r["case_id"] for r in store.read_rows(results)} == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, says", [
    # The port is chosen when the test runs: a parameter drawn at collection would differ
    # between pytest-xdist's workers, which then refuse to run at all.
    ("tcp://127.0.0.1:{free_port}", "no Dask scheduler answers at"),
    ("tcp://127.0.0.1", "is not a Dask scheduler address"),
    ("ftp://127.0.0.1:8786", "is not a Dask scheduler address"),
])
def test_unreachable_scheduler_is_one_clear_line(address, says, tmp_path, capsys):
    address = address.format(free_port=_free_port())
    code = main(["run", *SELECTION, "--results", str(tmp_path / "r.jsonl"),
                 "--scheduler", address])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("jacbench run: ") and says in err and "dask scheduler" in err, err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "r.jsonl").exists()
