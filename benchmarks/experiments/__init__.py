"""goalqueue's app with one setting changed, for ``--variant "-A benchmarks.experiments.X"``.

Each module imports the real app and changes only what its name says, so that a benchmark
can measure the effect of a change before anyone makes it in ``workers/``.
"""
