"""A/B assignment: a salted, stable hash of the unit (`user_id`) into weighted variants.

The hash is BLAKE2b over `salt`, a purpose tag and the unit's string form, read as a number in
[0, 1). It does not depend on the process, the Python version or the order of requests, so a user
keeps its variant across requests, server replicas and restarts.
Changing an experiment's salt re-draws everyone; changing weights moves only the users whose point
falls in the shifted share.

Experiments are tried in config order: a unit enters an experiment when its "traffic" point is
below the experiment's `traffic`; otherwise it falls through to the next one, and finally to
`default`. The entry point and the variant point use different tags, so entering an experiment says
nothing about the variant drawn inside it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from serving.config import ServingConfig, Variant

_SCALE = float(2**64)


def unit_point(salt: str, tag: str, unit: str) -> float:
    """A stable point in [0, 1) for (salt, tag, unit)."""
    h = hashlib.blake2b(f"{salt}\x1f{tag}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / _SCALE


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: Variant


def assign(config: ServingConfig, unit: str) -> Assignment:
    """The experiment and variant for `unit` (a user id as a string)."""
    for exp in config.experiments:
        if exp.traffic < 1.0 and unit_point(exp.salt, "traffic", unit) >= exp.traffic:
            continue
        x = unit_point(exp.salt, "variant", unit) * sum(v.weight for v in exp.variants)
        acc = 0.0
        for v in exp.variants:
            acc += v.weight
            if x < acc:
                return Assignment(exp.name, v)
        return Assignment(exp.name, exp.variants[-1])  # x == total only through rounding
    if config.default is None:  # the config validator makes this unreachable
        raise LookupError("no experiment took this unit and there is no default variant")
    return Assignment("default", config.default)
