"""`python -m lib_handrefiner.bench gpu` without a GPU: the tiny models on the CPU, saying so."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the benchmark builds full-size SD 1.5 (minutes)")
def test_without_a_gpu_it_runs_tiny_on_the_cpu_and_says_so(capsys):
    from lib_handrefiner.bench.gpu import main

    assert main(["--steps", "2,1", "--repeats", "1", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "NO GPU" in printed and "not GPU numbers" in printed
    assert "fixed, 2 steps (2 as ldm counts them):" in printed and "fixed, 1 steps (1 as ldm counts them):" in printed
    assert "adaptive, batch 7, 2 steps:" in printed and "(7 strengths sampled)" in printed
    assert "fp16 vs fp32 drift: not measured (needs CUDA)" in printed
