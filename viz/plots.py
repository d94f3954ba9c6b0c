#!/usr/bin/python3
"""The paper's quantitative figures from `smarttrim eval --json FILE` outputs.

  plots.py histogram --out FILE.png EVAL.json [EVAL.json ...]
      per-example GFLOPs, one histogram per model, a line at each mean and
      the full model's cost as a reference line
  plots.py tradeoff --out FILE.png EVAL.json [EVAL.json ...]
      accuracy (%) against mean GFLOPs (FLOPs ratio on the top axis): the
      full model as a star, SmartTrim targets as labelled points, a theta
      sweep as a solid line, the top-k baseline as a dashed line

A missing file, bad JSON or a missing key prints one line naming the file
and key on stderr and exits 1, leaving no output file; usage errors exit 2.
Run with Debian's /usr/bin/python3 (python3-matplotlib).
"""
import argparse
import json
import os
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

METHODS = ("full", "smarttrim", "theta_sweep", "topk")


class InputError(Exception):
    pass


def need(run, key, kind):
    """run[key] checked to be a number ("number") or a list of numbers ("numbers")."""
    if key not in run:
        raise InputError(f"{run['_file']}: missing key '{key}'")
    value = run[key]
    is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    ok = is_number(value) if kind == "number" else (isinstance(value, list) and all(map(is_number, value)))
    if not ok:
        expected = "a number" if kind == "number" else "a list of numbers"
        raise InputError(f"{run['_file']}: key '{key}' must be {expected}")
    return value


def load(path, keys):
    """One eval JSON with its `keys` (name -> kind) checked; adds _file, method and label."""
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON: {e}")
    if not isinstance(run, dict):
        raise InputError(f"{path}: not a JSON object")
    run["_file"] = path
    if run.get("method") not in METHODS:
        raise InputError(f"{path}: key 'method' must be one of {', '.join(METHODS)}" if "method" in run
                         else f"{path}: missing key 'method'")
    for key, kind in keys.items():
        need(run, key, kind)
    extra = {"theta_sweep": "token_threshold", "topk": "keep_ratio"}.get(run["method"])
    if extra:
        need(run, extra, "number")
    run.setdefault("label", default_label(run))
    return run


def default_label(run):
    method = run["method"]
    if method == "full":
        return "full model"
    if method == "smarttrim":
        return f"SmartTrim target {run['target']}" if "target" in run else f"SmartTrim {run['flops_ratio_mean']:.2f}x"
    if method == "theta_sweep":
        return f"theta {run['token_threshold']:g}"
    return f"top-k keep {run['keep_ratio']:g}"


def full_gflops(runs):
    """The unpruned model's GFLOPs: from its own file, else implied by any run's mean ratio."""
    for run in runs:
        if run["method"] == "full":
            return run["gflops_mean"]
    for run in runs:
        if run.get("flops_ratio_mean", 0) > 0:
            return run["gflops_mean"] / run["flops_ratio_mean"]
    return None


def histogram(paths, ax):
    runs = [load(p, {"gflops": "numbers", "gflops_mean": "number", "flops_ratio_mean": "number"}) for p in paths]
    full = full_gflops(runs)
    pruned = [r for r in runs if r["method"] != "full"]
    values = [g for r in pruned for g in r["gflops"]]
    lo, hi = (min(values), max(values)) if values else (0, 1)
    bins = [lo + (hi - lo + 1e-9) * i / 30 for i in range(31)]  # shared bins, so bars compare
    for i, run in enumerate(pruned):
        colour = f"C{i}"
        ax.hist(run["gflops"], bins=bins, alpha=0.5, color=colour,
                label=f"{run['label']} (mean {run['gflops_mean']:.2f})")
        ax.axvline(run["gflops_mean"], color=colour, linewidth=1.5)
    if full is not None:
        ax.axvline(full, color="black", linestyle="--", label=f"full model ({full:.2f})")
    ax.set_xlabel("GFLOPs per example")
    ax.set_ylabel("examples")
    ax.set_title("Per-example cost")


def tradeoff(paths, ax):
    runs = [load(p, {"accuracy": "number", "gflops_mean": "number", "flops_ratio_mean": "number"}) for p in paths]
    point = lambda r: (r["gflops_mean"], 100 * r["accuracy"])  # noqa: E731
    for run in runs:
        if run["method"] == "full":
            ax.plot(*point(run), marker="*", markersize=16, color="black", linestyle="none", label=run["label"])
    targets = [r for r in runs if r["method"] == "smarttrim"]
    for i, run in enumerate(targets):
        ax.plot(*point(run), marker="o", markersize=8, color="C0", linestyle="none",
                label="SmartTrim (labels: cost target)" if i == 0 else None)
        ax.annotate(str(run.get("target", run["label"])), point(run), textcoords="offset points", xytext=(6, 6))
    sweeps = (("theta_sweep", "-", "^", "C1", "SmartTrim theta sweep (labels: theta)", "token_threshold"),
              ("topk", "--", "s", "C2", "top-k baseline (labels: keep ratio)", "keep_ratio"))
    for method, style, marker, colour, name, key in sweeps:
        line = sorted((r for r in runs if r["method"] == method), key=lambda r: r["gflops_mean"])
        if line:
            ax.plot([r["gflops_mean"] for r in line], [100 * r["accuracy"] for r in line], linestyle=style,
                    marker=marker, color=colour, label=name)
            for r in line:
                ax.annotate(f"{r[key]:g}", point(r), textcoords="offset points", xytext=(4, -12), fontsize=8,
                            color=colour)
    full = full_gflops(runs)
    if full:  # the same x axis read as a fraction of the unpruned model's cost
        top = ax.secondary_xaxis("top", functions=(lambda g: g / full, lambda r: r * full))
        top.set_xlabel("FLOPs ratio (pruned / full)")
    ax.set_xlabel("mean GFLOPs per example")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("histogram", "tradeoff"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, help="the PNG to write")
        p.add_argument("evals", nargs="+", metavar="EVAL.json")
    args = parser.parse_args()  # exits 2 with the usage on stderr

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        (histogram if args.command == "histogram" else tradeoff)(args.evals, ax)
    except InputError as e:
        print(f"plots.py: {e}", file=sys.stderr)
        return 1
    ax.legend(fontsize=8)
    fig.tight_layout()
    # Written under a temporary name and renamed: a failure leaves no half-written PNG.
    out_dir = os.path.dirname(os.path.abspath(args.out))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".plot_", suffix=".png", dir=out_dir)
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a plot is an ordinary file
        os.replace(tmp, args.out)
    except OSError as e:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        print(f"plots.py: {args.out}: cannot write: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
