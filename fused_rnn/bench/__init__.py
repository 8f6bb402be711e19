"""Benchmarks of fused_rnn against its baselines: the registry of ops, shapes and providers, the
timers, the CSV store and the plots behind `fused-rnn bench` and `fused-rnn profile`.

    shapes.py          ops, shape strings (B16-T1024-I768-H768) and the named sweeps
    workloads.py       deterministic weights and inputs of a point, shared by every provider
    providers.py       the recurrence providers (fused_rnn backends, cuDNN, torch CPU, cell loops, FlashRNN)
    attention.py       the attention providers (fused_rnn modules, naive formula, SDPA)
    verify.py          the float64 check a provider passes before it is timed
    timing.py          median / p20 / p80 and peak memory, on CPU and CUDA
    flops.py           FLOP counts for achieved TFLOP/s
    results.py         the CSV schema, row replacement and the environment columns
    runner.py          one sweep: check, time and record every provider at every point
    report.py          the printed table
    plots.py           time against B and H, speed-up over the baseline (matplotlib PNG)
    progress.py        a progress bar on stderr
    kernel_profile.py  `fused-rnn profile`: torch.profiler time grouped by stage of the layer
"""
