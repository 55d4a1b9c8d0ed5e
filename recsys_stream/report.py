"""Backtest outputs: ``metrics.json``, metric curves (CSV) and a self-contained HTML report
with plots of the curves (PNG files, also embedded in the HTML)."""

from __future__ import annotations

import base64
import csv
import html
import os

import orjson

PLOTS = (
    ("rating error", ("rmse", "cum_rmse", "mae", "cum_mae")),
    ("like model", ("logloss", "cum_logloss", "auc")),
    ("ranking", ("hr@{k}", "cum_hr@{k}", "ndcg@{k}", "cum_ndcg@{k}", "mrr@{k}")),
    ("catalog coverage", ("cum_coverage@{k}",)),
)


def write_curves_csv(path: str, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        for key in r:
            if key not in keys:
                keys.append(key)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _plot(title: str, rows: list[dict], series: list[str], path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [s for s in series if any(s in r for r in rows)]
    if not present:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    for s in present:
        xs = [r["events"] for r in rows if s in r]
        ys = [r[s] for r in rows if s in r]
        ax.plot(xs, ys, label=s, linestyle="-" if s.startswith("cum_") else ":", marker=None if len(xs) > 40 else ".")
    ax.set_xlabel("events replayed")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(out_dir: str, summary: dict, rows: list[dict], window: int, extra_runs: dict | None = None) -> dict:
    """Write metrics.json, curves.csv, one PNG per metric family and report.html; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"metrics": os.path.join(out_dir, "metrics.json"), "curves": os.path.join(out_dir, "curves.csv")}
    with open(paths["metrics"], "wb") as f:
        f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    write_curves_csv(paths["curves"], rows)
    k = summary.get("k", 10)
    images = []
    for title, series in PLOTS:
        names = [s.format(k=k) for s in series]
        png = os.path.join(out_dir, f"curve-{title.replace(' ', '-')}.png")
        if _plot(f"{summary.get('model')}: {title} (windows of {window:,} events)", rows, names, png):
            images.append((title, png))
    body = [
        "<!doctype html><meta charset='utf-8'><title>recsys-stream backtest</title>",
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{padding:2px 10px;text-align:left}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}</style>",
        f"<h1>Backtest: {html.escape(str(summary.get('model')))} on {html.escape(str(summary.get('data')))}</h1>",
        "<p>Prequential: each event is scored with the model as it stands, then learned. "
        "Ranking: all items seen so far except the user's own; ties to the item seen first.</p>",
        "<table>",
    ]
    for key, val in summary.items():
        if isinstance(val, (dict, list)):
            val = orjson.dumps(val).decode()
        body.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(val))}</td></tr>")
    body.append("</table>")
    if extra_runs:
        body.append("<h2>Compared with</h2><table>")
        for name, res in extra_runs.items():
            body.append(f"<tr><th>{html.escape(name)}</th><td>{html.escape(orjson.dumps(res).decode())}</td></tr>")
        body.append("</table>")
    for title, png in images:
        with open(png, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    paths["report"] = os.path.join(out_dir, "report.html")
    with open(paths["report"], "w", encoding="utf-8") as f:
        f.write("\n".join(body))
    paths["plots"] = [p for _t, p in images]
    return paths


def curves_window(events: int) -> int:
    """About 50 windows, at least 1,000 events each."""
    return max(1000, -(-events // 50))


def dumps_line(obj: dict) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()

