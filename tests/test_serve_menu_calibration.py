"""Menu mode calibrates its knob over a random order of each query's pooled samples, not the
order the pool file lists them in (which need not be random: the CRUXEval pools list agreeing,
correct samples first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from menu_serving import ReplayUpstream, menu_proxy, pools_of

from howhard.pool import write_pool


def sorted_pools(workdir: Path, n: int = 40) -> tuple[Path, Path]:
    """(small, large): each query's 8 small samples list 4 agreeing answers first, then 4
    different ones; 4 large samples all agree. Escalate at k = 3 on the small decoder never
    escalates in pool order (cost 3), and escalates unless 3 of the 4 agreeing samples come
    first in a random order: probability 1 - C(4,3)/C(8,3) = 13/14 (expected cost 3 + 4·13/14)."""
    small, large = [], []
    for i in range(n):
        prompt = f"What is {i} + 1?"
        answers = ["1", "1", "1", "1", "2", "3", "4", "5"]
        rewards = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        tokens = [4] * 8
        small.append({"id": f"q{i}", "prompt": prompt, "rewards": rewards, "answers": answers})
        small[-1]["tokens"] = tokens
        large.append(
            {
                "id": f"q{i}",
                "prompt": prompt,
                "rewards": [1.0] * 4,
                "answers": ["1"] * 4,
                "tokens": [4] * 4,
            }
        )
    return write_pool(small, workdir / "small.jsonl"), write_pool(large, workdir / "large.jsonl")


def test_the_knob_is_calibrated_over_random_sample_orders_not_the_pool_files_order(tmp_path):
    pools = sorted_pools(tmp_path)
    upstream = ReplayUpstream(pools_of(pools), ["small-model", "large-model"], cycle=True)
    proxy = menu_proxy(upstream, pools, policy="escalate", budget=6.0, seed=3)
    pacer = proxy.menu.pacer
    spend = dict(zip(pacer.knobs.tolist(), pacer.spends.tolist(), strict=True))
    # pool order would give exactly 3.0 at k = 3 (and so a budget of 6 out of reach below k = 8)
    assert 3.0 in spend
    assert 5.5 < spend[3.0] < 7.0, spend
    expected = 3 + 4 * 13 / 14
    assert abs(spend[3.0] - expected) < 0.6
    assert np.all(np.diff(pacer.spends) >= 0)
