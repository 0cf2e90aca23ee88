#!/usr/bin/env python3
"""The engine's logits against transformers + PEFT, an implementation nobody here wrote.

Builds a small random Llama model (GQA: 4 query heads over 2 KV heads) and a PEFT LoRA
adapter on all seven projections with random A and B, saves both in the layouts the engine
reads (HF safetensors + config.json; adapter_config.json + adapter_model.safetensors), and
compares, on token-id prompts:

* the engine (`engine-logits`: its f32 path on the CPU, or with `--engine-device cuda` its
  bf16 path on the GPU) with the model and adapter loaded back from those files by
  transformers + PEFT, in f32 and in bf16 on the GPU (f64 on the CPU as well);
* with and without the adapter;
* the last position after one batched prefill, and every position fed one token per step
  through the engine's KV cache.

Every weight is drawn in f32 and then rounded to a bf16-representable value before saving,
so the f32 and bf16 runs of transformers see exactly the same numbers, and the engine's
bf16 adapter storage (ADAPTER_DTYPE) loses nothing: the f32 comparison measures arithmetic,
not weight rounding.

Error of one comparison: for every (prompt, position) row of logits,
``max |engine - reference| / max |reference|`` over the vocabulary; the figure reported is the
largest over all rows; that is what must stay under the tolerance: 1e-4 against f32 and f64
references, 2e-2 against bf16 (and for the engine's own bf16 path against any reference). The table also gives ``||engine - reference|| / ||reference||``
over all logits together, and how far transformers' own f32 and bf16 runs are from its f64 run
(the floor of what a comparison with each can show).

Usage (on the GPU machine, where Python has torch, transformers and peft):
    python3 worker/scripts/hf_peft_check.py --engine gpu-bin/engine-logits --out "$OUT"
Exits non-zero if any comparison misses its tolerance.
"""

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOLERANCE = {"float64": 1e-4, "float32": 1e-4, "bfloat16": 2e-2}
SEED = 1234


def bf16_exact_(t: torch.Tensor) -> None:
    """Rounds `t` in place to values bf16 represents exactly (kept in t's dtype)."""
    t.copy_(t.to(torch.bfloat16).to(t.dtype))


def build_model(model_dir: str, layers: int) -> LlamaConfig:
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=128,
        # Larger than the default 0.02 so attention is far from uniform and the layers matter.
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Norm gains start at 1; random ones check each is applied where it belongs.
                p.uniform_(0.5, 1.5)
            bf16_exact_(p)
    model.save_pretrained(model_dir)
    # Older transformers write rope_theta at the top level, newer ones inside
    # rope_parameters; the engine reads the former (default 10000).
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    if "rope_theta" not in saved:
        theta = (saved.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        saved["rope_theta"] = theta
        with open(path, "w") as f:
            json.dump(saved, f, indent=2)
        print(f"note: config.json had no top-level rope_theta; wrote {theta}")
    return cfg


def build_adapter(model_dir: str, adapter_dir: str) -> None:
    base = LlamaForCausalLM.from_pretrained(model_dir).to(torch.float32)
    lcfg = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=PROJECTIONS,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, lcfg)
    n = 0
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                # PEFT initialises B to zero (a no-op adapter): draw both at random.
                p.normal_(0.0, 0.1 if "lora_A" in name else 0.05)
                bf16_exact_(p)
                n += 1
    assert n == 2 * 7 * base.config.num_hidden_layers, f"{n} LoRA tensors"
    peft_model.save_pretrained(adapter_dir)


def hf_logits(model_dir, adapter_dir, dtype, device, prompts):
    """Logits of every position of every prompt, as f64 CPU tensors `[len, vocab]`."""
    model = LlamaForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model = model.to(device=device, dtype=dtype).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], dtype=torch.long, device=device)
            out.append(model(input_ids=ids).logits[0].to("cpu", torch.float64))
    return out


def engine_logits(engine, model_dir, adapter_dir, prompts, all_positions, device):
    cmd = [engine, "--model", model_dir, "--device", device]
    if adapter_dir is not None:
        cmd += ["--adapter", adapter_dir]
    for p in prompts:
        cmd += ["--tokens", ",".join(map(str, p))]
    if all_positions:
        cmd.append("--all-positions")
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"engine-logits failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr}")
    res = json.loads(run.stdout)
    return res, [torch.tensor(rows, dtype=torch.float64) for rows in res["logits"]]


def max_rel_error(got, want):
    """Largest over rows of max|got - want| / max|want| (rows: prompt positions)."""
    worst = 0.0
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        if not torch.isfinite(g).all():
            return float("inf")
        err = (g - w).abs().amax(dim=-1) / w.abs().amax(dim=-1)
        worst = max(worst, err.max().item())
    return worst


def norm_rel_error(got, want):
    """||got - want|| / ||want|| over all rows together (Frobenius), for context."""
    g, w = torch.cat(got), torch.cat(want)
    return ((g - w).norm() / w.norm()).item()


def runnable(engine: str, work: str) -> str:
    """The engine binary, copied to an executable file if the carried copy lost its mode."""
    if os.access(engine, os.X_OK):
        return os.path.abspath(engine)
    dst = os.path.join(work, "engine-logits")
    shutil.copy(engine, dst)
    os.chmod(dst, os.stat(dst).st_mode | stat.S_IXUSR)
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", required=True, help="path of the engine-logits binary")
    ap.add_argument("--out", help="folder for hf_peft_check.json (the full results)")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument(
        "--engine-device",
        default="cpu",
        help="cpu (the engine's f32 path) or cuda (its bf16 path; a --features cuda build)",
    )
    args = ap.parse_args()

    torch.manual_seed(SEED)
    if hasattr(torch.backends, "cuda"):
        # f32 means f32: no TF32 in the reference's matrix products.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    gpu = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(SEED)
    prompts = [[1]] + [
        [1] + torch.randint(3, 256, (n - 1,), generator=gen).tolist() for n in (7, 19, 40)
    ]

    work = tempfile.mkdtemp(prefix="hf_peft_check.")
    model_dir, adapter_dir = os.path.join(work, "model"), os.path.join(work, "adapter")
    build_model(model_dir, args.layers)
    build_adapter(model_dir, adapter_dir)
    engine = runnable(args.engine, work)

    refs = {}  # (adapter, dtype name) -> logits per prompt
    for adapter in (None, adapter_dir):
        for dtype, device in (
            (torch.float64, "cpu"),
            (torch.float32, gpu),
            (torch.bfloat16, gpu),
        ):
            name = str(dtype).removeprefix("torch.")
            refs[(adapter, name)] = hf_logits(model_dir, adapter, dtype, device, prompts)

    rows, dtypes = [], {}
    for adapter in (None, adapter_dir):
        label = "LoRA r=8, 7 proj" if adapter else "none"
        for all_positions in (False, True):
            res, got = engine_logits(
                engine, model_dir, adapter, prompts, all_positions, args.engine_device
            )
            engine_bf16 = "bf16" in str(res["dtypes"].get("base_weights"))
            dtypes[label] = res["dtypes"]
            mode = "every position, decode" if all_positions else "last position, prefill"
            for name, ref in refs.items():
                if name[0] != adapter:
                    continue
                want = ref if all_positions else [r[-1:] for r in ref]
                err = max_rel_error(got, want)
                # The coarser of the two precisions sets the tolerance.
                tol = TOLERANCE["bfloat16"] if engine_bf16 else TOLERANCE[name[1]]
                norm_err = norm_rel_error(got, want)
                rows.append(
                    {
                        "adapter": label,
                        "engine_positions": mode,
                        "reference": f"transformers{' + PEFT' if adapter else ''} {name[1]}"
                        f" ({'cpu' if name[1] == 'float64' else gpu})",
                        "max_rel_error": err,
                        "norm_rel_error": norm_err,
                        "tolerance": tol,
                        "pass": err < tol,
                    }
                )

    # How far each reference itself is from the f64 one (every position): the floor of what
    # a comparison with it can show. Context only, no pass or fail.
    for adapter in (None, adapter_dir):
        exact = refs[(adapter, "float64")]
        for name in ("float32", "bfloat16"):
            ref = refs[(adapter, name)]
            rows.append(
                {
                    "adapter": "LoRA r=8, 7 proj" if adapter else "none",
                    "engine_positions": f"(none: transformers {name} ({gpu}) itself)",
                    "reference": "transformers" + (" + PEFT" if adapter else "") + " float64 (cpu)",
                    "max_rel_error": max_rel_error(ref, exact),
                    "norm_rel_error": norm_rel_error(ref, exact),
                    "tolerance": None,
                    "pass": None,
                }
            )

    # The adapter must matter, or the comparison with it proves nothing.
    effect = max_rel_error(refs[(adapter_dir, "float32")], refs[(None, "float32")])

    import peft
    import transformers

    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "gpu": torch.cuda.get_device_name(0) if gpu == "cuda" else None,
    }
    print(f"versions: {versions}")
    print(f"engine dtypes: {dtypes}")
    print(f"prompt lengths: {[len(p) for p in prompts]}; layers: {args.layers}")
    print(f"adapter effect (transformers f32, with vs without): {effect:.3e}")
    print()
    print("| adapter | engine | reference | max rel. error | norm rel. error | tolerance | |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tol = "" if r["tolerance"] is None else f"{r['tolerance']:.0e}"
        verdict = "" if r["pass"] is None else ("ok" if r["pass"] else "FAIL")
        print(
            f"| {r['adapter']} | {r['engine_positions']} | {r['reference']} | "
            f"{r['max_rel_error']:.2e} | {r['norm_rel_error']:.2e} | {tol} | {verdict} |"
        )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "hf_peft_check.json"), "w") as f:
            json.dump(
                {
                    "versions": versions,
                    "engine_dtypes": dtypes,
                    "prompts": prompts,
                    "adapter_effect": effect,
                    "rows": rows,
                },
                f,
                indent=2,
            )
    shutil.rmtree(work, ignore_errors=True)
    # At least five times the bf16 tolerance, so even that comparison tells adapter from none.
    ok = all(r["pass"] is not False for r in rows) and effect > 5 * TOLERANCE["bfloat16"]
    if effect <= 5 * TOLERANCE["bfloat16"]:
        print(f"FAIL: the adapter barely changes the logits ({effect:.2e})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
