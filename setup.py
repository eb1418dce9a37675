"""Builds trtq's one optional C extension (the collector's fused histogram pass).

`optional=True`: where no C compiler is available the install still succeeds and the collector
uses its numpy path (same results, about 3x slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trtq.calibrate._fasthist",
            ["src/trtq/calibrate/_fasthist.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
