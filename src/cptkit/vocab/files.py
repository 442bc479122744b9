"""A tokenizer folder's tokenizer.json, read once for every `cpt vocab` command: a missing, malformed
or foreign file is one line that names it."""

from __future__ import annotations

import json
from pathlib import Path


def read_tokenizer(folder: Path, flag: str) -> tuple[dict, object]:
    """`folder`/tokenizer.json as parsed JSON and as a tokenizers.Tokenizer."""
    from tokenizers import Tokenizer

    from ..errors import CptError

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise CptError(f"{flag}: {folder} has no tokenizer.json (a slow tokenizer?); load it with AutoTokenizer "
                       "and save_pretrained it to get one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
        raise CptError(f"{flag}: {path} is not valid JSON ({e}); restore it from the tokenizer's source") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        kind = 'an object without "model"' if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise CptError(f"{flag}: {path} holds {kind}, not a Hugging Face tokenizer; restore it from the "
                       "tokenizer's source")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception
        raise CptError(f"{flag}: {path}: the tokenizers library cannot load it ({' '.join(str(e).split())[:200]})") from None
    return data, tok
