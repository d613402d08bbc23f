
if __name__ != "jacbench.bench":
    raise ImportError("jacbench's packages are imported as jacbench.strategies, jacbench.bench "
                      "and jacbench.reports (`from jacbench import bench`); the command line "
                      "is `jacbench` or `python -m jacbench`")
