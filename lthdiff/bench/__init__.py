"""Benchmarks, on top of the library (nothing in it imports them): `python -m lthdiff.bench NAME` writes JSON + Markdown; recorded results and studies live in `bench/results/`."""
