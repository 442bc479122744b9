"""Data follows the tokenizer: shards made with the base tokenizer are never read with an
extended one; the run tokenizes again (new fingerprint, new shard) and a `prefix:` shard of the
old tokenizer is refused."""

import json
from pathlib import Path

import pytest

from conftest import STORIES, hand_extended_tokenizer


def test_an_extended_tokenizer_gets_its_own_shards(tmp_path, shared):
    from transformers import AutoTokenizer

    from cptkit.data.shards import Shard
    from cptkit.data.tokenize import prepare_source
    from cptkit.errors import CptError
    from cptkit.recipe import SourceCfg

    texts = [json.loads(line)["text"] for line, _ in zip(open(shared / "corpora/vi/viwiki.jsonl", encoding="utf-8"), range(5))]
    corpus = tmp_path / "vi.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    old = AutoTokenizer.from_pretrained(str(STORIES))
    new = AutoTokenizer.from_pretrained(str(hand_extended_tokenizer(shared, tmp_path / "tok")))
    src = SourceCfg(paths=[corpus])
    before = prepare_source("vi", src, old, tmp_path / "shards")
    mtime = Path(before.prefix + ".bin").stat().st_mtime_ns
    after = prepare_source("vi", src, new, tmp_path / "shards")
    assert after.key != before.key and after.prefix != before.prefix
    assert Shard(after.prefix)[0].tolist() == new(texts[0]).input_ids + [new.eos_token_id]
    assert max(Shard(after.prefix)[0].tolist()) >= 512 and max(Shard(before.prefix)[0].tolist()) < 512
    assert Path(before.prefix + ".bin").stat().st_mtime_ns == mtime  # the old shard is kept, untouched
    with pytest.raises(CptError, match="another tokenizer"):
        prepare_source("vi", SourceCfg(prefix=Path(before.prefix)), new, tmp_path / "shards")
