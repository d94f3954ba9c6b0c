#!/usr/bin/python3
"""Helpers of tools/demo.sh.

  demo_report.py questions TEST_QUESTIONS.json IMAGE.png
      prints up to four questions about that image, one per line, of different types
  demo_report.py report OUT_DIR ELAPSED_SECONDS
      reads OUT_DIR/eval/*.json (smarttrim eval and bench) and writes
      OUT_DIR/report.md and OUT_DIR/summary.json
"""
import json
import os
import re
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def questions(questions_json, image):
    image_id = int(re.search(r"_(\d{12})\.", os.path.basename(image)).group(1))
    about_image = [q for q in load(questions_json)["questions"] if q["image_id"] == image_id]
    annotations = questions_json.replace("_questions.json", "_annotations.json")
    kinds = {}
    if os.path.exists(annotations):
        kinds = {a["question_id"]: a["question_type"] for a in load(annotations)["annotations"]}
    seen, chosen = set(), []
    for q in about_image:  # one of each type first
        kind = kinds.get(q["question_id"], "")
        if kind not in seen:
            seen.add(kind)
            chosen.append(q["question"])
    for q in about_image:  # then fill up with any others
        if len(chosen) < 4 and q["question"] not in chosen:
            chosen.append(q["question"])
    print("\n".join(chosen[:4]))


def write_atomically(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def report(out, elapsed):
    ev = os.path.join(out, "eval")
    runs = {name: load(os.path.join(ev, name + ".json"))
            for name in ["full", "trim0.5-off", "trim0.5", "trim0.5-calibrated", "trim0.33",
                         "trim0.33-calibrated", "trim0.5-unguided"]}
    bench = {t: load(os.path.join(ev, "bench%s.json" % t)) for t in ["0.5", "0.33"]}
    sweep = sorted((load(os.path.join(ev, f)) for f in os.listdir(ev) if f.startswith("theta")),
                   key=lambda r: r["token_threshold"])
    topk = sorted((load(os.path.join(ev, f)) for f in os.listdir(ev) if f.startswith("topk")),
                  key=lambda r: r["keep_ratio"])
    full = runs["full"]
    drop = {t: 100 * (full["accuracy"] - runs["trim" + t]["accuracy"])
            for t in ["0.5", "0.33", "0.5-calibrated", "0.33-calibrated"]}

    lines = ["# SmartTrim demo: METER-tiny on Fashion-MNIST VQA", "",
             "Made by `make demo` in %d s on this machine (%d CPU threads). Test split: %d questions about "
             "held-out scenes (Fashion-MNIST t10k photographs, never seen in training)."
             % (elapsed, bench["0.5"]["threads"], full["examples"]), "",
             "| model | accuracy | GFLOPs / example | FLOPs ratio | speed-up, batch 1 | speed-up, batch 32 "
             "| latency, batch 1 | throughput, batch 32 |",
             "|---|---|---|---|---|---|---|---|"]

    def row(name, r, b, baseline=False):  # b: the bench run of this row, if one was made
        speed1 = "%.2fx" % b["batch1"]["speedup"] if b else "1.00x" if baseline else ""
        speed32 = "%.2fx" % b["batch32"]["speedup"] if b else "1.00x" if baseline else ""
        lines.append("| %s | %.2f%% | %.4f | %.3f +- %.3f | %s | %s | %.2f ms | %.0f /s |" % (
            name, 100 * r["accuracy"], r["gflops_mean"], r["flops_ratio_mean"], r["flops_ratio_std"],
            speed1, speed32, r["latency_ms_batch1"], r["throughput_batch32"]))

    row("full capacity", full, None, baseline=True)
    row("SmartTrim 0.5 model, trimmers off", runs["trim0.5-off"], None)
    row("SmartTrim, target 0.5 (theta 0)", runs["trim0.5"], None)
    row("SmartTrim, target 0.5, theta set on val for ratio 0.5", runs["trim0.5-calibrated"], bench["0.5"])
    row("SmartTrim, target 0.33 (theta 0)", runs["trim0.33"], None)
    row("SmartTrim, target 0.33, theta set on val for ratio 0.33", runs["trim0.33-calibrated"], bench["0.33"])
    row("SmartTrim 0.5, no cross-modal guidance", runs["trim0.5-unguided"], None)
    lines += ["",
              "Accuracy lost at target 0.5: %.2f points at theta 0 (FLOPs ratio %.3f) and %.2f points with theta "
              "set on the val split for ratio 0.5 (test ratio %.3f); goal: at most 2. At 0.33: %.2f and %.2f points."
              % (drop["0.5"], runs["trim0.5"]["flops_ratio_mean"], drop["0.5-calibrated"],
                 runs["trim0.5-calibrated"]["flops_ratio_mean"], drop["0.33"], drop["0.33-calibrated"]),
              "The theta-0 rows show where training landed, and `smarttrim eval --target-ratio` chooses the "
              "threshold that meets the target on held-out data (speed-ups are measured at those thresholds). "
              "The trimmers-off row is the target-0.5 model at full capacity: fine-tuning trains the "
              "backbone too (for the trimmed student alone when the teacher-loss weight alpha is 0, as in "
              "the demo), so it shows what the fine-tuned weights give untrimmed "
              "(%+.2f points against the full-capacity model)." % (100 * (runs["trim0.5-off"]["accuracy"] - full["accuracy"])),
              "Speed-ups come from `smarttrim bench`: the same trimmed model with its trimmers on and off, "
              "on the same 32 test examples, timed side by side (medians). Latency and throughput columns "
              "come from `smarttrim eval` runs, one after another, so compare those across rows with care.",
              "", "## Accuracy and FLOPs ratio by question type", "",
              "Each cell: accuracy, then the mean FLOPs ratio of that type's questions "
              "(with cross-modal guidance the trimmers can spend more on questions that need more).", "",
              "| model | " + " | ".join(sorted(full["accuracy_by_type"])) + " |",
              "|---|" + "---|" * len(full["accuracy_by_type"])]
    for name, r in runs.items():
        lines.append("| %s | " % r["label"] + " | ".join(
            "%.1f%% @ %.2f" % (100 * r["accuracy_by_type"].get(k, 0), r["flops_ratio_by_type"].get(k, 0))
            for k in sorted(full["accuracy_by_type"])) + " |")
    lines += ["", "## Threshold sweep and the fixed-ratio baseline", "",
              "The target-0.5 model at other token thresholds theta (keep a token iff its logit > theta), "
              "and the same trimmers used as a fixed-ratio top-k pruner (every example keeps the same share "
              "of tokens at every trimmer, no head is dropped).", "",
              "| run | accuracy | FLOPs ratio |", "|---|---|---|"]
    for r in sweep + [runs["trim0.5"]] + topk:
        lines.append("| %s | %.2f%% | %.3f |" % (r["label"], 100 * r["accuracy"], r["flops_ratio_mean"]))
    lines += ["", "## Figures", "",
              "Accuracy against FLOPs:", "", "![accuracy vs FLOPs](figures/accuracy_vs_flops.png)", "",
              "Per-example FLOPs over the test split (adaptive: sparse scenes cost less than crowded ones):", "",
              "![FLOPs histogram](figures/flops_histogram.png)", "",
              "What the trimmers kept for several questions about one test image, per layer "
              "(darkened patches were dropped; struck-through words were dropped):", "",
              "![with guidance](figures/overlay_guided.png)", "", "![without guidance](figures/overlay_unguided.png)",
              ""]
    write_atomically(os.path.join(out, "report.md"), "\n".join(lines))

    def brief(r):
        keys = ["label", "accuracy", "gflops_mean", "flops_ratio_mean", "flops_ratio_std", "examples",
                "latency_ms_batch1", "throughput_batch32", "accuracy_by_type", "flops_ratio_by_type"]
        return {k: r[k] for k in keys}

    summary = {"elapsed_seconds": elapsed, "models": {k: brief(v) for k, v in runs.items()},
               "bench": bench, "accuracy_drop_points": drop,
               "theta_sweep": [brief(r) | {"theta": r["token_threshold"]} for r in sweep],
               "topk": [brief(r) | {"keep_ratio": r["keep_ratio"]} for r in topk]}
    write_atomically(os.path.join(out, "summary.json"), json.dumps(summary, indent=1) + "\n")
    print("report: %s, accuracy %.2f%% full, %.2f%% at 0.5 (%.2f points lost), %.2f%% at 0.33"
          % (os.path.join(out, "report.md"), 100 * full["accuracy"], 100 * runs["trim0.5"]["accuracy"],
             drop["0.5"], 100 * runs["trim0.33"]["accuracy"]))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "questions":
        questions(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        report(sys.argv[2], int(sys.argv[3]))
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
