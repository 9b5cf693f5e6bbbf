"""Benchmarks (speed, size, MACs, and the short recorded comparisons), on top of the library (nothing in it imports
them): `python -m lthdiff.bench NAME` writes JSON + Markdown; recorded results live in `bench/results/`.  Studies
(the recorded multi-seed experiments) are the library's: :mod:`lthdiff.study`."""
