"""The project's benchmarks (`make bench`). A regular package on purpose: opacus' wheel installs a
top-level `benchmarks` package into site-packages, which would otherwise win over this folder."""
