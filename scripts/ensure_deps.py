"""Install into the running Python whatever the package needs and is missing; never replace torch.

On an offline machine where everything is already installed this installs nothing. torch is pinned
to the CPU build the development machines carry when it is missing (an unpinned `torch` would pull
the newest CUDA build); set FUSED_RNN_TORCH_SPEC to choose another.
"""

import importlib.util
import os
import subprocess
import sys

REQUIREMENTS = {
    "torch": os.environ.get("FUSED_RNN_TORCH_SPEC", "torch==2.13.0"),
    "triton": "triton",
    "numpy": "numpy",
    "pytest": "pytest",
    "ninja": "ninja",
    "pybind11": "pybind11",
    "matplotlib": "matplotlib",
    "setuptools": "setuptools",
    "wheel": "wheel",
}


def main() -> int:
    missing = [spec for module, spec in REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return 0
    print("installing missing dependencies:", " ".join(missing), flush=True)
    return subprocess.call([sys.executable, "-m", "pip", "install", *missing])


if __name__ == "__main__":
    sys.exit(main())
