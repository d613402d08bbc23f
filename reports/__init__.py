"""jacbench reports: one self-contained HTML page comparing strategies, built from results.

    from jacbench.reports.build import build_report
    build_report("results/results.jsonl", "reports/out/index.html")
"""

if __name__ != "jacbench.reports":
    raise ImportError("jacbench's packages are imported as jacbench.strategies, jacbench.bench "
                      "and jacbench.reports (`from jacbench import reports`); the command line "
                      "is `jacbench` or `python -m jacbench`")
