"""`python -m jacbench` / `jacbench`: list what the suite holds, run a sweep, build the report.

    jacbench list [--quantity Q] [--framework F]
    jacbench run [--profile quick|full|test] [--quantity Q] [--strategy S] [--problem FAMILY]
                 [--size LABEL|SCALE] [--device cpu|cuda] [--dtype float32|float64]
                 [--framework F] [--results PATH] [--resume] [--timeout S] [--mem-cap GB]
                 [--threads T] [--jobs N] [--quiet] [--scheduler ADDRESS]
    jacbench run --model MODULE:FACTORY --input-shape 3,32,32 [--batch 8,32] [--outputs M]
                 [--quantity Q] [--strategy S] [--mode M] [--seed N] [...the options above]
    jacbench report RESULTS [--out PATH]
    jacbench calibrate RESULTS [--out PATH] [--dry-run]
    jacbench compare BEFORE AFTER [--factor X] [--within F] [--min-time MS]

Filters take names or comma-separated lists and may be repeated. Bad input gets one line on
stderr that says what is allowed, and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

DEFAULT_REPORT = Path("reports") / "out" / "index.html"


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise _Usage(f"{self.prog}: {message}")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return value
    parse.__name__ = kind.__name__
    return parse


def _parser() -> _Parser:
    from jacbench.bench.cases import DEVICES, DTYPES
    from jacbench.bench.profiles import PROFILES
    from jacbench.bench.store import DEFAULT_PATH

    top = _Parser(prog="jacbench", description="Benchmark and verify autodiff strategies.")
    sub = top.add_subparsers(dest="command", required=True,
                             metavar="{list,run,report,calibrate,compare}")

    ls = sub.add_parser("list", help="quantities, strategies and problem families")
    ls.add_argument("--quantity", action="append", help="only strategies for these quantities")
    ls.add_argument("--framework", action="append", help="only strategies of these frameworks")
    ls.set_defaults(func=_cmd_list)

    run = sub.add_parser("run", help="run a sweep and append its results")
    run.add_argument("--profile", default="quick", choices=list(PROFILES),
                     help="; ".join(f"{p.name}: {p.about}" for p in PROFILES.values()))
    run.add_argument("--quantity", action="append", help="quantity name(s)")
    run.add_argument("--strategy", action="append", help="strategy name(s), e.g. torch.jacrev")
    run.add_argument("--problem", action="append", help="problem family name(s)")
    run.add_argument("--size", action="append", help="size label (B=256,width=64) or scale")
    run.add_argument("--framework", action="append", help="framework(s): torch, jax, ...")
    run.add_argument("--mode", action="append", help="ntk mode(s): full, trace, diagonal")
    run.add_argument("--device", default="cpu", choices=list(DEVICES))
    run.add_argument("--dtype", choices=list(DTYPES), help="default: the profile's (float32)")
    run.add_argument("--results", type=Path, default=DEFAULT_PATH, help="JSON Lines file")
    run.add_argument("--resume", action="store_true", help="skip cases already in RESULTS")
    defaults = ", ".join(f"{p.name} {p.timeout_s:g} s / "
                         f"{'half the memory' if p.mem_cap_gb is None else f'{p.mem_cap_gb:g} GB'}"
                         for p in PROFILES.values())
    run.add_argument("--timeout", type=_positive(float),
                     help=f"seconds per case (profile defaults: {defaults})")
    run.add_argument("--mem-cap", type=_positive(float),
                     help="GB of memory growth per case, shared by the jobs when the profile "
                          "says half the memory")
    run.add_argument("--threads", type=_positive(int), help="CPU threads per case (default 1)")
    run.add_argument("--jobs", type=_positive(int),
                     help="cases run side by side, each on its own CPUs, timed one at a time "
                          "(default: CPUs / threads, at most 2)")
    run.add_argument("--quiet", action="store_true", help="one line per case, no bar")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="run the problems on the Dask cluster of this scheduler "
                          "(tcp://HOST:8786), one problem per worker; this machine only "
                          "selects the cases and writes the results")
    run.add_argument("--dry-run", action="store_true",
                     help="print the cases and an estimated time; run nothing")
    own = run.add_argument_group(
        "your own model", "benchmark a model the suite has never seen (default quantities: "
        "ntk, param_jacobian, ggn_vp, batch_jacobian)")
    own.add_argument("--model", metavar="MODULE:FACTORY",
                     help="a callable returning a torch.nn.Module or (jax_fn, params), e.g. "
                          "mypkg.models:make_net or models.py:make_net")
    own.add_argument("--input-shape", metavar="SHAPE", help="one sample's shape, e.g. 3,32,32")
    own.add_argument("--batch", metavar="B", action="append",
                     help="batch size(s), e.g. 8,32,128 (default 8)")
    own.add_argument("--outputs", type=_positive(int),
                     help="outputs per sample; checked against the model (default: inferred)")
    own.add_argument("--seed", type=int, default=0,
                     help="seed of the inputs, and of torch/numpy/random before the factory")
    run.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="build the HTML report from a results file")
    rep.add_argument("results", type=Path)
    rep.add_argument("--out", type=Path, default=DEFAULT_REPORT)
    rep.set_defaults(func=_cmd_report)

    cal = sub.add_parser("calibrate", help="fit torch.auto's cost model to a results file")
    cal.add_argument("results", type=Path)
    cal.add_argument("--out", type=Path, default=None,
                     help="where to write the coefficients (default: "
                          "auto_calibration.json in $JACBENCH_CACHE, else "
                          "~/.cache/jacbench, which torch.auto reads before the shipped one)")
    cal.add_argument("--dry-run", action="store_true",
                     help="print the hit rates, write nothing")
    cal.set_defaults(func=_cmd_calibrate)

    cmp = sub.add_parser("compare", help="two results files side by side: what moved, what "
                                         "changed status, how repeatable the timings were")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    cmp.add_argument("--factor", type=_positive(float), default=1.5,
                     help="list cases whose median moved by more than this (default 1.5)")
    cmp.add_argument("--within", type=_positive(float), default=0.10,
                     help="repeatability: medians within this fraction count as the same "
                          "(default 0.10)")
    cmp.add_argument("--min-time", type=_positive(float), default=1.0,
                     help="milliseconds: faster cases are left out of the timing comparison "
                          "(default 1)")
    cmp.set_defaults(func=_cmd_compare)
    return top


def _cmd_list(args) -> int:
    from jacbench import strategies
    from jacbench.strategies.names import unknown
    from jacbench.strategies.registry import FRAMEWORKS

    from jacbench.bench.problems import FAMILIES

    quantities = args.quantity or list(strategies.QUANTITIES)
    for q in quantities:
        strategies.quantity(q)
    for f in args.framework or ():
        if f not in FRAMEWORKS:
            raise unknown("framework", f, FRAMEWORKS)
    wrap = textwrap.TextWrapper(width=100, initial_indent="      ", subsequent_indent="      ")
    print("Quantities:")
    for q in quantities:
        spec = strategies.quantity(q)
        print(f"  {q:<15} {spec.layout:<10} {spec.meaning}")
    print("\nStrategies (quantity, name, framework, exact or approximate, idea and cost):")
    for q in quantities:
        for s in strategies.strategies(quantity=q):
            if args.framework and s.framework not in args.framework:
                continue
            print(f"  {q:<15} {s.name:<32} {s.framework:<8} "
                  f"{'exact' if s.exact else 'approx'}")
            print(wrap.fill(s.idea))
    print("\nProblem families, and their sizes per ladder (--profile test, quick, full):")
    for fam in FAMILIES.values():
        lines = _ladder_lines(fam.ladders, quantities)
        if lines:
            print(f"  {fam.name:<20} {fam.about}")
            for line in lines:
                print(wrap.fill(line))
    return 0


def _sizes_text(sizes: list[dict]) -> str:
    """A ladder's sizes in a few words: what varies, listed, then what stays, once
    ("width 32, 128, 512 (n=32, m=8)")."""
    keys = [k for k in sizes[0] if k != "scale"]
    varying = [k for k in keys if len({str(s.get(k)) for s in sizes}) > 1]
    fixed = ", ".join(f"{k}={sizes[0][k]}" for k in keys if k not in varying)
    if not varying:
        return fixed
    if len(varying) == 1:
        k = varying[0]
        text = f"{k} {', '.join(str(s[k]) for s in sizes)}"
    else:
        text = "; ".join(",".join(f"{k}={s[k]}" for k in varying) for s in sizes)
    return f"{text} ({fixed})" if fixed else text


def _ladder_lines(ladders: dict, quantities) -> list[str]:
    """Per ladder, the quantities with the same sizes together: "quick: jacobian, hessian:
    width 32, 128, 512 (n=32, m=8)"."""
    out = []
    for ladder in ("test", "quick", "full"):
        groups: dict[str, list[str]] = {}
        for q, sizes in ladders.get(ladder, {}).items():
            if q in quantities and sizes:
                groups.setdefault(_sizes_text(sizes), []).append(q)
        if groups:
            out.append(f"{ladder}: " + " | ".join(f"{', '.join(qs)}: {text}"
                                                  for text, qs in groups.items()))
    return out


def _cmd_run(args) -> int:
    import os

    from jacbench.bench.cases import BadInput, select_cases
    from jacbench.bench.runner import sweep

    cpus = len(os.sched_getaffinity(0))
    need = (args.threads or 1) * (args.jobs or 1)
    if need > cpus and not args.scheduler:  # with --scheduler, the workers' CPUs count
        raise BadInput(f"--threads {args.threads or 1} x --jobs {args.jobs or 1} needs {need} "
                       f"CPUs; this process may use {cpus}")
    from jacbench.bench.store import check

    if not args.dry_run:
        check(args.results, must_exist=False)  # never append rows to a file that is not ours
    if args.model and args.scheduler:
        raise _Usage("jacbench run: --scheduler runs the built-in problems; a --model runs on "
                     "this machine")
    if args.model:
        cases = _model_cases(args)
    elif args.scheduler:
        from jacbench.bench import distributed

        cases = distributed.select_cases(args.profile, args.quantity, args.strategy,
                                         args.problem, args.size, args.framework,
                                         device=args.device, dtype=args.dtype, modes=args.mode)
    else:
        for flag in ("input_shape", "batch", "outputs"):
            if getattr(args, flag):
                raise _Usage(f"jacbench run: --{flag.replace('_', '-')} goes with --model")
        cases = select_cases(args.profile, args.quantity, args.strategy, args.problem,
                             args.size, args.framework, args.device, args.dtype, args.mode)
    if args.dry_run:
        from jacbench.bench.estimate import dry_run_lines
        from jacbench.bench.profiles import PROFILES
        from jacbench.bench.runner import default_jobs

        jobs = args.jobs or default_jobs(args.threads or 1)
        print("\n".join(dry_run_lines(cases, PROFILES[args.profile], jobs)))
        if args.model:
            print("\n".join(_left_out(cases, args)))
        return 0
    if args.scheduler:
        summary = distributed.sweep_on_cluster(
            cases, args.scheduler, args.results, profile=args.profile, timeout_s=args.timeout,
            mem_cap_gb=args.mem_cap, threads=args.threads, jobs=args.jobs, resume=args.resume,
            quiet=args.quiet)
    else:
        summary = sweep(cases, args.results, profile=args.profile, timeout_s=args.timeout,
                        mem_cap_gb=args.mem_cap, threads=args.threads, jobs=args.jobs,
                        resume=args.resume,
                        quiet=args.quiet)
    print(summary)
    if summary.interrupted:
        print("interrupted: rerun with --resume to continue", file=sys.stderr)
        return 130
    if args.model:
        return _model_verdict(cases, summary, args)
    return 0


def _model_cases(args):
    from jacbench.bench.isolation import GB, Limits
    from jacbench.bench.profiles import PROFILES
    from jacbench.bench.user import factory_cases

    for flag in ("problem", "size"):
        if getattr(args, flag):
            raise _Usage(f"jacbench run: --{flag} selects built-in problems; with --model the "
                         "sizes are --batch")
    if not args.input_shape:
        raise _Usage("jacbench run: --model needs --input-shape, the shape of one sample "
                     "without the batch dimension (e.g. --input-shape 3,32,32)")
    profile = PROFILES[args.profile]
    cap = args.mem_cap or profile.mem_cap_gb
    limits = Limits(timeout_s=args.timeout or profile.timeout_s,
                    mem_cap_bytes=int(cap * GB) if cap else Limits().mem_cap_bytes)
    notes: list[str] = []
    cases = factory_cases(args.model, args.input_shape, ",".join(args.batch or ["8"]),
                          args.outputs, args.quantity, args.strategy, args.framework,
                          args.mode, args.device, args.dtype or profile.dtype, args.seed,
                          limits, notes)
    for line in notes:  # before the run: they say how to read its results
        print(f"note: {line}", file=sys.stderr)
    return cases


def _left_out(cases, args) -> list[str]:
    """The strategies of the other framework than the model's: one line each, not rows."""
    from jacbench.bench.user import check_names, left_out

    _, names, fws, _ = check_names(args.quantity, args.strategy, args.framework, args.mode)
    return left_out(list({id(c.problem): c.problem for c in cases}.values()), names, fws)


def _model_verdict(cases, summary, args) -> int:
    """Problems the model could not run are named on stderr, one line each; exit status 2
    when no case could run at all (nothing ok or disagreeing)."""
    from jacbench.bench.user import blocked_reasons

    for line in _left_out(cases, args):  # one line, not a row per case
        print(line)
    reasons = blocked_reasons(cases)
    ran = summary.statuses.get("ok", 0) + summary.statuses.get("disagrees", 0)
    for text in reasons:
        print(f"jacbench run: {text}", file=sys.stderr)
    return 2 if reasons and not ran else 0


def _cmd_report(args) -> int:
    from jacbench.bench.store import check

    check(args.results)
    try:
        from jacbench.reports.build import build_report
    except ImportError as exc:
        print(f"jacbench report: no report builder: reports.build.build_report cannot be "
              f"imported ({exc})", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = build_report(args.results, args.out, workers=len(os.sched_getaffinity(0)))
    print(f"report: {written or args.out}")
    return 0


def _cmd_calibrate(args) -> int:
    from jacbench.strategies.cost_model import user_calibration

    from jacbench.bench.calibrate import calibrate

    from jacbench.bench.store import check as check_results

    check_results(args.results)
    try:
        _, lines = calibrate(args.results,
                             None if args.dry_run else args.out or user_calibration())
    except ValueError as exc:
        raise _Usage(f"jacbench calibrate: {exc}") from None
    print("\n".join(lines))
    from jacbench.reports.auto import hit_rate  # measured: the torch.auto rows already in the results

    from jacbench.bench.store import load

    df = load(args.results)
    for versus in ("torch", "all"):
        rate, _ = hit_rate(df, versus)
        if rate.cases:
            print(f"measured torch.auto rows: {rate}")
    return 0


def _cmd_compare(args) -> int:
    from jacbench.reports.compare import compare_lines

    from jacbench.bench.store import load

    from jacbench.bench.store import check

    for path in (args.before, args.after):
        check(path)
    print("\n".join(compare_lines(load(args.before), load(args.after), factor=args.factor,
                                   tolerance=args.within, min_time_s=args.min_time / 1e3)))
    return 0


def main(argv=None) -> int:
    from jacbench.strategies.names import UnknownName
    from jacbench.strategies.user_model import UserModelError

    from jacbench.bench.cases import BadInput
    from jacbench.bench.store import BadResults

    command = "jacbench"
    try:
        args = _parser().parse_args(argv)
        command = f"jacbench {args.command}"
        return args.func(args)
    except _Usage as exc:
        print(str(exc), file=sys.stderr)
    except (UnknownName, BadInput, UserModelError, BadResults) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:  # `jacbench list | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2
