"""Render the task graph of a real DAG of this repo to a PNG (for the README).

    .venv/bin/python scripts/render_dag_graph.py                      # -> docs/images/nightly_dag.png
    .venv/bin/python scripts/render_dag_graph.py --dag-id gd_nightly_fraud_retraining --out /tmp/g.png

The DAG is parsed by Airflow itself (``DagBag`` over a private, throw-away ``AIRFLOW_HOME`` whose DAGs folder
links ``dags/retraining_dags.py``: ``tests.harness.airflow_env``), so the picture is the DAG the scheduler
sees: every task with its operator class, its task group, its upstream dependencies (the data edges that
XComArgs add included) and any trigger rule other than ``all_success``. The layout is done here with
matplotlib (no Graphviz ``dot`` binary needed): tasks in columns by their longest path from a root, columns
wrapped into rows, task groups drawn as boxes around their tasks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "nightly_dag.png"
DEFAULT_DAG_ID = "gd_nightly_fraud_retraining"


@dataclass
class Node:
    task_id: str
    operator: str
    group: str | None
    group_tooltip: str
    trigger_rule: str
    upstream: list[str]
    color: str
    layer: int = 0
    row: int = 0
    x: float = 0.0
    y: float = 0.0


def load_nodes(dag_file: Path, dag_id: str) -> tuple[str, list[Node]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/harness (not part of the wheel)
    from tests.harness.airflow_env import configure

    work = Path(tempfile.mkdtemp(prefix="gd_dag_graph_"))
    configure(work / "airflow", [dag_file], work / "home")
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    if dag_id not in bag.dags:
        raise SystemExit(f"no DAG {dag_id!r} in {dag_file} (found {sorted(bag.dags)})")
    dag = bag.dags[dag_id]
    nodes = []
    for task in dag.topological_sort():
        group = task.task_group
        group_id = group.group_id if group is not None and not group.is_root else None
        nodes.append(
            Node(
                task_id=task.task_id,
                operator=task.task_type,
                group=group_id,
                group_tooltip=getattr(group, "tooltip", "") if group_id else "",
                trigger_rule=str(getattr(task.trigger_rule, "value", task.trigger_rule)),
                upstream=sorted(task.upstream_task_ids),
                color=task.ui_color or "#ffffff",
            )
        )
    return dag.dag_id, nodes


def layout(nodes: list[Node], wrap: int) -> None:
    """Column = longest path from a root; columns wrapped every ``wrap`` into rows; y spreads a column."""
    by_id = {n.task_id: n for n in nodes}
    for n in nodes:  # topological order
        n.layer = max((by_id[u].layer + 1 for u in n.upstream), default=0)
    columns: dict[int, list[Node]] = defaultdict(list)
    for n in nodes:
        columns[n.layer].append(n)
    for layer, members in columns.items():
        n_row, col = divmod(layer, wrap)
        for i, n in enumerate(members):
            n.row = n_row
            n.x = col * 3.3
            n.y = -n_row * 3.6 - (i - (len(members) - 1) / 2) * 1.3


def render(dag_id: str, nodes: list[Node], out: Path, wrap: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    layout(nodes, wrap)
    by_id = {n.task_id: n for n in nodes}
    w, h = 2.6, 1.0
    xs = [n.x for n in nodes]
    ys = [n.y for n in nodes]
    fig_w = (max(xs) - min(xs) + w + 1.6) * 1.25
    fig_h = (max(ys) - min(ys) + h + 2.6) * 1.25
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=110)
    ax.set_xlim(min(xs) - w / 2 - 0.8, max(xs) + w / 2 + 0.8)
    ax.set_ylim(min(ys) - h / 2 - 1.1, max(ys) + h / 2 + 1.5)
    ax.set_aspect("equal")
    ax.axis("off")

    # task groups: one box per group and row around its tasks
    palette = ["#e8f1fb", "#f3ecfa", "#eaf6ea", "#fdf3e6", "#f6f6f6"]
    groups = [g for g in dict.fromkeys(n.group for n in nodes) if g]
    for gi, group in enumerate(groups):
        members = [n for n in nodes if n.group == group]
        for row in sorted({n.row for n in members}):
            part = [n for n in members if n.row == row]
            x0 = min(n.x for n in part) - w / 2 - 0.25
            x1 = max(n.x for n in part) + w / 2 + 0.25
            y0 = min(n.y for n in part) - h / 2 - 0.45
            y1 = max(n.y for n in part) + h / 2 + 0.55
            ax.add_patch(
                FancyBboxPatch(
                    (x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0.02,rounding_size=0.25",
                    facecolor=palette[gi % len(palette)], edgecolor="#8a9bb0", linewidth=1.2, zorder=0,
                )
            )
            ax.text(x1 - 0.15, y1 - 0.12, f"task group: {group}", fontsize=9.5, fontweight="bold",
                    color="#3d4f66", va="top", ha="right", zorder=1)

    # edges: a dependency on the previous column is a straight arrow; longer ones (XCom data edges) arc
    for n in nodes:
        for up_id in n.upstream:
            up = by_id[up_id]
            adjacent = n.layer == up.layer + 1
            special = n.trigger_rule != "all_success"
            same_row = up.row == n.row
            if same_row:
                start, end = (up.x + w / 2, up.y), (n.x - w / 2, n.y)
                style = "arc3,rad=0" if adjacent else "arc3,rad=-0.28"
                if not adjacent:
                    start, end = (up.x + 0.3, up.y + h / 2), (n.x - 0.3, n.y + h / 2)
            else:
                start, end = (up.x, up.y - h / 2), (n.x, n.y + h / 2)
                style = "arc3,rad=0" if adjacent else "arc3,rad=0.12"
            ax.add_patch(
                FancyArrowPatch(
                    start, end, connectionstyle=style, arrowstyle="-|>", mutation_scale=13,
                    color="#c0392b" if special else ("#34495e" if adjacent else "#9aa5b1"),
                    linewidth=1.6 if adjacent else 0.9, linestyle="--" if special else "-",
                    shrinkA=2, shrinkB=2, zorder=2,
                )
            )

    for n in nodes:
        special = n.trigger_rule != "all_success"
        ax.add_patch(
            FancyBboxPatch(
                (n.x - w / 2, n.y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                facecolor=n.color, edgecolor="#c0392b" if special else "#4a5a6a",
                linewidth=2.0 if special else 1.1, linestyle="--" if special else "-", zorder=3,
            )
        )
        ax.text(n.x, n.y + 0.16, n.task_id, ha="center", va="center", fontsize=10.5, fontweight="bold", zorder=4)
        ax.text(n.x, n.y - 0.2, n.operator, ha="center", va="center", fontsize=7.6, color="#333333", zorder=4)
        if special:
            ax.text(n.x, n.y - h / 2 - 0.2, f"trigger_rule={n.trigger_rule}", ha="center", va="center",
                    fontsize=8.5, color="#c0392b", fontweight="bold", zorder=4)

    ax.text(min(xs) - w / 2 - 0.6, max(ys) + h / 2 + 1.25, f"DAG {dag_id}", fontsize=13, fontweight="bold",
            va="top")
    ax.text(min(xs) - w / 2 - 0.6, max(ys) + h / 2 + 0.8,
            "dark arrows: the stage chain; grey arcs: data (XCom) dependencies; red dashed: a trigger rule other "
            "than all_success", fontsize=8.5, color="#555555", va="top")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dag-file", type=Path, default=ROOT / "dags" / "retraining_dags.py")
    parser.add_argument("--dag-id", default=DEFAULT_DAG_ID)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--wrap", type=int, default=6, help="columns per row")
    args = parser.parse_args(argv)
    dag_id, nodes = load_nodes(args.dag_file.resolve(), args.dag_id)
    render(dag_id, nodes, args.out, args.wrap)
    rules = {n.task_id: n.trigger_rule for n in nodes if n.trigger_rule != "all_success"}
    print(f"{dag_id}: {len(nodes)} tasks, {sum(len(n.upstream) for n in nodes)} dependencies, groups "
          f"{sorted({n.group for n in nodes if n.group})}, trigger rules {rules} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
