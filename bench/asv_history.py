"""asv over git history without building a virtualenv per commit (`make asv-history`).

asv's own way to benchmark an old commit is to install it into a fresh virtualenv; with torch
and JAX among the dependencies that is gigabytes and minutes per environment, and no network in
CI. Here every commit runs in this interpreter instead (`asv run --python=same`): the commit is
checked out into a temporary git worktree, which goes first on the benchmarks' PYTHONPATH (ahead
of the editable install, whose finder Python consults last), so `strategies` and `bench` are
imported from that commit; its results are saved under its hash with `--set-commit-hash`. The benchmark suite is the
current checkout's bench/asv_suites, as in asv's own model; it skips the strategies and problems
an older commit lacks. The dependencies are this environment's, so a graph's steps come from the
project's code, not from library upgrades.

    python -m jacbench.asv_history [-n N] [--machine NAME] [REV ...] [-- ASV-RUN-ARGS ...]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def commits(repo: Path, revs: list[str], n: int) -> list[str]:
    """Full hashes of `revs`, or of the last `n` first-parent commits of HEAD; oldest first."""
    if revs:
        return [git(repo, "rev-parse", "--verify", f"{r}^{{commit}}") for r in revs]
    return git(repo, "rev-list", "--first-parent", "-n", str(n), "HEAD").split()[::-1]


def asv(repo: Path, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`asv ARGS` run from `repo`, where its asv.conf.json is; output passes through."""
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=repo, env=env, **kw)


def ensure_machine(repo: Path, machine: str, env: dict | None = None) -> None:
    """Describe this machine without questions (CI has no terminal); asv keeps it in
    ~/.asv-machine.json and refuses to run before it exists."""
    # stdout only echoes the questions it answers itself
    if asv(repo, "machine", "--yes", "--machine", machine, env=env,
           stdout=subprocess.DEVNULL).returncode:
        raise SystemExit(f"asv machine --machine {machine} failed")


def run_commit(repo: Path, sha: str, machine: str, asv_args: list[str],
               env: dict | None = None) -> int:
    """asv's results for commit `sha`, measured with that commit's code; asv's exit status."""
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="jacbench-asv-") as tmp:
        tree = Path(tmp) / sha[:12]
        git(repo, "worktree", "add", "--detach", str(tree), sha)
        try:
            # asv drops PYTHONPATH from the benchmark processes' environment and sets
            # ASV_PYTHONPATH in its place.
            env["ASV_PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(tree), env.get("ASV_PYTHONPATH")]))
            return asv(repo, "run", "--python=same", "--set-commit-hash", sha,
                       "--machine", machine, *asv_args, env=env).returncode
        finally:
            git(repo, "worktree", "remove", "--force", str(tree))


def history(repo: Path, shas: list[str], machine: str, asv_args: list[str],
            env: dict | None = None) -> dict[str, int]:
    """Run asv at each commit in turn; {sha: asv exit status}."""
    ensure_machine(repo, machine, env)
    status = {}
    for i, sha in enumerate(shas, 1):
        print(f"== asv-history {i}/{len(shas)}: {git(repo, 'log', '-1', '--format=%h %s', sha)}",
              flush=True)
        status[sha] = run_commit(repo, sha, machine, asv_args, env)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    asv_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, asv_args = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(prog="python -m jacbench.asv_history", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("revs", nargs="*", help="commits to run (default: the last N of HEAD)")
    ap.add_argument("-n", type=int, default=5, help="how many commits back from HEAD (default 5)")
    ap.add_argument("--machine", default=socket.gethostname(),
                    help="asv machine name (default: the host name, as asv's own default)")
    ap.add_argument("--repo", type=Path, default=Path.cwd(), help="the git repository")
    args = ap.parse_args(argv)
    status = history(args.repo, commits(args.repo, args.revs, args.n), args.machine, asv_args)
    failed = [sha[:8] for sha, rc in status.items() if rc]
    print(f"asv-history: {len(status) - len(failed)} of {len(status)} commits benchmarked"
          + (f"; asv failed at {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
