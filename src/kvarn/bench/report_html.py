"""Self-contained HTML report: verdict, decision flowchart (taken branch highlighted), plots
(matplotlib, Agg, embedded as base64 PNG), arm and level tables, quality table."""

from __future__ import annotations

import base64
import html
import io

from kvarn.bench.report_md import LEVEL_COLUMNS, _f

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _load(lv: dict):
    return lv.get("concurrency") or lv.get("request_rate")


def make_plots(result: dict) -> dict[str, str]:
    """{title: base64 PNG}: throughput, p95 TTFT, p95 TPOT, peak KV usage vs load; capacity bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in result.get("arms") or []]
    slo = result.get("slo") or {}
    p = slo.get("percentile", 95)
    xlabel = "concurrency" if result.get("mode") != "rate" else "request rate (req/s)"
    plots: dict[str, str] = {}
    specs = [("output_throughput", "output throughput (tok/s)", None),
             (f"p{p}_ttft_ms", f"p{p} TTFT (ms)", slo.get("ttft_ms")),
             (f"p{p}_tpot_ms", f"p{p} TPOT (ms)", slo.get("tpot_ms")),
             ("max_kv_cache_usage_perc", "peak KV cache usage (fraction)", None)]
    for key, ylabel, bound in specs:
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        loads, top = set(), 0.0
        for i, a in enumerate(arms):
            lv = [x for x in a.get("levels") or [] if x.get(key) is not None]
            if not lv:
                continue
            xs, ys = [_load(x) for x in lv], [x[key] for x in lv]
            c = COLORS[i % len(COLORS)]
            ax.plot(xs, ys, "-", color=c, label=a["name"])
            ax.scatter([x for x, l in zip(xs, lv) if l.get("stable")], [y for y, l in zip(ys, lv) if l.get("stable")],
                       color=c, zorder=3)
            bad = [(x, y) for x, y, l in zip(xs, ys, lv) if not l.get("stable")]
            if bad:
                ax.scatter([x for x, _ in bad], [y for _, y in bad], facecolors="white", edgecolors=c, zorder=3,
                           label=f"{a['name']} (unstable)")
            loads.update(xs)
            top = max(top, max(ys))
        if bound and bound <= 3 * top:
            ax.axhline(bound, color="gray", ls="--", lw=1, label="SLO")
        elif bound:
            ax.set_title(f"SLO {bound:g} ms is off the scale", fontsize=8)
        if result.get("mode") != "rate" and loads:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(loads))
            ax.set_xticklabels([f"{x:g}" for x in sorted(loads)])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        plots[f"{ylabel} vs {xlabel}"] = _png(fig)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    names = [a["name"] for a in arms]
    caps = [a.get("kv_capacity_tokens") or 0 for a in arms]
    bars = ax.bar(names, caps, color=[COLORS[i % len(COLORS)] for i in range(len(arms))])
    base = caps[0] if caps and caps[0] else None
    for b, cval in zip(bars, caps):
        txt = f"{cval:,}" + (f"\n{cval / base:.2f}x" if base and cval else "")
        ax.annotate(txt, (b.get_x() + b.get_width() / 2, cval), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.25 * max(caps + [1]))
    ax.set_ylabel("KV capacity (tokens)")
    ax.set_title("KV capacity reported by each server", fontsize=9)
    plots["KV capacity per arm"] = _png(fig)
    return plots


def flowchart_svg(memory_pressure: bool | None) -> str:
    """The decision flowchart; the branch the measurements took is drawn bold and coloured."""
    on_yes, on_no = memory_pressure is True, memory_pressure is False
    hi, lo, common = "#d62728", "#999", memory_pressure is not None

    def box(x, y, w, h, text, active, shape="rect"):
        stroke, sw, fill = (hi, 3, "#fff3f0") if active else (lo, 1, "#fafafa")
        lines = text.split("\n")
        t = "".join(f'<tspan x="{x + w / 2}" dy="{0 if i == 0 else 14}">{html.escape(s)}</tspan>'
                     for i, s in enumerate(lines))
        ty = y + h / 2 - 7 * (len(lines) - 1) + 4
        if shape == "diamond":
            pts = f"{x + w / 2},{y} {x + w},{y + h / 2} {x + w / 2},{y + h} {x},{y + h / 2}"
            s = f'<polygon points="{pts}" fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>'
        else:
            s = f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>'
        return s + f'<text x="{x + w / 2}" y="{ty}" text-anchor="middle" font-size="12">{t}</text>'

    def arrow(x1, y1, x2, y2, active, label=""):
        c, sw = (hi, 3) if active else (lo, 1.2)
        s = (f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{c}" stroke-width="{sw}" '
             f'marker-end="url(#{"ah" if active else "al"})"/>')
        if label:
            s += f'<text x="{(x1 + x2) / 2 + 6}" y="{(y1 + y2) / 2 - 4}" font-size="12" fill="{c}">{label}</text>'
        return s

    parts = [
        '<defs><marker id="ah" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        f'<path d="M0,0 L8,4 L0,8 z" fill="{hi}"/></marker><marker id="al" markerWidth="8" markerHeight="8" '
        f'refX="7" refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="{lo}"/></marker></defs>',
        box(10, 20, 110, 40, "requests", common), arrow(120, 40, 150, 40, common),
        box(150, 20, 110, 40, "prefill", common), arrow(260, 40, 290, 40, common),
        box(290, 20, 130, 40, "KV cache grows", common), arrow(420, 40, 450, 40, common),
        box(450, 0, 150, 80, "memory\npressure?", common, "diamond"),
        arrow(525, 80, 525, 130, on_yes, "yes"), arrow(600, 40, 650, 40, on_no, "no"),
        box(650, 15, 230, 50, "quantization only adds work\n(dequantize every step)", on_no),
        box(440, 130, 170, 50, "smaller KV\n(kvarn: ~4-5x fewer bytes)", on_yes), arrow(610, 155, 650, 155, on_yes),
        box(650, 130, 230, 50, "more sequences admitted\nor longer context", on_yes), arrow(765, 180, 765, 210, on_yes),
        box(650, 210, 230, 50, "more throughput,\nfewer preemptions / OOMs", on_yes),
    ]
    branch = "yes" if on_yes else "no" if on_no else "unknown"
    return (f'<svg class="flowchart" data-branch="{branch}" xmlns="http://www.w3.org/2000/svg" width="900" '
            f'height="270" viewBox="0 0 900 270" font-family="sans-serif">{"".join(parts)}</svg>')


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:24px auto;padding:0 16px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.verdict{font-size:17px;padding:12px;
border-radius:8px;background:#eef6ee;border:1px solid #9c9}.verdict.dont{background:#fbeeee;border-color:#c99}
.verdict.caveat{background:#fdf7e6;border-color:#dc9}.plots img{width:48%;margin:1%}.partial{color:#b00}"""


def render_html(result: dict) -> str:
    v = result.get("verdict") or {}
    wl = result.get("workload") or {}
    rec = v.get("recommendation", "n/a")
    cls = "dont" if rec.startswith("don") else "caveat" if "caveat" in rec else ""
    e = html.escape
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>kvarn bench: {e(str(wl.get('name')))}</title>"
         f"<style>{CSS}</style></head><body>",
         f"<h1>kvarn bench: {e(str(wl.get('name')))} on <code>{e(str(result.get('model')))}</code></h1>"]
    if result.get("interrupted"):
        h.append("<p class='partial'><b>Partial result:</b> the run was interrupted (Ctrl-C).</p>")
    h.append(f"<div class='verdict {cls}' id='verdict'><b>{e(v.get('headline', 'n/a'))}</b><ul>"
             + "".join(f"<li>{e(r)}</li>" for r in v.get("reasons") or []) + "</ul></div>")
    h.append("<h2>Decision flowchart</h2><p>The highlighted branch is the one this workload took, per the "
             f"measurements (binding resource: <b>{e(str(v.get('binding_resource')))}</b>).</p>")
    h.append(flowchart_svg(v.get("memory_pressure")))
    h.append("<h2>Plots</h2><div class='plots'>")
    try:
        plots = make_plots(result)
    except ImportError as e:  # e.g. a GPU host without matplotlib: re-render later with `kvarn bench report`
        plots = {}
        h.append(f"<p>No plots: {e}. Re-render with <code>kvarn bench report RESULT.json</code>.</p>")
    for title, b64 in plots.items():
        h.append(f"<img alt='{e(title)}' title='{e(title)}' src='data:image/png;base64,{b64}'>")
    h.append("</div><h2>Arms</h2><table><tr><th>arm</th><th>kv-cache-dtype</th><th>status</th><th>KV capacity "
             "(tokens)</th><th>max stable concurrency</th><th>throughput at SLO</th><th>stop reason</th></tr>")
    for a in result.get("arms") or []:
        st = a.get("status", "") + (f": {a.get('error')}" if a.get("error") else "")
        h.append(f"<tr><td>{e(a['name'])}</td><td>{e(str(a.get('kv_cache_dtype')))}</td><td>{e(st[:160])}</td>"
                 f"<td>{_f(a.get('kv_capacity_tokens'))}</td><td>{_f(a.get('max_stable_concurrency'))}</td>"
                 f"<td>{_f(a.get('throughput_at_slo'))}</td><td>{e(str(a.get('stop_reason')))}</td></tr>")
    h.append("</table><h2>Load levels</h2><table><tr><th>arm</th>"
             + "".join(f"<th>{c}</th>" for c, _ in LEVEL_COLUMNS) + "</tr>")
    for a in result.get("arms") or []:
        for lv in a.get("levels") or []:
            cells = [f"c={lv['concurrency']}" if lv.get("concurrency") else f"{lv.get('request_rate')}/s"]
            cells += [_f(lv.get(c), nd) for c, nd in LEVEL_COLUMNS[1:]]
            h.append(f"<tr><td>{e(a['name'])}</td>" + "".join(f"<td>{e(str(x))}</td>" for x in cells) + "</tr>")
    h.append("</table>")
    q_rows = [(a["name"], a["quality"]) for a in result.get("arms") or [] if a.get("quality")]
    if q_rows:
        h.append(f"<h2>Quality drift vs {e(str(result.get('baseline')))}</h2><table id='quality'><tr><th>arm</th>"
                 "<th>exact match</th><th>agreeing prefix</th><th>mean first divergence</th>"
                 "<th>mean logprob diff</th><th>mean |logprob diff|</th></tr>")
        for name, q in q_rows:
            h.append(f"<tr><td>{e(name)}</td><td>{_f(q.get('exact_match_rate'), 2)}</td>"
                     f"<td>{_f(q.get('token_agreement'), 2)}</td><td>{_f(q.get('mean_first_divergence'))}</td>"
                     f"<td>{_f(q.get('mean_logprob_diff'), 3)}</td><td>{_f(q.get('mean_abs_logprob_diff'), 3)}</td></tr>")
        h.append("</table>")
    h.append(f"<p><small>{e(wl.get('description', ''))}. kvarn {e(str(result.get('kvarn_version')))}, "
             f"{e(str(result.get('created')))}, schema {e(str(result.get('schema')))}.</small></p></body></html>")
    return "\n".join(h)
