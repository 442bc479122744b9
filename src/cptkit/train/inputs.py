"""What a micro-batch of token ids becomes as the model's inputs.

Plain: the tokens are their own labels (the model shifts them), and every sample is one causal
sequence across the documents packed into it. With `document_masking: true` position ids
restart after each EOS (every document in a shard ends with one) and the first token of a
document is not predicted from the one before it; transformers then builds a block-diagonal
causal mask from the restarted positions (sdpa, eager and flex attention) or runs variable-length
attention (flash attention 2/3), so no token attends across a document boundary (`check` proves it
for the model at hand before any training).
"""

from __future__ import annotations

import torch

from ..errors import CptError

ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")  # known to honour it


def plain(mb: torch.Tensor) -> dict:
    return {"input_ids": mb, "labels": mb}


class Documents:
    """Inputs with document boundaries: restarted positions, no prediction across a boundary."""

    def __init__(self, eos: int):
        self.eos = eos

    def __call__(self, mb: torch.Tensor) -> dict:
        idx = torch.arange(mb.shape[1], device=mb.device).expand_as(mb)
        start = torch.zeros_like(mb, dtype=torch.bool)
        start[:, 1:] = mb[:, :-1] == self.eos  # a document starts after each EOS
        last = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
        labels = mb.masked_fill(start, -100)
        return {"input_ids": mb, "labels": labels, "position_ids": idx - last, "use_cache": False}


def check(model, eos: int | None, where: str) -> Documents:
    """Documents(eos), once the model is seen to keep two packed documents apart: the second
    one's logits are the same packed after the first as alone."""
    if eos is None:
        raise CptError(f"{where}: the tokenizer has no EOS token, so documents have no boundary to mask at")
    impl = getattr(model.config, "_attn_implementation", None)
    first, second = torch.tensor([[5, 9, 7, eos]]), torch.tensor([[11, 4, 6, 8, 3]])
    docs = Documents(eos)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = torch.cat([first, second], dim=1).to(device)
            inputs = {k: v for k, v in docs(packed).items() if k != "labels"}
            together = model(**inputs).logits[0, first.shape[1]:].float()
            alone = model(input_ids=second.to(device), use_cache=False).logits[0].float()
    except Exception as e:  # a model whose forward takes no position ids, or rejects them
        raise CptError(f"{where}: this model cannot take restarted position ids ({type(e).__name__}); "
                       f"document masking needs attention in {', '.join(ATTENTION)}") from None
    finally:
        model.train(was)
    if not torch.allclose(together, alone, atol=1e-4, rtol=1e-4):
        raise CptError(f"{where}: the model's attention ({impl}) lets tokens attend across documents even with "
                       f"restarted position ids; load it with attn_implementation one of {', '.join(ATTENTION)}")
    return docs
