"""jacbench reports: one self-contained HTML page comparing strategies, built from results.

    from reports.build import build_report
    build_report("results/results.jsonl", "reports/out/index.html")
"""
