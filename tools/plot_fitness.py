#!/usr/bin/env python3
"""Fitness over evaluations from a `genesis evolve --json` report: every evaluated candidate's fitness (speedup of
the geometric mean over training shapes vs the baseline genome) and the confirmed best so far.
Usage: plot_fitness.py report.json fitness.png   (needs matplotlib: pip install matplotlib)"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        r = json.load(f)
    trace = r["trace"]
    ok = [t for t in trace if t["verdict"] == "ok"]
    bad = [t for t in trace if t["verdict"] not in ("ok", "invalid")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.scatter([t["i"] for t in ok], [t["fitness"] for t in ok], s=6, alpha=0.45, label="candidate")
    ax.step([t["i"] for t in trace], [t["best"] for t in trace], where="post", color="C3", lw=2,
            label="confirmed best")
    if bad:
        ax.scatter([t["i"] for t in bad], [1.0] * len(bad), marker="x", color="k", s=18,
                   label="crash / wrong / timeout")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("speedup vs baseline genome (geomean, training shapes)")
    ax.set_title("genesis evolve: {} {} {}, seed {}, {} evaluations".format(
        r["family"], r["path"], r["strategy"], r["seed"], r["evaluations"]))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
