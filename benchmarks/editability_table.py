"""Editability and label-proxy table from `edit` task workdirs (their edit.json 'measured').

    python benchmarks/editability_table.py --edit latent_opt=E_LO --edit pti=E_PTI ... \
        --out benchmarks/results/editability_64fm

Writes OUT.json (each method's inversion summary + 'measured') and OUT.md. The edit task does
the measuring (`ganinv_jax/editing/measure.py`); this script only tabulates.
"""

from __future__ import annotations

import argparse
import json
import os

from ganinv_jax import atomic


def row(method: str, edit_dir: str) -> dict:
    edit = json.load(open(os.path.join(edit_dir, "edit.json")))
    summary = json.load(open(os.path.join(edit["source"], "summary.json")))
    agg = summary["aggregates"]
    return {
        "method": method,
        "images": edit["images"],
        "generator_mode": edit["generator_mode"],
        "inversion": {k: agg[k]["mean"] for k in ("mse", "psnr", "lpips", "seconds")},
        "iterations": agg["iterations"]["mean"],
        "measured": edit["measured"],
        "directions": [d["name"] for d in edit["directions"]],
        "strengths": edit["strengths"],
    }


def markdown(rows: list[dict]) -> str:
    names = rows[0]["directions"]
    lines = [
        "| method | images | inversion MSE | PSNR | LPIPS moved (tuned) | LPIPS moved (base) | "
        "editability ratio (mean of per-image) | ratio of means |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, inv = r["measured"], r["inversion"]
        moved = sum(m["lpips_moved"].values()) / len(m["lpips_moved"])
        ed = m.get("editability")
        lines.append(
            f"| {r['method']} | {r['images']} | {inv['mse']:.5f} | {inv['psnr']:.2f} | "
            f"{moved:.4f} | "
            + (
                f"{ed['lpips_moved_base']:.4f} | {ed['ratio']:.3f} | {ed['ratio_of_means']:.3f} |"
                if ed
                else "(base G) | 1 by definition | |"
            )
        )
    lines += ["", "Per direction (editability ratio, mean / median over images):", ""]
    lines.append("| method | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for r in rows:
        ed = r["measured"].get("editability")
        if ed:
            per = ed["per_direction"]
            cells = [f"{per[n]['ratio']:.3f} / {per[n]['ratio_median']:.3f}" for n in names]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    lines += ["", "InterFaceGAN label proxy (strongest positive strength):", ""]
    lines.append(
        "| method | direction | moved toward B | nearest = B before | after | "
        "margin before | after |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        proxy = r["measured"].get("label_proxy", {}).get("per_direction", {})
        for n, p in proxy.items():
            lines.append(
                f"| {r['method']} | {n} | {p['moved_toward_b']:.3f} | "
                f"{p['nearest_is_b_before']:.3f} | {p['nearest_is_b_after']:.3f} | "
                f"{p['margin_before']:.3f} | {p['margin_after']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edit", action="append", required=True, help="METHOD=EDIT_WORKDIR")
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args()
    rows = [row(*spec.split("=", 1)) for spec in args.edit]
    atomic.write_json(args.out + ".json", rows, indent=2)
    atomic.write_text(args.out + ".md", markdown(rows))
    print(json.dumps([{"method": r["method"], **r["inversion"]} for r in rows]))


if __name__ == "__main__":
    main()
