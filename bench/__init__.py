"""`make bench`: each part is a module here with `run() -> dict`; figures are printed
as tables and written as JSON under bench/results/."""
