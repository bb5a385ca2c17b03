"""Package build. Metadata lives in pyproject.toml; this file only adds the optional extension.

``mflow_cli._C`` (csrc/) is built with torch's cpp_extension machinery (ninja) when torch and a C++
compiler are present, with the CUDA kernels too when torch has CUDA and nvcc is found. A failed
compile never fails the install: it warns and the package runs on the pure-PyTorch reference path.

pip's isolated build env installs torch==2.13.0 (pinned in pyproject's [build-system], the CPU wheel here):
the extension matches the runtime torch of CI. To build against another installed torch (a CUDA build,
say), use ``pip install --no-build-isolation .`` with setuptools, wheel and ninja in the environment.

Environment:
  MFLOW_NO_EXT=1        skip the extension entirely
  MFLOW_BUILD_CUDA=0/1  force the CPU-only / CUDA build (default: auto)
  MFLOW_REQUIRE_EXT=1   make a failed compile an error (CI's compile check)
"""

from __future__ import annotations

import os
import sys

from setuptools import find_packages, setup

SOURCES_CPU = ["csrc/bindings.cpp", "csrc/cpu_ops.cpp", "csrc/cpu_vec.cpp", "csrc/flow_tangents.cpp",
               "csrc/residual_net.cpp", "csrc/lu_linear.cpp", "csrc/flow_pass.cpp",
               "csrc/planar_chain.cpp", "csrc/symmetric_eigh.cpp", "csrc/polar_factor.cpp"]
SOURCES_CUDA = ["csrc/cuda_ops.cu"]


def _warn(message: str) -> None:
    print(f"WARNING: mflow: {message}", file=sys.stderr)


def _flag(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value in (None, "") else value not in ("0", "false", "no")


def _extension_build() -> dict:
    if _flag("MFLOW_NO_EXT"):
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as exc:  # no torch at build time: pure-Python install
        _warn(f"torch not importable at build time ({exc}); installing without mflow_cli._C")
        return {}

    want_cuda = _flag("MFLOW_BUILD_CUDA")
    if want_cuda is None:
        want_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    # torch's vec headers use #pragma unroll, unknown to g++; no errno from sqrt/exp (never read), so that loops
    # calling them vectorise
    cxx = ["-O3", "-Wno-unknown-pragmas", "-fno-math-errno"]
    if want_cuda:
        ext = cpp_extension.CUDAExtension(
            "mflow_cli._C",
            SOURCES_CPU + SOURCES_CUDA,
            define_macros=[("MFLOW_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
        )
    else:
        ext = cpp_extension.CppExtension("mflow_cli._C", SOURCES_CPU, extra_compile_args={"cxx": cxx})

    required = bool(_flag("MFLOW_REQUIRE_EXT"))

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """Warn instead of failing the install when the extension does not compile."""

        def run(self):
            try:
                super().run()
            except Exception as exc:
                if required:
                    raise
                _warn(f"building mflow_cli._C failed ({exc}); installing the pure-PyTorch path")

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as exc:
                if required:
                    raise
                _warn(f"building {extension.name} failed ({exc}); installing the pure-PyTorch path")

    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExt.with_options(use_ninja=True)}}


# The recipes ship inside the package (mflow_cli/recipes in a wheel), so `mflow train dnf_spiral` works from any
# folder after a non-editable install too; in a checkout mflow reads them from recipes/.
PACKAGES = {
    "packages": [*find_packages(include=["mflow_cli", "mflow_cli.*"]), "mflow_cli.recipes"],
    "package_dir": {"mflow_cli.recipes": "recipes"},
    "package_data": {"mflow_cli.recipes": ["*.yaml"]},
}


setup(**PACKAGES, **_extension_build())
