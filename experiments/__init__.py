"""Studies and benchmarks, each run as ``python -m experiments.<name>``."""
