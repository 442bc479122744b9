"""The report's view of a context extension: validation loss by token position at the start and
end of each stage whose `seq_len` differs from the stage before it (a table and a plot)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cptkit.report.tables import markdown_table

PLOT = "position_loss.png"


def changed_stages(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Stages that train at another length than the training stage before them."""
    out, before = [], None
    for st in summary.get("stages", []):
        if st.get("kind") == "merge" or st.get("seq_len") is None:
            continue
        if before is not None and st["seq_len"] != before and st.get("position_loss_end"):
            out.append(st)
        before = st["seq_len"]
    return out


def _buckets(edges: list[int]) -> list[str]:
    return [f"{a}-{b}" for a, b in zip(edges, edges[1:])]


def position_section(summary: Mapping[str, Any], plots_dir: str) -> str | None:
    edges, stages = summary.get("position_edges"), changed_stages(summary)
    if not edges or not stages:
        return None
    names = _buckets(edges)
    keys = [f"b{i}" for i in range(len(names))]
    rows = []
    for st in stages:
        for point in ("start", "end"):
            for source, losses in (st.get(f"position_loss_{point}") or {}).items():
                rows.append({"stage": st["name"], "point": point, "source": source, **dict(zip(keys, losses))})
    lines = ["## Loss by token position", "",
             "Validation loss of the tokens at each position range (windows of the longest seq_len), at the start "
             "and end of each stage that changes seq_len: "
             + ", ".join(f"`{st['name']}` ({st['seq_len']:,})" for st in stages) + ".", "",
             markdown_table(rows, ["stage", "point", "source", *keys], headers=["stage", "point", "source", *names]),
             "", f"![Loss by token position]({plots_dir}/{PLOT})"]
    return "\n".join(lines)


def plot_positions(summary: Mapping[str, Any], path: Path, pyplot, save) -> None:
    """One line per (stage, point, source) over the buckets' upper edges (log scale)."""
    edges, stages = summary.get("position_edges"), changed_stages(summary)
    if not edges or not stages:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for st in stages:
        for point, style in (("start", "--"), ("end", "-")):
            for source, losses in (st.get(f"position_loss_{point}") or {}).items():
                ax.plot(edges[1:], losses, style, marker="o", markersize=3.5, label=f"{st['name']} {point}: {source}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token position (bucket's end)")
    ax.set_ylabel("validation loss")
    ax.set_title("Loss by token position, before and after the context change")
    ax.legend(loc="best", fontsize=7)
    save(fig, path)


def passkey_section(summary: Mapping[str, Any]) -> str | None:
    """Passkey-retrieval accuracy (mean over depths) by prompt length, at each evaluation point."""
    points = [("–", "base", summary.get("base_passkey"))]
    for st in summary.get("stages", []):
        points += [(st["name"], "start", st.get("passkey_start")), (st["name"], "end", st.get("passkey_end"))]
    points = [p for p in points if p[2]]
    if not points:
        return None
    lengths = list(points[0][2])
    rows = [{"stage": name, "point": point, **{f"l{n}": sum(acc[n].values()) / len(acc[n]) for n in lengths}}
            for name, point, acc in points]
    return "\n".join(["## Passkey retrieval", "",
                      "Share of prompts whose greedy answer is the hidden number, by prompt length in tokens "
                      "(mean over the needle depths; `cpt passkey` gives the full table).", "",
                      markdown_table(rows, ["stage", "point", *[f"l{n}" for n in lengths]],
                                     headers=["stage", "point", *[f"{int(n):,}" for n in lengths]])])
