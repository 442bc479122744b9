"""Step measurements: FLOPs per token (PaLM/torchtitan convention), MFU, per-device tokens/s."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cptkit.train.throughput import Throughput, device_peak_tflops, flops_per_token


def test_flops_per_token_counts_non_embedding_parameters_and_attention():
    for tied in (True, False):
        cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
        model = LlamaForCausalLM(cfg)
        # per layer: q 32x32, k and v 32x16 each, o 32x32, MLP 3 x 32x64, two norms of 32; the final norm
        n = 3 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64 + 2 * 32) + 32
        assert flops_per_token(model, 128) == 6 * n + 12 * 3 * 4 * 8 * 128


def test_mfu_is_achieved_flops_per_device_over_the_peak():
    t = Throughput(flops_per_token=1e9, peak_tflops=100.0, world=2)
    rec = t.record(step_tokens=40_000, seconds=2.0, data_seconds=0.1, device=torch.device("cpu"))
    assert rec["tokens_per_s_device"] == 10_000  # 40k tokens in 2 s over 2 devices
    assert rec["mfu"] == pytest.approx(10_000 * 1e9 / 100e12)
    assert rec["data_wait_s"] == 0.1 and rec["peak_mem_gib"] > 0
    assert "mfu" not in Throughput(1e9, None, 1).record(1, 1.0, 0.0, torch.device("cpu"))
    assert device_peak_tflops(torch.device("cpu")) is None and device_peak_tflops(torch.device("cpu"), 50.0) == 50.0
