"""Reading what users write: the base of every typed config (unknown keys are errors, values are
frozen after validation, a float is finite: `.inf` or `.nan` in YAML is refused, naming the field),
the YAML loader of recipes and the reader of JSON files that must hold an object.

Bounds shared by the recipe's sections, so that no count overflows or allocates absurdly later
(README, "Bounds"): token counts fit int64 many times over, LRs stay far from overflow."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

MAX_TOKENS = 10**15  # a stage's tokens, eval / checkpoint intervals, a buffer budget, warmup steps
MAX_SEQ_LEN = 2**20  # tokens per sample; a step holds micro_batch of them at once
# AdamW moves every weight by about `lr` a step, so an LR past 1 rewrites the model each step; the cap
# is far above that, since a run made to diverge on purpose (the non-finite guard's tests) is legitimate,
# and refuses only what no one means (1e30, a sign lost from 1e-30)
MAX_LR = 1e6
MAX_YAML_NODES = 1_000_000  # values after expanding aliases: a recipe is hundreds; an alias bomb, billions


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def read_json_object(path) -> dict:
    """A JSON file that must hold an object. `ValueError` says in one line what is wrong: where
    the decoder stopped and why, or what the file holds instead."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object (it holds a {type(data).__name__})")
    return data


class RecipeLoader(yaml.SafeLoader):
    """A repeated key is an error, not a silent last-one-wins; aliases may not expand into more
    than `MAX_YAML_NODES` values (a "billion laughs" recipe is refused before it is built)."""

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key `{key}`", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Count the values the document holds once every alias is expanded, without expanding any:
    a node reached by several aliases is one object, sized once (iterative: no recursion limit)."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, closing = stack.pop()
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        if closing:
            open_nodes.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_YAML_NODES:
                raise yaml.composer.ComposerError(None, None, f"aliases expand to more than {MAX_YAML_NODES:,} values "
                                                  "(an alias bomb?); write the values out", node.start_mark)
        elif id(node) not in size:
            if id(node) in open_nodes:
                raise yaml.composer.ComposerError(None, None, "an alias refers to a value that contains it",
                                                  node.start_mark)
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)


def describe_error(err: dict, tags: dict) -> str:
    """One pydantic error as `field.path: message`, with list indices as `stages[1]`. `tags`:
    field name -> its union's discriminator values, which add nothing to the path for the user."""
    loc = ""
    for part in err["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif any(part in names and loc.endswith(field) for field, names in tags.items()):
            continue
        else:
            loc += f".{part}" if loc else str(part)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling against the recipe reference in README.md)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif isinstance(err.get("input"), (int, float, str)):  # say what was given: `.inf`, a typo's 1e30
        given = repr(err["input"])
        msg += f" (got {given if len(given) <= 60 else given[:57] + '...'})"
    return f"{loc}: {msg}"
