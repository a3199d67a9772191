"""Matryoshka groups, written once (saevlm.sae.archs): sizes, bounds, prefix widths and each
latent's group agree with a plain loop, and group sizes that do not fit are refused."""

import numpy as np
import pytest

from saevlm.errors import UserError
from saevlm.sae.archs import group_bounds, group_of_latents, group_sizes, resolve_group_sizes, sizes_of_bounds


@pytest.mark.parametrize("sizes", [[4], [1, 2, 5], [16, 16, 32, 64, 128], [3, 0, 7]])
def test_bounds_widths_and_groups_agree_with_a_loop(sizes):
    bounds, start = [0], 0
    for s in sizes:
        start += s
        bounds.append(start)
    assert group_bounds(sizes) == bounds
    assert sizes_of_bounds(bounds) == sizes and sizes_of_bounds(bounds[1:]) == sizes  # prefix widths
    loop = [g for g, s in enumerate(sizes) for _ in range(s)]
    assert group_of_latents(sizes, sum(sizes)).tolist() == loop
    assert not group_of_latents(None, 5).any() and len(group_of_latents([], 5)) == 5


def test_group_sizes_are_resolved_from_fractions_or_the_sae():
    assert group_sizes([0.0625, 0.125, 0.25, 0.5625], 1024) == [64, 128, 256, 576]  # the authors' rule
    assert resolve_group_sizes([0.25, 0.75], [1, 2, 5], 8) == [2, 6]  # given fractions win
    assert resolve_group_sizes(None, (1, 2, 5), 8) == [1, 2, 5] and resolve_group_sizes(None, None, 8) is None
    with pytest.raises(UserError, match="must sum to 1") as err:
        resolve_group_sizes([0.5, 0.6], None, 8)
    assert err.value.field == "group_fractions"
    with pytest.raises(UserError, match=r"group sizes \[1, 2\] sum to 3, but there are 8 neurons"):
        resolve_group_sizes(None, [1, 2], 8)
    assert np.array_equal(group_of_latents([2, 6], 8), [0, 0, 1, 1, 1, 1, 1, 1])
