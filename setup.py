"""Builds trtq's two optional C extensions: the collector's fused histogram pass, and the
onnxruntime custom ops that fold statistics inside the forward pass (against onnxruntime's C API
header, vendored under src/trtq/calibrate/include, MIT licence).

`optional=True`: where no C compiler is available the install still succeeds; the collector
uses its numpy path (same results, about 3x slower) and calibration exposes observed tensors as
graph outputs instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trtq.calibrate._fasthist",
            ["src/trtq/calibrate/_fasthist.c"],
            depends=["src/trtq/calibrate/_histkernels.h"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
        Extension(
            "trtq.calibrate._ortobserve",
            ["src/trtq/calibrate/_ortobserve.c"],
            depends=["src/trtq/calibrate/_histkernels.h", "src/trtq/calibrate/include/onnxruntime_c_api.h"],
            include_dirs=["src/trtq/calibrate/include"],
            extra_compile_args=["-O3"],
            optional=True,
        ),
    ]
)
