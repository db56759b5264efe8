"""The test suite. A regular package (not a namespace one), so that `tests` is this folder even where a
wheel has installed a top-level `tests` package into site-packages (torch-fidelity does)."""
