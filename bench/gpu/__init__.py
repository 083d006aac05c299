"""Parts of ``bench/gpu_suite.py`` (a package, so that ``make bench`` does not run them as scripts)."""
