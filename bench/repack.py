"""What llama.cpp's weight repacking is worth where it applies: a stand-in whose widths are block multiples.

    python bench/repack.py                     # writes results/repack.md and .json
    python bench/repack.py --threads 1 2 --repeats 9

evoprune turns repacking (llama.cpp's extra buffer types) off on CPUs with AMX, where its AMX backend
crashes on quantized GGUFs (docs/serving.md). On other CPUs it stays on, and this measures what it
buys there. SmolLM2-135M's widths (hidden 576) are not multiples of 256, so its q4_k_m files fall back
to 32-block types that the x86 repacker leaves alone (bench/serving.py's last table); this stand-in
is a random-weight Llama with a hidden size of 1024 and an MLP of 2816, so every matrix is
quantized to the type asked for. Each file is timed with repacking on and off, the two interleaved
repeat by repeat in one engine process (`engine_timing.measure_ggufs`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evoprune.atomic import write_json, write_text
from evoprune.darwinlm.llamacpp_latency import proxy_tokenizer
from evoprune.report import markdown_table
from evoprune.serving.engine_gguf import llama_cpp_version
from evoprune.serving.engine_timing import measure_ggufs
from evoprune.serving.gguf_export import export_gguf

SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4, head_dim=64, max_position_embeddings=1024)


def stand_in(folder: Path) -> Path:
    tokenizer = proxy_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPE)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quants", nargs="+", default=["q8_0", "q4_k_m"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="evoprune-repack-") as tmp:
        hf = stand_in(Path(tmp) / "hf")
        for quant in args.quants:
            path = export_gguf(hf, Path(tmp) / quant, quant=quant, tokenizer_pre="gpt-2").path
            for threads in args.threads:
                speeds = measure_ggufs({"on": path, "off": path}, args.prompt_len, args.new_tokens, warmup=2,
                                       repeats=args.repeats, threads=threads, repack={"on": "on", "off": "off"})
                on, off = speeds["on"], speeds["off"]
                rows.append({"format": quant, "threads": threads, "decode_on": on.decode_tokens_per_s,
                             "decode_off": off.decode_tokens_per_s,
                             "decode_off_over_on": off.decode_tokens_per_s / on.decode_tokens_per_s,
                             "prefill_on": on.prefill_tokens_per_s, "prefill_off": off.prefill_tokens_per_s,
                             "prefill_off_over_on": off.prefill_tokens_per_s / on.prefill_tokens_per_s})
    setup = (f"random-weight Llama stand-in {SHAPE}, byte-level vocabulary of 288; batch 1, prompt {args.prompt_len}, "
             f"{args.new_tokens} decode steps, median of {args.repeats} repeats after 2 warm-up rounds, repacking on "
             f"and off interleaved; {platform.processor() or platform.machine()}, llama-cpp-python "
             f"{llama_cpp_version()}; {time.time() - started:.0f} s")
    command = "python bench/repack.py " + " ".join(sys.argv[1:] if argv is None else argv)
    page = (f"# llama.cpp weight repacking on and off, where it applies\n\n{setup}\n\nCommand: `{command}`\n\n"
            + markdown_table(rows) + "\nTokens per second; `off_over_on` below 1 is what turning repacking off "
            "costs. evoprune keeps it on except on CPUs with AMX (docs/serving.md).\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "repack.json", {"setup": setup, "rows": rows})
    write_text(out / "repack.md", page)
    print(page)


if __name__ == "__main__":
    main()
