"""Independent formulations of upstream record handling that several tests compare against."""

from __future__ import annotations

import random


def upstream_draw(i: int, n: int) -> int:
    """Independent: the upstream idiom on Python's global random state."""
    random.seed(i)
    j = random.randint(0, n - 1)
    while j == i:
        j = random.randint(0, n - 1)
    return j
