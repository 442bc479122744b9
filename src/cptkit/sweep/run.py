"""`cpt sweep`: one normal run per grid point, then a comparison.

The sweep folder holds `sweep.json` (the recipe and the grid), `recipes/<point>.yaml` (the recipe
with the point's values; its relative paths still mean what they meant beside the original, via
`base_dir`), `runs/<point>/` (each a normal, resumable run folder), `logs/` (with --parallel) and
`comparison.md` / `comparison.json` / `plots/pareto.png`.

Every point's recipe is validated before any run starts; a bad value is the recipe's own one-line
error, naming the point. Running the same sweep again skips finished runs (`summary.json`) and
resumes the others, so a killed sweep finishes only what is missing. Runs go one after another,
or `--parallel N` at a time, each in its own process (with CUDA, on its own GPU).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from ..config import RecipeLoader
from ..errors import CptError, RecipeError
from ..fileio import write_json_atomic, write_text_atomic
from ..recipe import load_recipe
from .compare import run_row, write_comparison
from .grid import closest_error, parse_grid, point_name, points, set_key

SWEEP = "sweep.json"


def prepare(recipe_path: Path, items: list[str], out: Path) -> list[tuple[str, dict, str]]:
    """(name, point, recipe text) of every point, each validated; nothing written."""
    recipe_path = Path(recipe_path)
    load_recipe(recipe_path)  # the recipe itself first: its errors are its own
    data = yaml.load(recipe_path.read_text(encoding="utf-8"), Loader=RecipeLoader)
    home = (recipe_path.resolve().parent / Path(str(data.get("base_dir") or ".")).expanduser()).resolve()
    grid = parse_grid(items)

    def validated(point_data: dict) -> str:
        point_data = {**point_data, "base_dir": str(home)}
        point_data.setdefault("data_dir", str((Path(out) / "shards").resolve()))  # one shard cache for all runs
        text = yaml.safe_dump(point_data, sort_keys=False, allow_unicode=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "point.yaml"
            path.write_text(text, encoding="utf-8")
            load_recipe(path)
        return text

    for key, values in grid:  # a key the recipe does not have, alone: the error names it, not a point
        changed, had = set_key(data, key, values[0])
        if not had:
            try:
                validated(changed)
            except RecipeError as e:
                if any("unknown key" in q for q in e.problems):
                    raise closest_error(data, key) from None
    prepared = []
    for point in points(grid):
        point_data, name = data, point_name(point)
        for key, value in point.items():
            point_data, _ = set_key(point_data, key, value)
        try:
            prepared.append((name, point, validated(point_data)))
        except RecipeError as e:
            raise CptError(f"sweep point {name}: " + "; ".join(e.problems)) from None
    names = [n for n, _, _ in prepared]
    if len(set(names)) != len(names):
        raise CptError("--grid: two points get the same folder name; give values that differ as text")
    return prepared


def claim(out: Path, recipe_path: Path, items: list[str]) -> None:
    """A sweep folder is new, empty, or this same sweep (to finish it)."""
    out = Path(out)
    mine = {"recipe": str(Path(recipe_path).resolve()), "grid": items}
    if (out / SWEEP).is_file():
        import json

        try:
            theirs = json.loads((out / SWEEP).read_text(encoding="utf-8"))
        except ValueError:
            theirs = None
        if theirs != mine:
            raise CptError(f"--out {out}: holds another sweep ({out / SWEEP}); run that sweep's command to finish it, "
                           "or choose a new --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CptError(f"--out {out}: not empty and not a sweep; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SWEEP, mine)


def sweep(recipe_path: Path, items: list[str], out: Path, parallel: int = 1) -> Path:
    out = Path(out)
    gpus = _gpus(parallel) if parallel > 1 else []
    prepared = prepare(recipe_path, items, out)  # every error before anything is written
    claim(out, recipe_path, items)
    for name, _, text in prepared:
        path = out / "recipes" / f"{name}.yaml"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text_atomic(path, text)
    todo = [name for name, _, _ in prepared if not (out / "runs" / name / "summary.json").is_file()]
    done = len(prepared) - len(todo)
    print(f"sweep: {len(prepared)} runs, {done} finished already, {len(todo)} to run", flush=True)
    if parallel > 1 and todo:  # the runs share one shard cache: fill it before they start, not all at once
        _tokenize([out / "recipes" / f"{n}.yaml" for n in todo])
    failed = _run_all(out, todo, parallel, gpus)
    finished = [(n, p) for n, p, _ in prepared if (out / "runs" / n / "summary.json").is_file()]
    report = write_comparison([run_row(out / "runs" / n, n) for n, _ in finished], out,
                              f"Sweep over {', '.join(k for k, _ in parse_grid(items))}", dict(finished))
    if failed:
        raise CptError(f"sweep: {len(failed)} run(s) failed: {', '.join(failed)} (logs in {out / 'logs'}); "
                       f"the comparison in {report} has the others; run the same command to retry")
    print(f"sweep: comparison at {report}", flush=True)
    return report


def _tokenize(recipes: list[Path]) -> None:
    """Every source of every point's recipe into the shared cache (a cached one is only checked)."""
    from ..data.tokenize import prepare_source
    from ..model.load import load_tokenizer

    for path in recipes:
        r = load_recipe(path)
        tokenizer = load_tokenizer(r.tokenizer_path)
        for name, cfg in r.sources.items():
            if cfg.prefix is None:
                prepare_source(name, cfg, tokenizer, r.data_dir, workers=r.tokenize_workers or os.cpu_count() or 1)


def _run_all(out: Path, names: list[str], parallel: int, gpus: list[str]) -> list[str]:
    """The runs; the names of those that failed (the others go on: one LR that diverges does not
    stop the sweep)."""
    if parallel == 1:  # in this process, one after another
        from ..runner import run_recipe

        failed = []
        for name in names:
            run_dir = out / "runs" / name
            print(f"sweep: run {name}", flush=True)
            try:
                run_recipe(out / "recipes" / f"{name}.yaml", run_dir, resume=run_dir.exists())
            except CptError as e:
                (out / "logs").mkdir(exist_ok=True)
                write_text_atomic(out / "logs" / f"{name}.log", f"cpt: error: {e}\n")
                print(f"sweep: run {name} failed: {e}", flush=True)
                failed.append(name)
        return failed
    (out / "logs").mkdir(exist_ok=True)
    slots = queue.Queue()  # a run takes a free slot (with CUDA: its GPU) and gives it back
    for slot in range(parallel):
        slots.put(slot)

    def one(name: str) -> str | None:
        slot, run_dir, env = slots.get(), out / "runs" / name, dict(os.environ)
        try:
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
            else:  # CPU runs share the cores
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
            cmd = [sys.executable, "-m", "cptkit", "run", str(out / "recipes" / f"{name}.yaml"), "--out", str(run_dir)]
            with open(out / "logs" / f"{name}.log", "a", encoding="utf-8") as log:
                code = subprocess.run(cmd + (["--resume"] if run_dir.exists() else []), env=env, stdout=log,
                                      stderr=subprocess.STDOUT).returncode
        finally:
            slots.put(slot)
        print(f"sweep: run {name} {'done' if code == 0 else f'failed (exit {code})'}", flush=True)
        return name if code else None

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return [n for n in pool.map(one, names) if n]


def _gpus(parallel: int) -> list[str]:
    """The GPU each slot runs on (from those this process may use); none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else \
        [str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < parallel:
        raise CptError(f"--parallel {parallel}: {len(ids)} GPU(s) visible; run at most {len(ids)} at a time")
    return ids[:parallel]
