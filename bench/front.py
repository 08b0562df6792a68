"""Every size from one run: the darwin family against per-size runs and the baselines, at four sizes.

    python bench/front.py                                   # SmolLM2-135M, 25/40/50/60%: results/front.*
    python bench/front.py --sizes 0.3,0.6 --work /tmp/fr --out /tmp/fr-out data.eval_blocks=4   # smaller

Rows, at every size: the darwin family (one database and one set of replace-one scores for all sizes, the
`mip` profile), uniform (`evoprune prune --method uniform`) and depth (ShortGPT). Columns: parameters,
block sparsity, KL to the dense model and perplexity on the held-out split, the unseen-text mean (news,
how-to, math: *dev* text, used to choose settings before) and the held-back Austen novels (*test* text,
never used to choose), decode speedup over dense in transformers and in llama.cpp (f16), all models of
the table timed in one llama.cpp process, interleaved repeat by repeat.

Wall time to produce all four sizes: the family's database and replace-one scoring are timed apart (the
family builds them in a store of its own under --work, so nothing is reused from earlier runs; teacher
caches and the dense model's quality figures are). Per-size darwin runs would each build and score their
own database: their time is 4 x (database + scoring) + the sizes' own time, from the same measurements.
A single-size run's point equals the family's point at that size (tests/darwinlm/test_family.py), so
its quality is not measured again.

Everything resumes: a finished run in --work is read, not redone (its wall time is kept in timings.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evoprune import api  # noqa: E402
from evoprune.atomic import write_json, write_text  # noqa: E402
from evoprune.config import load_config  # noqa: E402
from evoprune.darwinlm.family_speed import gguf_of, run_gguf  # noqa: E402
from evoprune.models import resolve_model_path  # noqa: E402
from evoprune.report import markdown_table, save_png  # noqa: E402
from evoprune.serving.engine_gguf import default_threads  # noqa: E402
from evoprune.serving.engine_timing import measure_ggufs  # noqa: E402

MODEL = "smollm2-135m"
COLUMNS = ["size", "approach", "params", "block_sparsity", "kl_to_teacher", "perplexity", "perplexity_ci95",
           "unseen_ppl_mean", "heldback_perplexity", "decode_speedup", "llamacpp_decode_speedup"]
BASELINES = ("uniform", "depth")


def timed(timings: dict, path: Path, name: str, done: Path, run) -> None:
    """Run `run()` unless `done` exists, and keep its wall time under `name` in `path`."""
    if done.exists() and name in timings:
        return
    started = time.time()
    run()
    timings[name] = round(time.time() - started, 1)
    write_json(path, timings)


def row_of(folder: Path, size: float, approach: str, key: str) -> dict:
    m = json.loads((folder / "metrics.json").read_text())
    r, target = m[key], m.get("target") or {}
    return {"size": size, "approach": approach, "params": r["params"],
            "block_sparsity": target.get("achieved_sparsity"), **{c: r.get(c) for c in COLUMNS[4:10]},
            "folder": str(folder)}


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    styles = {"darwin family": ("o-", "#c44e52"), "uniform": ("s--", "#888888"), "depth": ("^:", "#4c72b0")}
    for approach, (marker, color) in styles.items():
        mine = sorted((r for r in rows if r["approach"] == approach), key=lambda r: r["params"])
        if not mine:
            continue
        params = [r["params"] / 1e6 for r in mine]
        axes[0].plot(params, [r["kl_to_teacher"] for r in mine], marker, color=color, label=approach)
        axes[1].plot(params, [r["heldback_perplexity"] or float("nan") for r in mine], marker, color=color,
                     label=approach)
        axes[2].plot(params, [r.get("llamacpp_decode_speedup") or float("nan") for r in mine], marker, color=color,
                     label=approach)
    axes[0].set(xlabel="parameters (M)", ylabel="KL to dense (held-out)", yscale="log")
    axes[1].set(xlabel="parameters (M)", ylabel="perplexity, Austen (test text)", yscale="log")
    axes[2].set(xlabel="parameters (M)", ylabel="llama.cpp decode speedup (f16)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Trailing key=value words are config overrides for every run.")
    ap.add_argument("--sizes", default="0.25,0.4,0.5,0.6", help="block sparsities, comma list")
    ap.add_argument("--work", type=Path, default=Path("results/tmp/front"))
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--name", default="front")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    sizes = [float(s) for s in args.sizes.split(",")]
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    model = overrides.pop("model.source", MODEL)
    args.work.mkdir(parents=True, exist_ok=True)
    timings_path = args.work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    family_dir = args.work / "family"
    family_overrides = {**overrides, "database.store": str((args.work / "store").absolute())}

    timed(timings, timings_path, "database", args.work / "store",
          lambda: api.darwin(model, family_dir, sparsity=sizes, overrides=family_overrides, phase="database",
                             progress=False))
    timed(timings, timings_path, "family", family_dir / "front.json",
          lambda: api.darwin(model, family_dir, sparsity=sizes, overrides=family_overrides, progress=False))
    front = json.loads((family_dir / "front.json").read_text())["front"]
    rows = [row_of(family_dir / r["folder"], float(r["folder"].split("-")[1]), "darwin family", "pruned")
            for r in front]
    for method in BASELINES:
        for size in sizes:
            folder = args.work / f"{method}-{size:g}"
            timed(timings, timings_path, folder.name, folder / "metrics.json",
                  lambda folder=folder, size=size, method=method: api.prune(
                      model, folder, method=method, sparsity=size, overrides=overrides, progress=False, force=True))
            rows.append(row_of(folder, size, method, "pruned"))

    cfg = load_config(None, args.overrides)
    ggufs = {"dense": gguf_of(resolve_model_path(model), args.work / "dense-gguf")}
    ggufs.update({f"{r['approach']} {r['size']:g}": run_gguf(Path(r["folder"])) for r in rows})
    ev = cfg.eval
    speed = measure_ggufs(ggufs, ev.prompt_len, ev.new_tokens, ev.warmup, ev.repeats, ev.threads or default_threads(),
                          ev.repack, seed=cfg.seed)
    for r in rows:
        r["llamacpp_decode_speedup"] = (speed[f"{r['approach']} {r['size']:g}"].decode_tokens_per_s
                                        / speed["dense"].decode_tokens_per_s)
    rows.sort(key=lambda r: (r["size"], r["approach"]))

    scoring = json.loads((family_dir / front[0]["folder"] / "metrics.json").read_text())["search"][
        "replace_one_seconds"]
    sizes_only = timings["family"] - scoring
    walls = [{"approach": "darwin family (one run)", "seconds": timings["database"] + timings["family"],
              "how": "database + (scoring + every size), measured"},
             {"approach": "darwin, one run per size", "seconds": len(sizes) * (timings["database"] + scoring) + sizes_only,
              "how": f"{len(sizes)} x (database + scoring) + every size, from the same measurements"},
             {"approach": "darwin, one size (for the 1.5x target)",
              "seconds": timings["database"] + scoring + sizes_only / len(sizes),
              "how": "database + scoring + an average size"},
             *({"approach": m, "seconds": sum(timings[f"{m}-{s:g}"] for s in sizes), "how": "sum of the runs"}
               for m in BASELINES)]
    dense = json.loads((family_dir / front[0]["folder"] / "metrics.json").read_text())["dense"]
    write_json(args.out / f"{args.name}.json", {"rows": rows, "wall": walls, "timings": timings,
                                                "dense": {k: dense.get(k) for k in COLUMNS[2:10]},
                                                "machine": platform.processor() or platform.machine()})
    plot(rows, args.out / f"{args.name}.png")
    text = (f"# {__doc__.splitlines()[0]}\n\nMade by `python bench/{Path(__file__).name} "
            f"{' '.join(sys.argv[1:] if argv is None else argv)}` on {platform.machine()} "
            f"({default_threads()} threads). SmolLM2-135M, one-shot (no recovery training). Dense: "
            f"{dense['params']:,} parameters, held-out perplexity {dense['perplexity']:.4g}, unseen (dev) "
            f"{dense.get('unseen_ppl_mean') or float('nan'):.4g}, Austen (test) "
            f"{dense.get('heldback_perplexity') or float('nan'):.4g}.\n\n"
            + markdown_table(rows, COLUMNS) + f"\n![front]({args.name}.png)\n\n## Wall time for all "
            f"{len(sizes)} sizes\n\n" + markdown_table(walls, ["approach", "seconds", "how"])
            + "\n" + "\n".join(__doc__.split("\n\n")[2:5]) + "\n")
    write_text(args.out / f"{args.name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
