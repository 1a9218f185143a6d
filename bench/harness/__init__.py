"""The load-test driver behind bench/run.sh: processes pinned to cores, their configurations,
the load generators, statistics and the Markdown report."""
