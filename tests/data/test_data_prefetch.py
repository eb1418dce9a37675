"""Background batch reading keeps order and re-raises the reader's errors."""

import pytest

from trtq.data.prefetch import prefetch


def test_prefetch_keeps_order_and_reraises():
    assert [b["i"] for b in prefetch({"i": i} for i in range(7))] == list(range(7))

    def broken():
        yield {"i": 0}
        raise ValueError("decode failed")

    got = []
    with pytest.raises(ValueError, match="decode failed"):
        for batch in prefetch(broken()):
            got.append(batch["i"])
    assert got == [0]
