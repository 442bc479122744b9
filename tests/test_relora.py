"""ReLoRA's merge (model/relora.py): the function is unchanged, the adapters restart from a
seeded draw and zero, the moments are pruned by exactly the share asked for, nothing else moves."""

import pytest
import torch

from cptkit.errors import CptError
from cptkit.model.relora import lora_params, merge, unwrap, wrap
from cptkit.model.relora_cfg import PruneCfg, ReLoRACfg
from cptkit.recipe import OptimizerCfg
from cptkit.train.step import build_optimizer, train_step


def tiny(layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                        num_attention_heads=4))


def trained(cfg: ReLoRACfg, steps: int = 3):
    model = tiny()
    layers = wrap(model, cfg)
    opt = build_optimizer(model, OptimizerCfg(lr=1e-2, weight_decay=0.1))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        train_step(model, opt, torch.randint(0, 64, (1, 2, 16), generator=gen), 1e-2, 1.0)
    return model, layers, opt


def test_defaults_wrap_every_attention_and_mlp_linear_and_freeze_their_weights():
    model, layers, _ = trained(ReLoRACfg(rank=4, merge_every_tokens=64))
    assert len(layers) == 2 * 7  # q k v o, gate up down, in each block
    assert all(not layer.get_base_layer().weight.requires_grad for layer in layers)
    assert all(p.requires_grad for p in lora_params(layers))
    assert model.get_input_embeddings().weight.requires_grad and model.lm_head.weight.requires_grad  # full rank


def test_a_merge_leaves_the_function_unchanged_and_restarts_the_adapters():
    model, layers, opt = trained(ReLoRACfg(rank=4, merge_every_tokens=64))
    assert all(layer.lora_B["default"].weight.abs().sum() > 0 for layer in layers)  # it learned something
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    model.eval()
    before = model(input_ids=ids).logits
    weights = [layer.get_base_layer().weight.clone() for layer in layers]
    merge(layers, opt, PruneCfg(), seed=0, merges=0)
    after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert all(not torch.equal(w, layer.get_base_layer().weight) for w, layer in zip(weights, layers))  # folded in
    assert all(layer.lora_B["default"].weight.abs().sum() == 0 for layer in layers)
    draw = [layer.lora_A["default"].weight.clone() for layer in layers]
    again, layers2, opt2 = trained(ReLoRACfg(rank=4, merge_every_tokens=64))
    merge(layers2, opt2, PruneCfg(), seed=0, merges=0)  # the same seed and count: the same draw, on any rank
    assert all(torch.equal(a, layer.lora_A["default"].weight) for a, layer in zip(draw, layers2))
    bound = 1 / 32 ** 0.5
    assert all(layer.lora_A["default"].weight.abs().max() <= bound for layer in layers)


@pytest.mark.parametrize("method,ratio", [("magnitude", 0.99), ("magnitude", 0.5), ("random", 0.9), ("reset", 1.0)])
def test_pruning_zeroes_exactly_the_share_asked_and_nothing_else(method, ratio):
    model, layers, opt = trained(ReLoRACfg(rank=4, merge_every_tokens=64))
    adapters = {id(p) for p in lora_params(layers)}
    others = {id(p): {k: v.clone() for k, v in st.items()} for p, st in opt.state.items() if id(p) not in adapters}
    moments = [opt.state[p][k] for p in lora_params(layers) for k in ("exp_avg", "exp_avg_sq")]
    big = [t.abs().flatten().sort().values for t in moments]
    assert all(int((t == 0).sum()) == 0 for t in moments)
    share = merge(layers, opt, PruneCfg(method=method, ratio=ratio), seed=0, merges=0)
    want = sum(round(ratio * t.numel()) for t in moments) / sum(t.numel() for t in moments)
    assert share == pytest.approx(want, abs=1e-12)
    for m, v in zip(moments[::2], moments[1::2]):
        assert torch.equal(m == 0, v == 0)  # an entry loses both moments or neither
    if method == "magnitude":  # the survivors are the largest first moments
        for t, sorted_before in zip(moments[::2], big[::2]):
            kept = t[t != 0].abs().sort().values
            assert torch.equal(kept, sorted_before[len(sorted_before) - len(kept):])
    for p, st in opt.state.items():
        if id(p) in others:
            assert all(torch.equal(v, others[id(p)][k]) for k, v in st.items())  # untouched, bit for bit


def test_unwrap_gives_back_the_plain_model_with_the_updates_in_it():
    plain = tiny()
    model, layers, _ = trained(ReLoRACfg(rank=4, merge_every_tokens=64))
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    model.eval()
    before = model(input_ids=ids).logits
    unwrap(model, layers)
    assert list(model.state_dict()) == list(plain.state_dict())  # no lora_ or base_layer names
    assert not hasattr(model, "peft_config")  # a later wrap starts clean
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)


def test_bad_targets_and_ranks_are_one_line():
    with pytest.raises(CptError, match=r"relora.targets: qkv match no linear layer of LlamaForCausalLM; its linear "
                                       r"layers are named down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj"):
        wrap(tiny(), ReLoRACfg(rank=4, targets=["qkv"], merge_every_tokens=64))
    with pytest.raises(CptError, match=r"relora.rank: 64 is larger than model.layers.0.self_attn.q_proj \(32 x 32\); choose at most 32"):
        wrap(tiny(), ReLoRACfg(rank=64, merge_every_tokens=64))


def test_any_recipe_seed_draws_and_the_default_rewarm_is_two_steps_at_least():
    model = tiny()
    layers = wrap(model, ReLoRACfg(rank=4, merge_every_tokens=64), seed=2**64 - 1)  # the largest recipe seed
    merge(layers, None, PruneCfg(), seed=2**64 - 1, merges=7)
    cfg = ReLoRACfg(rank=4, merge_every_tokens=20 * 256)
    assert cfg.rewarm_tokens(256) == 512  # 2% of 20 steps is under one: two steps
    assert ReLoRACfg(rank=4, merge_every_tokens=5000 * 256).rewarm_tokens(256) == 100 * 256  # the paper's 2%
    assert ReLoRACfg(rank=4, merge_every_tokens=256).rewarm_tokens(256) == 256  # never past a cycle
    assert ReLoRACfg(rank=4, merge_every_tokens=512, restart_warmup_tokens=0).rewarm_tokens(256) == 0


def test_a_target_tied_to_the_input_embedding_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    tied = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, tie_word_embeddings=True))
    with pytest.raises(CptError, match=r"relora.targets: lm_head shares its weight with the input embedding"):
        wrap(tied, ReLoRACfg(rank=4, targets=["q_proj", "lm_head"], merge_every_tokens=64))
