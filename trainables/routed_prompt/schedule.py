"""The router temperature schedule (spec section 3): a pure function of the step."""

from __future__ import annotations

import math


def default_anneal_rate(total_steps: int) -> float:
    """The rate r that changes tau by a factor e over ``total_steps`` (exp(r * total_steps) = e)."""
    return 1.0 / max(1, int(total_steps))


def temperature_at(step: int, tau0: float, direction: int, rate: float, low: float, high: float) -> float:
    """tau(step) = clip(tau0 * exp(direction * rate * step), low, high).

    Computed from the step alone, never by compounding a factor step after step, so
    a resumed run and a fresh run agree and tau cannot collapse numerically.
    ``direction`` 0 keeps tau at tau0 (still clipped into [low, high]).
    """
    if direction not in (-1, 0, 1):
        raise ValueError(f"direction must be -1, 0 or +1, got {direction!r}")
    if low > high:
        raise ValueError(f"low ({low}) exceeds high ({high})")
    # Clip the exponent as well: exp overflows long before the clip would apply.
    exponent = max(-700.0, min(700.0, direction * rate * step))
    return min(high, max(low, tau0 * math.exp(exponent)))
