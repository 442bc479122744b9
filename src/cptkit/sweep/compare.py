"""A comparison of finished runs (`cpt compare`, and the end of `cpt sweep`): per run, forgetting
on each old source, adaptation on each new one, downstream scores and throughput; a scatter of
forgetting against adaptation with the Pareto front marked.

- old sources: those some stage measured forgetting on and no stage had as new data (D0 and the
  like); forgetting = the last stage's end loss − the base loss (positive: forgot);
- new sources: every stage's new data; adaptation = base loss − the last stage's end loss
  (positive: learned);
- a run is on the Pareto front when no other run forgets no more and adapts no less, and is
  strictly better in one of the two (on the means over sources).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..errors import CptError
from ..fileio import write_json_atomic, write_text_atomic
from ..report.tables import markdown_table


def run_row(run_dir: Path, name: str | None = None) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise CptError(f"{run_dir}: no summary.json; the run has not finished (cpt run --resume it first)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        stages, base = summary["stages"], summary["base_val_loss"]
        final = stages[-1]["val_loss_end"]
        new = list(dict.fromkeys(s for st in stages for s in st.get("new_sources", [])))
        old = [s for s in dict.fromkeys(s for st in stages for s in st.get("earlier_sources", [])) if s not in new]
        forgetting = {s: final[s] - base[s] for s in old}
        adaptation = {s: base[s] - final[s] for s in new}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise CptError(f"{path}: not a cpt summary ({e!r}); leave the run out") from None
    speeds = []
    metrics = Path(run_dir) / "metrics.jsonl"
    for line in metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and record.get("kind") == "train" and record.get("tokens_per_s"):
            speeds.append(record["tokens_per_s"])
    return {"run": name or Path(run_dir).name, "folder": str(run_dir), "forgetting": forgetting, "adaptation": adaptation,
            "mean_forgetting": statistics.fmean(forgetting.values()) if forgetting else None,
            "mean_adaptation": statistics.fmean(adaptation.values()) if adaptation else None,
            "evals": stages[-1].get("evals_end") or {},
            "tokens_per_s": statistics.median(speeds) if speeds else None}


def pareto(rows: list[dict]) -> list[str]:
    """The runs no other run beats on both forgetting (lower) and adaptation (higher)."""
    scored = [r for r in rows if r["mean_forgetting"] is not None and r["mean_adaptation"] is not None]

    def beats(a, b):
        return (a["mean_forgetting"] <= b["mean_forgetting"] and a["mean_adaptation"] >= b["mean_adaptation"]
                and (a["mean_forgetting"] < b["mean_forgetting"] or a["mean_adaptation"] > b["mean_adaptation"]))

    return [r["run"] for r in scored if not any(beats(o, r) for o in scored if o is not r)]


def write_comparison(rows: list[dict], out: Path, title: str, points: dict[str, dict] | None = None) -> Path:
    """`comparison.md`, `comparison.json` and `plots/pareto.png` in `out`; returns the report."""
    from ..report.render import _pyplot, _save

    out = Path(out)
    front = pareto(rows)
    for r in rows:
        r["pareto"] = r["run"] in front
        if points:
            r["point"] = points.get(r["run"], {})
    old = list(dict.fromkeys(s for r in rows for s in r["forgetting"]))
    new = list(dict.fromkeys(s for r in rows for s in r["adaptation"]))
    tasks = list(dict.fromkeys(t for r in rows for t in r["evals"]))
    table = [{"run": r["run"] + (" *" if r["pareto"] else ""),
              **{f"f:{s}": r["forgetting"].get(s) for s in old}, **{f"a:{s}": r["adaptation"].get(s) for s in new},
              **{f"t:{t}": r["evals"].get(t) for t in tasks},
              "tok_s": None if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"} for r in rows]
    keys = ["run", *(f"f:{s}" for s in old), *(f"a:{s}" for s in new), *(f"t:{t}" for t in tasks), "tok_s"]
    headers = ["run", *(f"forgetting {s}" for s in old), *(f"adaptation {s}" for s in new), *tasks, "tokens/s"]
    write_json_atomic(out / "comparison.json", {"runs": rows, "pareto": front})
    _plot(rows, out / "plots" / "pareto.png", _pyplot, _save)
    text = "\n".join([f"# {title}", "",
                      "Per run: forgetting on each old source (the last stage's end loss minus the base's; positive: "
                      "forgot), adaptation on each new source (the base's loss minus the end's; positive: learned), "
                      "downstream scores at the end, median training tokens/s. `*`: on the Pareto front (no other "
                      "run forgets less and adapts more, on the means over sources).", "",
                      markdown_table(table, keys, headers=headers), "",
                      "![Forgetting against adaptation](plots/pareto.png)", ""])
    write_text_atomic(out / "comparison.md", text)
    return out / "comparison.md"


def _plot(rows: list[dict], path: Path, pyplot, save) -> None:
    scored = [r for r in rows if r["mean_forgetting"] is not None and r["mean_adaptation"] is not None]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in scored:
        ax.scatter(r["mean_forgetting"], r["mean_adaptation"], marker="*" if r["pareto"] else "o",
                   s=120 if r["pareto"] else 40, color="C3" if r["pareto"] else "C0")
        ax.annotate(r["run"], (r["mean_forgetting"], r["mean_adaptation"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    front = sorted((r for r in scored if r["pareto"]), key=lambda r: r["mean_forgetting"])
    ax.plot([r["mean_forgetting"] for r in front], [r["mean_adaptation"] for r in front], color="C3", linewidth=1,
            label="Pareto front")
    ax.set_xlabel("forgetting: mean rise of old sources' loss (nats, lower is better)")
    ax.set_ylabel("adaptation: mean fall of new sources' loss (nats)")
    ax.legend(fontsize=8)
    save(fig, path)
