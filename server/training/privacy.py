"""Client-level differential privacy accounting, by Google's dp-accounting library (its Rényi-DP
accountant), never by hand-written formulas.

Each round is one Gaussian mechanism over the clipped client updates: every enrolled client takes
part (no sampling amplification is claimed), the noise on the mean has standard deviation
noise_multiplier x clipNorm / clients. The noise multiplier is the smallest that keeps
`plannedRounds` such rounds within (targetEpsilon, delta); the epsilon spent after r rounds is
the same accountant's answer for r compositions."""

from __future__ import annotations

from functools import lru_cache

# dp_accounting (scipy, mpmath) is imported on first use: a service without private models
# never pays for it at start-up.


def _rounds_event(noise_multiplier: float, rounds: int):
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)


@lru_cache(maxsize=256)
def noise_multiplier(target_epsilon: float, delta: float, rounds: int) -> float:
    """The smallest noise multiplier whose `rounds` Gaussian rounds spend at most target_epsilon."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    value = dp_accounting.calibrate_dp_mechanism(
        RdpAccountant,
        lambda z: _rounds_event(z, rounds),
        target_epsilon,
        delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        tol=1e-4,
    )
    value = float(value)
    while epsilon_spent(value, delta, rounds) > target_epsilon:  # the search stops within tol
        value *= 1.0001
    return value


@lru_cache(maxsize=1024)
def epsilon_spent(noise_multiplier: float, delta: float, rounds: int) -> float:
    """Epsilon spent (at delta) once `rounds` rounds have been aggregated with this noise."""
    if rounds <= 0:
        return 0.0
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(_rounds_event(noise_multiplier, rounds))
    return float(accountant.get_epsilon(delta))
