"""Write the name table of TensorRT-RTX's Python API from the installed bindings.

    python tools/rtx_api_names.py [--output tools/api-names/tensorrt-rtx-python-api-names.tsv]

Lists what `tensorrt-python-api-names.tsv` lists for TensorRT 10.13/11.4, in the same layout: every
name of the module (`dir(tensorrt_rtx_bindings)`), then every public member each class or enum defines
(`Builder.create_network`, `DataType.INT8`), one per line, with a yes column for the installed
release. trtq's RTX code paths (`@supports("rtx")`) may use only these names: tools/trt_apicheck.py
checks the source against this file, and the test tests/tensorrt/test_trt_apicheck.py runs that check
and checks that the file is what this script writes from the installed bindings when they are the
release it names.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

MODULE = "tensorrt_rtx_bindings"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "api-names" / "tensorrt-rtx-python-api-names.tsv"


def api_names(module: object) -> list[str]:
    """Module names and Class.member names (a class's own members without a leading underscore, as
    the TensorRT table lists them: inherited ones are the base class's), sorted."""
    names = set(dir(module))
    for name in dir(module):
        value = getattr(module, name)
        if isinstance(value, type):
            names |= {f"{name}.{member}" for member in vars(value) if not member.startswith("_")}
    return sorted(names)


def table_text(module: object) -> str:
    """The .tsv text: a comment, the header naming the release column, then one `name<TAB>yes` line per name."""
    version = str(module.__version__)
    lines = [
        (f"# Public names of the TensorRT-RTX Python bindings (module {MODULE}), read from the installed "
         f"release by tools/rtx_api_names.py."),
        f"# name\tin_rtx_{version}",
        *(f"{name}\tyes" for name in api_names(module)),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    module = importlib.import_module(MODULE)
    args.output.write_text(table_text(module), encoding="utf-8")
    print(f"wrote {args.output} ({len(api_names(module))} names of TensorRT-RTX {module.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
