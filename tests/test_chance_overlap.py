"""pruners.channels.chance_overlap: the overlap random prunings to the same widths would have, against an exact
hypergeometric computation, per GroupNorm block and per level."""
from __future__ import annotations

from itertools import product
from math import comb

import pytest

from lthdiff.pruners.channels import StructuredInfo, chance_overlap


def _hyper(n: int, k: int) -> dict[int, float]:  # P(|A ∩ B| = x), A, B uniform k-subsets of n
    return {x: comb(k, x) * comb(n - k, k - x) / comb(n, k) for x in range(max(0, 2 * k - n), k + 1)}


def _exact(n: int, k: int, blocks: int) -> float:
    """E[Jaccard] when k/blocks of each of ``blocks`` equal blocks are drawn: the intersection is a sum of
    independent hypergeometrics, the union 2k minus it."""
    per = _hyper(n // blocks, k // blocks)
    total = 0.0
    for xs in product(per, repeat=blocks):
        p = 1.0
        for x in xs:
            p *= per[x]
        total += p * sum(xs) / (2 * k - sum(xs))
    return total


def _info(groups: dict[str, tuple[int, int, int, int]]) -> StructuredInfo:
    info = StructuredInfo("magnitude", ((), ()), (0, 0), (0, 0), (0, 0))
    for g, (n, blocks, unit, k) in groups.items():
        info.blocks[g], info.kept[g] = (n, blocks, unit), list(range(k * unit))
    return info


@pytest.mark.parametrize("n, k, blocks", [(32, 24, 1), (48, 32, 1), (48, 24, 8), (16, 8, 2)])
def test_one_group_matches_the_exact_expectation(n, k, blocks):
    assert chance_overlap(_info({"g": (n, blocks, 1, k)}), draws=20000) == pytest.approx(_exact(n, k, blocks), abs=0.005)


def test_levels_that_keep_different_fractions_average_not_the_first():
    info = _info({"level0": (32, 1, 1, 24), "level1": (48, 1, 1, 32), "level2": (48, 1, 1, 32)})
    want = (_exact(32, 24, 1) + 2 * _exact(48, 32, 1)) / 3
    assert chance_overlap(info, draws=20000) == pytest.approx(want, abs=0.005)
    assert abs(want - _exact(32, 24, 1)) > 0.05  # level 0's chance alone is a different baseline


def test_whole_heads_count_as_units_and_keeping_everything_is_certain():
    heads = _info({"attn.to_q": (6, 1, 8, 3)})  # 3 of 6 heads of 8 channels
    assert chance_overlap(heads, draws=20000) == pytest.approx(_exact(6, 3, 1), abs=0.005)
    assert chance_overlap(_info({"g": (16, 2, 1, 16)})) == 1.0
    assert chance_overlap(heads, seed=1) == chance_overlap(heads, seed=1)
