"""Plots of the case-study scenarios: `plot.py KIND RESULTS_DIR` writes RESULTS_DIR/plot.png.

Input: the load generator's CSVs of cumulative counters sampled every ~100 ms (load.csv;
flow1.csv and flow2.csv for `nics`) and the scenario's events.csv (t_ms,end_ms,event).
Rates are the counters' differences over a sliding window (WINDOW_S), so a re-partitioning
shows within a fraction of a second, as in the paper's per-second figures.
"""

import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WINDOW_S = 0.5


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], [[float(x) for x in r] for r in rows[1:] if r]
    return header, body


def read_events(folder):
    path = os.path.join(folder, "events.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [(float(r["t_ms"]) / 1000, float(r["end_ms"]) / 1000, r["event"]) for r in csv.DictReader(f)]


def rates(body, col, scale=1.0):
    """(t, rate) of column `col` over a sliding window of WINDOW_S."""
    out_t, out_r = [], []
    j = 0
    for i, row in enumerate(body):
        t = row[0] / 1000
        while body[j][0] / 1000 < t - WINDOW_S:
            j += 1
        if i == j:
            continue
        dt = t - body[j][0] / 1000
        if dt <= 0:
            continue
        out_t.append(t)
        out_r.append((row[col] - body[j][col]) / dt * scale)
    return out_t, out_r


def mark_events(ax, events, top):
    for i, (t, end, name) in enumerate(events):
        ax.axvspan(t, max(end, t + 0.05), color="0.85", zorder=0)
        ax.axvline(t, color="0.4", linestyle="--", linewidth=1)
        ax.text(t, top * (0.98 - 0.06 * (i % 2)), " " + name, fontsize=9, va="top", ha="left", color="0.2")


def finish(fig, ax, folder, title, ylabel):
    ax.set_title(title)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=9, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "plot.png"), dpi=110)


def storage(folder):
    header, body = read_csv(os.path.join(folder, "load.csv"))
    events = read_events(folder)
    servers = [i for i, h in enumerate(header) if h.startswith("s")]
    fig, ax = plt.subplots(figsize=(10, 5))
    top = 0
    total = None
    for k, col in enumerate(servers):
        t, r = rates(body, col)
        total = r if total is None else [a + b for a, b in zip(total, r)]
        ax.plot(t, r, label=f"server {k}", linewidth=1.6)
        top = max([top] + r)
    ax.plot(t, total, label="total", color="k", linewidth=1, linestyle=":")
    top = max([top] + total)
    err_col = header.index("errors")
    errs = [row[0] / 1000 for a, row in zip(body, body[1:]) if row[err_col] > a[err_col]]
    if errs:
        ax.plot(errs, [0] * len(errs), "rx", label="client errors", markersize=8)
    ax.set_ylim(0, top * 1.15)
    mark_events(ax, events, top * 1.15)
    finish(fig, ax, folder, "Memcached over Serval: requests/s per server as partitions move", "requests/s")


def replicas(folder):
    header, body = read_csv(os.path.join(folder, "load.csv"))
    events = read_events(folder)
    fig, ax = plt.subplots(figsize=(10, 5))
    top = 0
    for col, name in enumerate(header):
        if col == 0 or name == "failures":
            continue
        t, r = rates(body, col)
        ax.plot(t, r, label=f"replica {name}", linewidth=1.6)
        top = max([top] + r)
    f = header.index("failures")
    fails = [row[0] / 1000 for a, row in zip(body, body[1:]) if row[f] > a[f]]
    if fails:
        ax.plot(fails, [0] * len(fails), "rx", label="failed requests", markersize=8)
    ax.set_ylim(0, top * 1.2)
    mark_events(ax, events, top * 1.2)
    finish(fig, ax, folder, "Replicated web service: new connections/s per replica", "connections/s")


def figures(folder):
    """figures.txt (key=value ...) as a dict."""
    path = os.path.join(folder, "figures.txt")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return dict(kv.split("=", 1) for kv in f.read().split() if "=" in kv)


def goodput(folder, title, gap_key):
    header, body = read_csv(os.path.join(folder, "load.csv"))
    events = read_events(folder)
    fig, ax = plt.subplots(figsize=(10, 5))
    t, r = rates(body, 1, 8 / 1e6)
    ax.plot(t, r, label="legacy client goodput", linewidth=1.6)
    # The samples' own step (100 ms), unsmoothed, so a pause shows as a dip.
    t1 = [row[0] / 1000 for row in body[1:]]
    r1 = [(b[1] - a[1]) * 8 / 1e6 / max(1e-3, (b[0] - a[0]) / 1000) for a, b in zip(body, body[1:])]
    ax.plot(t1, r1, label="per 100 ms sample", linewidth=0.8, alpha=0.5)
    top = max([1] + r + r1)
    ax.set_ylim(0, top * 1.2)
    mark_events(ax, events, top * 1.2)
    fx = figures(folder)
    gap, at = fx.get(gap_key), fx.get(gap_key.replace("_ms", "_at_ms"))
    if gap not in (None, "0", "?") and at not in (None, "-", "?"):
        x = float(at) / 1000
        ax.axvspan(x, x + float(gap) / 1000, color="red", alpha=0.4, zorder=1)
        ax.annotate(f"longest pause after the event: {gap} ms", (x, top * 0.35), xytext=(8, 0),
                    textcoords="offset points", color="darkred", fontsize=10)
    elif gap == "0":
        ax.text(0.5, 0.3, "no pause of 20 ms or more after the event", transform=ax.transAxes,
                color="darkred", ha="center")
    finish(fig, ax, folder, title, "Mbit/s")


def nics(folder):
    events = read_events(folder)
    fig, ax = plt.subplots(figsize=(10, 5))
    top = 1
    # Each download's clock starts with it; starts.csv has its offset from the scenario's.
    offsets = {}
    starts = os.path.join(folder, "starts.csv")
    if os.path.exists(starts):
        with open(starts, newline="") as f:
            offsets = {int(r["flow"]): float(r["offset_ms"]) / 1000 for r in csv.DictReader(f)}
    for k in (1, 2):
        path = os.path.join(folder, f"flow{k}.csv")
        if not os.path.exists(path):
            continue
        _, body = read_csv(path)
        t, r = rates(body, 1, 8 / 1e6)
        t = [x + offsets.get(k, 0) for x in t]
        ax.plot(t, r, label=f"flow {k}", linewidth=1.6)
        top = max([top] + r)
    ax.set_ylim(0, top * 1.25)
    mark_events(ax, events, top * 1.25)
    finish(fig, ax, folder, "Load balancing across a server's interfaces: per-flow goodput", "Mbit/s")


def main():
    kind, folder = sys.argv[1], sys.argv[2]
    if kind == "storage":
        storage(folder)
    elif kind == "replicas":
        replicas(folder)
    elif kind == "client-migration":
        goodput(folder, "Client migration (Wi-Fi to cellular): goodput of one legacy TCP connection", "gap_ms")
    elif kind == "server-migration":
        goodput(folder, "Server migration (new address on another subnet): goodput", "stall_ms")
    elif kind == "nics":
        nics(folder)
    else:
        sys.exit(f"unknown plot {kind}")


if __name__ == "__main__":
    main()
