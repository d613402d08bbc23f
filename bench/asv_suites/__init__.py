"""asv suites: the runner's cases under asv, so they can be tracked across commits.

asv imports every module of this package (benchmark_dir in asv.conf.json); it is a sub-package
of bench/ so that the runner's own modules are not imported as benchmark modules.
"""
