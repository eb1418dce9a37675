"""Every tensorrt name trtq uses exists in the bindings of each release its code path claims.

The checker is a development tool, tools/trt_apicheck.py, with its name tables in tools/api-names/:
tensorrt-python-api-names.tsv (TensorRT 10.13.3.9 and 11.4.0.106), a copy of
../shared/tensorrt-python-api-names.tsv kept in the repository so the check also runs where shared/ is
absent (a test checks the copy is identical when both exist); and tensorrt-rtx-python-api-names.tsv
(TensorRT-RTX 1.7.1.116), written by tools/rtx_api_names.py from the installed bindings (a test
checks it is what the script writes when that release is installed).
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trtq.tensorrt
from trtq.tensorrt import ioformats

HERE = Path(__file__).parent
PACKAGE = Path(trtq.tensorrt.__file__).parent
SRC = PACKAGE.parents[1]
TOOLS = SRC.parent / "tools"
TABLE_PATH = TOOLS / "api-names" / "tensorrt-python-api-names.tsv"
RTX_TABLE_PATH = TOOLS / "api-names" / "tensorrt-rtx-python-api-names.tsv"
SHARED_TABLE = HERE.parents[2] / "shared" / "tensorrt-python-api-names.tsv"


def _tool(name: str):
    """A script of tools/ (development tools, not part of the package) as a module."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


apicheck = _tool("trt_apicheck")


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, bool]]:
    return apicheck.load_api_table(TABLE_PATH, RTX_TABLE_PATH)


def check(source: str, table) -> list[str]:
    return [p.message for p in apicheck.check_source(textwrap.dedent(source), table)]


def test_vendored_table_matches_shared_copy():
    if not SHARED_TABLE.is_file():
        pytest.skip(f"{SHARED_TABLE} is not present on this machine")
    assert TABLE_PATH.read_bytes() == SHARED_TABLE.read_bytes()


def test_table_reads_every_release_column(table):
    assert table["BuilderFlag.INT8"] == {"10": True, "11": False, "rtx": False}
    assert table["IAttention"] == {"10": False, "11": True, "rtx": True}
    assert table["Builder.build_serialized_network"] == {"10": True, "11": True, "rtx": True}
    assert table["ComputeCapability.SM89"] == {"10": False, "11": False, "rtx": True}
    assert table["Builder.platform_has_fast_int8"] == {"10": True, "11": False, "rtx": False}


def _rtx_tool():
    return _tool("rtx_api_names")


def test_rtx_table_is_what_the_installed_bindings_give():
    rtx = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install -e '.[verify]')")
    header = RTX_TABLE_PATH.read_text().splitlines()[1]
    if header != f"# name\tin_rtx_{rtx.__version__}":
        pytest.skip(f"TensorRT-RTX {rtx.__version__} is installed; the table is of another release ({header})")
    assert RTX_TABLE_PATH.read_text() == _rtx_tool().table_text(rtx)


def test_rtx_paths_use_only_names_of_tensorrt_rtx():
    table = apicheck.load_api_table(TABLE_PATH, RTX_TABLE_PATH)
    uses, _ = apicheck.check_package(PACKAGE, table)
    rtx = [u for u in uses if "rtx" in u.tracks]
    assert {"Builder", "OnnxParser.parse_from_file", "IBuilderConfig.set_compute_capability",
            "ComputeCapability.SM89", "ProfilingVerbosity.DETAILED", "ILogger"} <= {u.name for u in rtx}
    assert all(table[u.name]["rtx"] for u in rtx)


def test_int8_flag_on_an_rtx_path_fails(table):
    source = """
        @supports("rtx")
        def configure(trt, config: trt.IBuilderConfig):
            config.set_flag(trt.BuilderFlag.INT8)
            config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    """
    problems = check(source, table)
    assert len(problems) == 1 and "BuilderFlag.INT8" in problems[0] and "in_rtx_1.7.1.116" in problems[0]
    assert "claiming TensorRT-RTX" in problems[0]


def test_package_uses_only_names_its_paths_claim(table):
    uses, problems = apicheck.check_package(PACKAGE, table)
    assert problems == [], "\n".join(map(str, problems))
    names = {u.name for u in uses}
    # the check really sees the build, run and inspect paths, module chains and typed variables alike
    assert {"Builder", "OnnxParser.parse_from_file", "IBuilderConfig.set_memory_pool_limit",
            "IExecutionContext.execute_async_v3", "IExecutionContext.set_tensor_address",
            "IExecutionContext.set_input_shape", "ICudaEngine.create_engine_inspector"} <= names


def test_removed_names_are_used_only_on_tensorrt10_paths(table):
    uses, _ = apicheck.check_package(PACKAGE, table)
    removed = [u for u in uses if not table[u.name]["11"] and table[u.name]["10"]]
    assert {u.name for u in removed} >= {"BuilderFlag.INT8", "BuilderFlag.FP16", "IBuilderConfig.int8_calibrator",
                                         "IInt8EntropyCalibrator2", "ILayer.precision",
                                         "IBuilderConfig.set_calibration_profile"}
    assert all(u.tracks == ("10",) for u in removed), [u for u in removed if u.tracks != ("10",)]


def test_int8_flag_on_an_11_path_fails(table):
    source = """
        from trtq.tensorrt.version import supports

        @supports("10", "11")
        def configure(trt, config):
            config.set_flag(trt.BuilderFlag.INT8)
    """
    problems = check(source, table)
    assert len(problems) == 1 and "BuilderFlag.INT8" in problems[0] and "in_11.4.0.106" in problems[0]
    assert check(source.replace('"10", "11"', '"10"'), table) == []


def test_method_on_an_annotated_variable_is_checked(table):
    source = """
        @supports("11")
        def configure(trt, config: trt.IBuilderConfig, calibrator):
            config.int8_calibrator = calibrator
            checked: trt.ILayer = config
            checked.precision = trt.DataType.HALF
    """
    problems = check(source, table)
    assert any("IBuilderConfig.int8_calibrator" in p for p in problems)
    assert any("ILayer.precision" in p for p in problems)
    assert len(problems) == 2


def test_nested_code_inherits_the_claim(table):
    source = """
        @supports("11")
        def factory(trt):
            class Calibrator(trt.IInt8EntropyCalibrator2):
                def get_batch(self, names):
                    return None
            return Calibrator
    """
    assert any("IInt8EntropyCalibrator2" in p for p in check(source, table))


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("import tensorrt as trt\n", "module level"),
        ("import tensorrt_rtx_bindings as trt\n", "module level"),
        ("def f():\n    import tensorrt_rtx_bindings as rtx\n", "import tensorrt_rtx_bindings as trt"),
        ("def f():\n    import tensorrt\n", "import tensorrt as trt"),
        ("def f():\n    from tensorrt import Builder\n", "hides names"),
        ("def f(trt):\n    return trt.Builder\n", "without @supports"),
        ("@supports('10')\ndef f(trt, name):\n    return getattr(trt.DataType, name)\n", "computed name"),
        ("@supports('10')\ndef f(trt):\n    return trt.BuilderFlag.NO_SUCH_FLAG\n", "exists in no checked release"),
    ],
)
def test_rule_violations_are_reported(table, source, fragment):
    problems = check(source, table)
    assert problems and fragment in problems[0]


def test_type_checking_import_is_allowed(table):
    source = """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import tensorrt as trt
    """
    assert check(source, table) == []


def test_io_format_tables_name_existing_enum_members(table):
    for member in ioformats.IO_TYPES.values():
        assert table[f"DataType.{member}"]["10"] and table[f"DataType.{member}"]["11"], member
    for member in ioformats.IO_FORMATS.values():
        assert table[f"TensorFormat.{member}"]["10"] and table[f"TensorFormat.{member}"]["11"], member


def _dict_literal(function: str, variable: str) -> dict[str, str]:
    tree = ast.parse((PACKAGE / "builder.py").read_text())
    func = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    assign = next(n for n in ast.walk(func) if isinstance(n, ast.Assign)
                  and isinstance(n.targets[0], ast.Name) and n.targets[0].id == variable)
    return {k.value: v.attr for k, v in zip(assign.value.keys, assign.value.values)}


def test_build_applies_the_io_formats_the_parser_accepts():
    assert _dict_literal("_apply_io_formats", "dtypes") == ioformats.IO_TYPES
    assert _dict_literal("_apply_io_formats", "formats") == ioformats.IO_FORMATS


def test_nothing_outside_trtq_tensorrt_imports_tensorrt():
    offenders = []
    for path in sorted((SRC / "trtq").rglob("*.py")):
        if PACKAGE in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(n.split(".")[0] == "tensorrt" for n in names):
                offenders.append(f"{path}:{node.lineno}")
    assert offenders == []


def test_importing_the_stage_and_cli_does_not_import_tensorrt():
    code = ("import sys; sys.modules['tensorrt'] = None\n"
            "import trtq.tensorrt, trtq.tensorrt.build, trtq.tensorrt.run, trtq.tensorrt.bench, "
            "trtq.tensorrt.inspector, trtq.tensorrt.calibrator, trtq.tensorrt.runtime, trtq.cli.trt\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_command_line_checks_the_package_and_names_file_and_line(tmp_path, capsys):
    assert apicheck.main([]) == 0  # src/trtq, against the vendored tables
    assert not (PACKAGE / "apicheck.py").exists()  # a development tool, not shipped in the package
    bad = tmp_path / "pkg"
    bad.mkdir()
    (bad / "configure.py").write_text(textwrap.dedent("""
        from trtq.tensorrt.version import supports

        @supports("10", "11")
        def configure(trt, config):
            config.set_flag(trt.BuilderFlag.INT8)
    """))
    capsys.readouterr()
    assert apicheck.main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad / 'configure.py'}:6: tensorrt.BuilderFlag.INT8" in out, out
