"""Builds fused_rnn: the Python package, the Triton kernels (kernels/ -> fused_rnn.kernels) and the
native extension fused_rnn._C (see native_extensions below)."""

import glob
import os
import re
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    """Source files matching the glob patterns, relative to this directory, sorted."""
    found = (glob.glob(os.path.join(HERE, pattern)) for pattern in patterns)
    return sorted(os.path.relpath(path, HERE) for paths in found for path in paths)


def cuda_arch_flags(torch):
    """nvcc -gencode flags for FUSED_RNN_CUDA_ARCHS ("9.0a;8.0", entries may end in +PTX), by
    default the compute capability of the visible GPU, else 9.0a (H100/H200 with their
    architecture-specific instructions)."""
    requested = os.environ.get("FUSED_RNN_CUDA_ARCHS", "").replace(",", ";").replace(" ", ";")
    archs = [arch for arch in requested.split(";") if arch]
    if not archs:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            archs = [f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")]
        else:
            archs = ["9.0a"]
    flags = []
    for arch in archs:
        match = re.fullmatch(r"(\d+)\.(\d)([af]?)(\+PTX)?", arch)
        if match is None:
            raise SystemExit(
                f"FUSED_RNN_CUDA_ARCHS: expected entries like 9.0, 9.0a or 8.0+PTX, got {arch!r}"
            )
        number = match.group(1) + match.group(2) + match.group(3)
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if match.group(4):
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


def native_extensions():
    """The C++/CUDA extension modules and the build_ext command class, or ([], {}) when skipped.

    fused_rnn._C is built from csrc/ with torch.utils.cpp_extension (ninja when installed; MAX_JOBS
    caps its parallel jobs): C++ only when torch has no CUDA or nvcc is missing, C++ and CUDA
    otherwise. FUSED_RNN_SKIP_NATIVE=1 skips it. A failed build leaves the package without it:
    `import fused_rnn` works and the "native" backend says it is unavailable.
    """
    if os.environ.get("FUSED_RNN_SKIP_NATIVE") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:
        print(f"fused_rnn: not building fused_rnn._C: torch is not importable ({error})", file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        """BuildExtension whose failure warns instead of failing the installation."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # a compiler, ninja or CUDA toolkit problem
                print(
                    f"fused_rnn: building fused_rnn._C failed ({error}); installing without it, "
                    "so the 'native' backend is unavailable",
                    file=sys.stderr,
                )

    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]  # at::parallel_for runs on OpenMP
    # -g0 overrides the -g of Python's CFLAGS: debug information slows the build by a third.
    cxx_flags = ["-O3", "-g0", *openmp]
    sources = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    nvcc = shutil.which("nvcc") or (
        cpp_extension.CUDA_HOME and os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    )
    with_cuda = torch.version.cuda is not None and bool(nvcc) and os.path.exists(nvcc)
    if with_cuda:
        extension = cpp_extension.CUDAExtension(
            "fused_rnn._C",
            sources + _sources("csrc/cuda/*.cpp", "csrc/cuda/*.cu"),
            define_macros=[("FUSED_RNN_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", *cuda_arch_flags(torch)]},
            extra_link_args=openmp,
        )
    else:
        extension = cpp_extension.CppExtension(
            "fused_rnn._C", sources, extra_compile_args=cxx_flags, extra_link_args=openmp
        )
    return [extension], {"build_ext": OptionalBuildExtension}


extensions, command_classes = native_extensions()

setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused RNN, LSTM, GRU and attention-scoring kernels for PyTorch (Triton and C++/CUDA)",
    packages=["fused_rnn", "fused_rnn.kernels"],
    package_dir={"fused_rnn": "fused_rnn", "fused_rnn.kernels": "kernels"},
    python_requires=">=3.9",
    install_requires=["torch>=2.6", "numpy", "triton; platform_system == 'Linux'"],
    extras_require={"test": ["pytest"], "plots": ["matplotlib"]},
    entry_points={"console_scripts": ["fused-rnn = fused_rnn.cli:main"]},
    ext_modules=extensions,
    cmdclass=command_classes,
    zip_safe=False,
)
