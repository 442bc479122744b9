"""Sweep points from `--grid KEY=V1,V2 ...`: KEY is a dotted path into the recipe as written, with
a stage named by its name (`stages.wiki.strategy.alpha0`, `stages.wiki.schedule.lr`, `seed`);
values are YAML scalars. The points are every combination, in the order the grids were given.

A key must lead through mappings the recipe has (a bare `strategy: replay` counts as
`{name: replay}`); its last part may be new where the recipe's schema takes it (a preset's
default `alpha0`). Otherwise the error names the closest key the recipe has.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re

import yaml

from ..errors import CptError, unknown_name


def parse_grid(items: list[str]) -> list[tuple[str, list]]:
    grid, seen = [], set()
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not key.strip() or not values.strip():
            raise CptError(f"--grid {item}: write KEY=V1,V2,... (e.g. stages.wiki.strategy.alpha0=0,0.05,0.25)")
        key = key.strip()
        if key in seen:
            raise CptError(f"--grid {item}: `{key}` is swept twice; give all its values in one --grid")
        seen.add(key)
        try:
            grid.append((key, [yaml.safe_load(v.strip()) for v in values.split(",")]))
        except yaml.YAMLError:
            raise CptError(f"--grid {item}: a value is not a YAML scalar") from None
    if not grid:
        raise CptError("--grid: give at least one KEY=V1,V2,...")
    return grid


def points(grid: list[tuple[str, list]]) -> list[dict]:
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in grid))]


def point_name(point: dict) -> str:
    """`alpha0=0.05_lr=0.003`: each key's last part (two when last parts clash), file-name safe."""
    lasts = [k.split(".")[-1] for k in point]
    short = [k.split(".")[-1] if lasts.count(k.split(".")[-1]) == 1 else ".".join(k.split(".")[-2:]) for k in point]
    text = "_".join(f"{k}={v}" for k, v in zip(short, point.values()))
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", text)


def existing_keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a raw recipe, stages by name."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "stages" and not prefix and isinstance(v, list):
                for st in v:
                    if isinstance(st, dict):
                        out += existing_keys(st, f"stages.{st.get('name')}.")
                continue
            out.append(prefix + str(k))
            out += existing_keys(v, f"{prefix}{k}.")
    return out


def _closest(data: dict, key: str) -> str:
    near = difflib.get_close_matches(key, existing_keys(data), n=1, cutoff=0.5)
    return f"; the closest key the recipe has: {near[0]}" if near else ""


def set_key(data: dict, key: str, value) -> tuple[dict, bool]:
    """A copy of the raw recipe with `key` set; and whether the key's last part was already there."""
    data = copy.deepcopy(data)
    parts, node, i = key.split("."), data, 0
    while i < len(parts) - 1:
        if node is data and parts[i] == "stages" and isinstance(data.get("stages"), list):
            stages = [s for s in data["stages"] if isinstance(s, dict)]
            names = {str(s.get("name")): s for s in stages}
            # the longest stage name that leaves a key after it (names may hold dots)
            j = next((j for j in range(len(parts) - 1, i + 1, -1) if ".".join(parts[i + 1:j]) in names), None)
            if j is None and ".".join(parts[i + 1:]) in names:
                raise CptError(f"--grid {key}: give a key of the stage after its name, e.g. {key}.tokens")
            if j is None:
                raise CptError(f"--grid {key}: {unknown_name('stage', parts[i + 1] if i + 1 < len(parts) else '', names)}")
            node, i = names[".".join(parts[i + 1:j])], j
            continue
        child = node.get(parts[i])
        if isinstance(child, str) and parts[i] == "strategy":  # `strategy: replay` is `{name: replay}`
            child = node[parts[i]] = {"name": child}
        if not isinstance(child, dict):
            raise CptError(f"--grid {key}: the recipe has no `{'.'.join(parts[:i + 1])}` to set `{parts[-1]}` in"
                           + _closest(data, key))
        node, i = child, i + 1
    had = parts[-1] in node
    node[parts[-1]] = value
    return data, had


def closest_error(data: dict, key: str) -> CptError:
    return CptError(f"--grid {key}: no such key in the recipe" + _closest(data, key))
