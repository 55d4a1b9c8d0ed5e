"""Backtest outputs: ``metrics.json``, metric curves (CSV) and a self-contained HTML report
with plots of the curves (PNG files, also embedded in the HTML); ``compare``'s report
overlays several models' curves (``write_compare_report``)."""

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


# the final figures of the comparison table, in this order (those some model has)
TABLE = ("rmse", "mae", "logloss", "auc", "hr@{k}", "mrr@{k}", "ndcg@{k}", "coverage@{k}", "events", "invalid",
         "events_per_s", "peak_rss_mb")
STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
         "td,th{padding:2px 10px;text-align:right}th:first-child,td:first-child{text-align:left}"
         "table{border-collapse:collapse;margin:1em 0}tr:nth-child(even){background:#f3f3f3}"
         "img{max-width:100%}code{background:#f3f3f3;padding:0 3px}")


def _overlay_png(title: str, curves: dict[str, list[dict]], series: list[str]) -> tuple[bytes, list[str]] | None:
    """One figure for a metric family: windowed metrics on the left, cumulative on the
    right, a colour per model, a line style per metric; (PNG bytes, the panels' names), or
    None when no model has any."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, [s for s in series if s.startswith("cum_") == cum]) for name, cum in
              (("windowed", False), ("cumulative", True))]
    panels = [(name, [s for s in ss if any(s in r for rows in curves.values() for r in rows)]) for name, ss in panels]
    panels = [(name, ss) for name, ss in panels if ss]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), dpi=100, squeeze=False)
    styles = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)))
    for ax, (name, ss) in zip(axes[0], panels):
        for c, (model, rows) in enumerate(curves.items()):
            for j, s in enumerate(ss):
                xs = [r["events"] for r in rows if s in r]
                if not xs:
                    continue
                ax.plot(xs, [r[s] for r in rows if s in r], color=f"C{c % 10}", linestyle=styles[j % len(styles)],
                        label=f"{model} {s}")
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel("events replayed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue(), [name for name, _ss in panels]


def _cell(v, col: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, float) and col in ("events_per_s", "peak_rss_mb"):
        return f"{v:,.1f}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def write_compare_report(out_dir: str, summaries: dict[str, dict], curves: dict[str, list[dict]], window: int,
                         dead_letters: int = 0, dead_letter_path: str | None = None,
                         latest: dict | None = None) -> str:
    """``compare``'s outputs: ``summary.json`` (every model's summary, keyed by model),
    ``curves.csv`` (every model's curves, a ``model`` column first) and one self-contained
    ``report.html`` (CSS inline, the plots as data: URIs, no external reference; with
    ``latest``, model -> {user: list record}, each model's final lists of those users,
    with their reasons when the records carry them); returns the report's path."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.json"), "wb") as f:
        f.write(orjson.dumps(summaries, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    write_curves_csv(os.path.join(out_dir, "curves.csv"), [{"model": m, **r} for m, rows in curves.items()
                                                            for r in rows])
    first = next(iter(summaries.values()))
    k = first.get("k", 10)
    models = list(summaries)
    cols = [c.format(k=k) for c in TABLE]
    cols = [c for c in cols if any(c in s for s in summaries.values())]
    e = html.escape
    body = [
        "<!doctype html><html lang='en'><meta charset='utf-8'><title>recsys-stream compare</title>",
        f"<style>{STYLE}</style>",
        f"<h1>Compared: {e(', '.join(models))} on {e(str(first.get('data')))}</h1>",
        f"<p>Each model replayed through the same dataflow on the same stream (read once), prequentially: each "
        f"event is scored with the model as it stands, then learned; k = {k}, seed {e(str(first.get('seed')))}, "
        f"{e(str(first.get('workers')))} worker(s). Ranking: all items seen so far except the user's own; ties to "
        "the item seen first.</p>",
        "<h2>Final metrics</h2><table><tr><th>model</th>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>",
    ]
    for m, s in summaries.items():
        body.append(f"<tr><td>{e(m)}</td>" + "".join(f"<td>{_cell(s.get(c), c)}</td>" for c in cols) + "</tr>")
    body.append("</table>")
    memory = {s.get("memory") for s in summaries.values()} - {None}
    body.append("<p><code>events_per_s</code>: events from the first into the flow to the last metric update. "
                f"<code>peak_rss_mb</code>: {e('; '.join(sorted(memory)) or 'peak RSS')}, in MiB; it includes what "
                "the process already held (the parsed stream, earlier models' leftovers).</p>")
    where = f", written to <code>{e(dead_letter_path)}</code>" if dead_letter_path else ""
    body.append(f"<p>Dead letters: <b>{dead_letters:,}</b> malformed line(s){where}. A model's <code>invalid</code> "
                "adds the ratings outside its range (left out for it only).</p>")
    for title, series in PLOTS:
        plot = _overlay_png(title, curves, [s.format(k=k) for s in series])
        if plot is None:
            continue
        png, panels = plot
        caption = {("windowed", "cumulative"): f"Windows of {window:,} events (left) and running values (right).",
                   ("windowed",): f"Windows of {window:,} events.",
                   ("cumulative",): f"Running values, every {window:,} events."}[tuple(panels)]
        data = base64.b64encode(png).decode()
        body.append(f"<h2>{e(title)}</h2><p>{caption}</p><img alt='{e(title)}' src='data:image/png;base64,{data}'>")
    if latest and any(latest.values()):
        body.append(_lists_section(latest))
    body.append("<h2>Settings</h2><table>")
    for m, s in summaries.items():
        body.append(f"<tr><td>{e(m)}</td><td style='text-align:left'>{e(orjson.dumps(s.get('params')).decode())}"
                    "</td></tr>")
    body.append("</table></html>")
    path = os.path.join(out_dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(body))
    return path


def reason_text(why: dict) -> str:
    """A reason (``records``) for a person: "because i42 (61 %)", "like i7 (cos 0.83)", "popular"."""
    if "share" in why:
        text = f"because {why['because']} ({100 * why['share']:.0f} %)"
    elif "similarity" in why:
        text = f"like {why['because']} (cos {why['similarity']:.2f})"
    else:
        text = why.get("source", "")
    if why.get("sources"):
        text += " [" + ", ".join(why["sources"]) + "]"
    return text


def _lists_section(latest: dict) -> str:
    e = html.escape
    users = sorted({u for recs in latest.values() for u in recs})
    rows = ["<h2>Final lists of the most active users</h2>",
            "<p>Each model's list after the user's last event (the first five items)"
            + (", with the reason of each (<code>--reasons</code>)" if any(
                "reasons" in r for recs in latest.values() for r in recs.values()) else "") + ".</p><table>",
            "<tr><th>user</th><th>model</th><th style='text-align:left'>list</th></tr>"]
    for u in users:
        for m, recs in latest.items():
            rec = recs.get(u)
            if rec is None:
                continue
            why = rec.get("reasons") or [None] * len(rec["items"])
            cells = "; ".join(e(str(i)) + (f" <small>({e(reason_text(w))})</small>" if w else "")
                              for i, w in list(zip(rec["items"], why))[:5])
            rows.append(f"<tr><td>{e(str(u))}</td><td>{e(m)}</td><td style='text-align:left'>{cells or '(empty)'}"
                        "</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def curves_window(events: int) -> int:
    """About 50 windows, at least 1,000 events each."""
    return max(1000, -(-events // 50))


def dumps_line(obj: dict) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()

