#!/usr/bin/env python3
"""camp's training speed against PyTorch's, measured on one GPU in one run.

usage: scripts/speed-table.py BENCH.jsonl ANCHOR.jsonl

BENCH.jsonl: `camp-worker bench --json` lines; ANCHOR.jsonl: the lines of
`torch_anchor.py --suite` (../shared/anchors). Prints a Markdown table, one
row per camp measurement: network, setting, camp img/s, the best PyTorch
figure for that network and batch (eager or any torch.compile mode, and
which), camp's ratio to it, and camp's ratio to the reference-style loop
(PyTorch eager in fp32 at the reference's batch of 128, the way the
reference trains). Rows whose PyTorch side is missing or failed say so.
"""
import json
import sys


def lines(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                yield json.loads(line)


def camp_net(config):
    if config.get("dual_path"):
        return "dual"
    bits = config.get("bits")
    return "fp32" if bits is None else f"qat{bits}"


def main(bench_path, anchor_path):
    anchors = [a for a in lines(anchor_path) if "images_per_s" in a]
    failed = [a for a in lines(anchor_path) if "error" in a]
    print("| network | setting | camp img/s | best PyTorch img/s (mode) | camp / best | camp / reference-style |")
    print("|---|---|---:|---:|---:|---:|")
    for row in lines(bench_path):
        config = row["config"]
        net, batch = camp_net(config), config["batch"]
        setting = f"batch {batch}" + (", bf16" if config["bf16"] else "") + (", channels-last" if config["channels_last"] else "")
        setting += ", CUDA graph" if config.get("cuda_graph") else ""
        camp = row["train_images_per_s"]
        peers = [a for a in anchors if a["net"] == net and a["batch"] == batch]
        best = max(peers, key=lambda a: a["images_per_s"], default=None)
        ref = next((a for a in anchors if a["net"] == net and a["batch"] == 128 and not a["bf16"] and not a["channels_last"]
                    and a["compile"] == "eager"), None)
        best_cell = f"{best['images_per_s']:,.0f} ({best['compile']}{', bf16' if best['bf16'] else ''})" if best else "-"
        ratio = f"{camp / best['images_per_s']:.2f}x" if best else "-"
        ref_ratio = f"{camp / ref['images_per_s']:.2f}x" if ref else "-"
        print(f"| {net} | {setting} | {camp:,.0f} | {best_cell} | {ratio} | {ref_ratio} |")
    for a in failed:
        print(f"\nPyTorch {a['net']} batch {a['batch']} {a['compile']} failed: {a['error']}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
