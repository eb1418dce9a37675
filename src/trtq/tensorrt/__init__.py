"""TensorRT stage: build, run, bench and inspect engines (TensorRT 10 and 11).

Nothing here imports `tensorrt` at module level: each entry point imports it when called and,
without TensorRT, raises a TrtqError that prints the equivalent trtexec command instead.
"""

from trtq.tensorrt.bench import bench_engine
from trtq.tensorrt.build import BuildOptions, BuildResult, build_engine
from trtq.tensorrt.commands import DlaOptions, trtexec_build_commands
from trtq.tensorrt.inspector import EngineInfo, inspect_engine
from trtq.tensorrt.run import RunResult, run_engine
from trtq.tensorrt.version import TrtCapabilities, capabilities, installed_version

__all__ = [
    "BuildOptions",
    "BuildResult",
    "DlaOptions",
    "EngineInfo",
    "RunResult",
    "TrtCapabilities",
    "bench_engine",
    "build_engine",
    "capabilities",
    "inspect_engine",
    "installed_version",
    "run_engine",
    "trtexec_build_commands",
]
