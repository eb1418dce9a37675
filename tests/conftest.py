"""Shared test setup: makes the model builders in tests/support importable from every test folder.

Only tests/support goes on sys.path, never tests/ itself: a test folder such as tests/torch would
otherwise shadow the real package of that name when it is not installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "support"))


import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (long real-model builds)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` skip, saying so, unless --slow is given."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow real-model case: run with --slow (python -m pytest --slow -m slow)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def transformer_onnx(tmp_path_factory):
    """`get(kind, dynamo)`: the path of a tiny BERT ("bert") or ViT ("vit") with planted activation
    outliers, or the tiny BERT with its pooler and a classifier head ("bert-heads")
    (tests/support/transformer_models.py), exported by torch's legacy or dynamo exporter; each
    export is made once per test session."""
    pytest.importorskip("torch", reason="the transformer tests export with torch")
    pytest.importorskip("transformers", reason="the transformer tests build models from transformers configs")
    import transformer_models

    folder = tmp_path_factory.mktemp("transformers")
    made: dict = {}

    def get(kind: str, dynamo: bool) -> Path:
        if dynamo:
            pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
        if (kind, dynamo) not in made:
            module = (transformer_models.tiny_bert_heads() if kind == "bert-heads" else
                      (transformer_models.tiny_bert if kind == "bert" else transformer_models.tiny_vit)(outliers=True))
            path = folder / f"{kind}_{'dynamo' if dynamo else 'legacy'}.onnx"
            made[kind, dynamo] = transformer_models.export(module, path, dynamo)
        return made[kind, dynamo]

    return get
