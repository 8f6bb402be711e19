"""The extension fused_rnn._C as built: it is there (unless FUSED_RNN_SKIP_NATIVE=1 skipped it), it
says how it was built, the native backend explains when it cannot run, a missing extension leaves
the rest of the package working, the C++ op library loads before or after the Python ops, and the
portable CPU kernels (chosen on CPUs without AVX2) give the same results as the AVX2 ones."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fused_rnn import native

REASON = native.unavailable_reason(torch.device("cpu"))
requires_native = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")


def _run_python(code: str, unset: tuple[str, ...] = (), **env: str) -> None:
    """Run `code` in a fresh interpreter (with extra environment variables, and without those
    named in `unset`); fail with its output."""
    inherited = {name: value for name, value in os.environ.items() if name not in unset}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_extension_is_built():
    if os.environ.get("FUSED_RNN_SKIP_NATIVE") == "1":
        pytest.skip("FUSED_RNN_SKIP_NATIVE=1: the extension was not built")
    assert REASON is None, REASON


def _intel_cpu() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _onednn_takes_float32() -> bool:
    """Whether ATen's oneDNN matmul takes float32 on this CPU: PyTorch carries oneDNN and the CPU
    supports bfloat16 (the device check ATen's matmul makes, which torch exposes as an op)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@requires_native
def test_build_info():
    info = native.build_info()
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["cpu_kernels"] in ("default", "avx2", "avx512")
    # PyTorch built with oneDNN exports its matmul, which the CPU GEMMs must then find where it
    # takes float32 (and must not call where it refuses it: an AVX2 CPU).
    assert info["cpu_gemm"] == ("onednn" if _onednn_takes_float32() else "aten")
    assert info["cpu_mkl_tuned"] == (os.environ["FUSED_RNN_MKL_TUNED_CPU"] == "1")  # conftest.py sets it
    # float64 runs on the panel GEMM where its kernels are 512-bit and MKL's dgemm is not.
    panel = info["cpu_kernels"] == "avx512" and not info["cpu_mkl_tuned"]
    assert info["cpu_gemm_float64"] == ("panel" if panel else "aten")
    assert info["compiler"]
    assert isinstance(info["with_cuda"], bool)
    assert bool(info["cuda_archs"]) == info["with_cuda"]
    assert (info["cuda_version"] is not None) == info["with_cuda"]
    for arch in info["cuda_archs"]:
        major, minor = arch.split(".")
        assert major.isdigit() and minor.isdigit()


@requires_native
@pytest.mark.parametrize("setting", ["0", "1", None], ids=["other-cpu", "mkl-tuned-cpu", "vendor-check"])
def test_mkl_tuned_cpu_setting_picks_the_gemms_and_the_lstm_inference_path(setting):
    """FUSED_RNN_MKL_TUNED_CPU overrides the vendor check (without it, an Intel CPU is MKL-tuned).
    Tuned, float64 GEMMs run ATen's and LSTM inference at B = 64 with 1.2 MiB of weights projects
    with one GEMM first, bitwise that path; otherwise the steps project x themselves (they add the
    bias last, so some bits differ)."""
    tuned = _intel_cpu() if setting is None else setting == "1"
    _run_python(
        f"""
        import torch
        from fused_rnn import native
        torch.set_num_threads(2)
        info = native.build_info()
        assert info["cpu_mkl_tuned"] is {tuned}, info
        if info["cpu_kernels"] == "avx512":
            assert info["cpu_gemm_float64"] == {"'aten'" if tuned else "'panel'"}, info
        g = torch.Generator().manual_seed(0)
        T, B, I, H = 3, 64, 200, 200
        x = torch.randn(T, B, I, generator=g)
        w_ih, w_hh = torch.randn(4 * H, I, generator=g) * 0.3, torch.randn(4 * H, H, generator=g) * 0.3
        b, h0, c0 = torch.randn(4 * H, generator=g), torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
        got = native.lstm_input_inference(x, w_ih, b, w_hh, None, h0, c0, None)
        xw = native.linear(x.reshape(-1, I), w_ih, b).view(T, B, 4 * H)
        first = native.lstm_inference(xw, w_hh, None, h0, c0, None)
        same = all(torch.equal(a, c) for a, c in zip(got, first))
        assert same is {tuned}, "projection first" if same else "projection inside"
        """,
        unset=("FUSED_RNN_MKL_TUNED_CPU",),
        **({} if setting is None else {"FUSED_RNN_MKL_TUNED_CPU": setting}),
    )


@requires_native
def test_unavailable_reasons():
    assert "runs on CPU and CUDA tensors, not meta" in native.unavailable_reason(torch.device("meta"))
    reason = native.unavailable_reason(torch.device("cuda"))
    info = native.build_info()
    missing = [
        name
        for name in native.OP_NAMES
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_rnn::{name}", "CUDA")
    ]
    if not info["with_cuda"]:
        assert "built without CUDA" in reason
    elif missing:
        assert "CUDA kernels of the native backend are not built yet" in reason and missing[0] in reason
    else:
        assert (reason is None) == torch.cuda.is_available()


def test_package_works_without_the_extension():
    _run_python(
        """
        import sys
        import torch
        sys.modules["fused_rnn._C"] = None  # the import of the extension fails
        import fused_rnn
        from fused_rnn import native
        reason = native.unavailable_reason(torch.device("cpu"))
        assert "fused_rnn._C could not be imported" in reason and "pip install" in reason, reason
        assert native.build_info() is None
        assert "native" not in fused_rnn.available_backends("cpu")
        assert fused_rnn.backends.resolve_backend("auto", "cpu") == "reference"
        output, _ = fused_rnn.LSTM(3, 4)(torch.randn(2, 1, 3))
        assert output.shape == (2, 1, 4)
        try:
            fused_rnn.LSTM(3, 4, backend="native")(torch.randn(2, 1, 3))
        except RuntimeError as error:
            assert "fused_rnn._C could not be imported" in str(error), error
        else:
            raise AssertionError("backend='native' ran without the extension")
        """
    )


@requires_native
def test_cpp_library_loads_before_the_python_ops():
    """TORCH_LIBRARY(fused_rnn) registered first, then fused_rnn.ops' FRAGMENT of the namespace."""
    _run_python(
        """
        import glob, importlib.util, os
        import torch
        package = os.path.dirname(importlib.util.find_spec("fused_rnn").origin)
        torch.ops.load_library(glob.glob(os.path.join(package, "_C*.so"))[0])
        assert hasattr(torch.ops.fused_rnn, "native_lstm_forward")
        from fused_rnn import native, ops, reference
        assert native.unavailable_reason(torch.device("cpu")) is None
        args = (torch.randn(4, 2, 12), torch.randn(12, 3), None, torch.randn(2, 3), torch.randn(2, 3), None)
        for ours, expected in zip(ops.lstm_forward(*args, "native"), reference.lstm_forward(*args)):
            torch.testing.assert_close(ours, expected)
        """
    )


@requires_native
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_cpu_kernels_of_lower_capabilities(capability):
    """ATEN_CPU_CAPABILITY selects the portable or the AVX2 build of the step kernels (the test
    process itself runs the build of this CPU's own capability)."""
    if capability == "avx2" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU has no AVX2")
    _run_python(
        f"""
        import torch
        from fused_rnn import native, parity
        assert native.build_info()["cpu_kernels"] == "{capability}", native.build_info()
        assert native.build_info()["cpu_gemm_float64"] == "aten", native.build_info()
        for cell in parity.CELLS:
            for dtype in (torch.float64, torch.float32, torch.bfloat16):
                case = parity.Case(cell, 5, 3, 37, proj=11, lengths=True)
                errors = parity.case_errors(case, "native", dtype)
                limit = parity.tolerance(case, dtype)
                assert max(errors.values()) <= limit, (case, dtype, errors, limit)
        """,
        ATEN_CPU_CAPABILITY=capability,
    )
