"""Side-by-side results: one table per protocol, a row per run and a column per block (like Table 5),
written as Markdown, CSV and JSON, plus a PNG of accuracy by block per run."""

import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from psl_keras.backbones import BLOCK_NAMES  # noqa: E402


def _cell(value):
    return "" if value is None else f"{100 * value:.1f}"


def markdown_table(title, rows, columns=BLOCK_NAMES):
    """rows: [{"run": name, "B1": 0.41, ...}] -> a Markdown table in percent, best block per run marked."""
    lines = [f"### {title}", "", "| run | " + " | ".join(columns) + " | best |",
             "|---|" + "---|" * (len(columns) + 1)]
    for row in rows:
        values = {c: row.get(c) for c in columns if row.get(c) is not None}
        best = max(values, key=values.get) if values else None
        cells = [(f"**{_cell(row.get(c))}**" if c == best else _cell(row.get(c))) for c in columns]
        lines.append(f"| {row['run']} | " + " | ".join(cells) + f" | {best or ''} |")
    return "\n".join(lines) + "\n"


def write_report(output_dir, tables, settings):
    """tables: {table name: {"title": str, "rows": [...], "columns": [...]}}; returns the written paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    markdown = [f"# psl-keras evaluation\n\nSettings: `{json.dumps(settings, sort_keys=True)}`\n"]
    for name, table in tables.items():
        columns = table.get("columns", BLOCK_NAMES)
        markdown.append(markdown_table(table["title"], table["rows"], columns))
        csv_path = os.path.join(output_dir, f"{name}.csv")
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["run", *columns], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(table["rows"])
        paths[f"{name}.csv"] = csv_path
        if table.get("plot", True):
            paths[f"{name}.png"] = _plot(os.path.join(output_dir, f"{name}.png"), table["title"],
                                         table["rows"], columns)
    md_path = os.path.join(output_dir, "results.md")
    with open(md_path, "w") as f:
        f.write("\n".join(markdown))
    json_path = os.path.join(output_dir, "results.json")
    with open(json_path, "w") as f:
        json.dump({"settings": settings, "tables": tables}, f, indent=2)
    paths.update({"results.md": md_path, "results.json": json_path})
    return paths


def _plot(path, title, rows, columns):
    figure, axis = plt.subplots(figsize=(6, 4))
    for row in rows:
        points = [(i, 100 * row[c]) for i, c in enumerate(columns) if row.get(c) is not None]
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=row["run"])
    axis.set_xticks(range(len(columns)), columns)
    axis.set_xlabel("block")
    axis.set_ylabel("accuracy (%)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
