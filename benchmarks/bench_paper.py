"""``BENCH_SCALE=paper``: the qwen-to-gpt2 pair at its real size, random init, bf16, on one GPU; MFU.

    python benchmarks/bench_paper.py [--methods sft kd mta sra] [--steps 10] [--batch 8] [--seq-len 512]
                                     [--peak-tflops X] [--sync-debug] [--count-flops] [--dry-run]
                                     [--out PATH]

The architectures come from ``conf/model/qwen-to-gpt2.yaml`` (``arch`` + ``arch_config``: Qwen1.5-1.8B,
24 layers d=2048, vocabulary 151936; GPT-2 124M, 12 layers d=768, vocabulary 50257) built with
``AutoModelForCausalLM.from_config`` and random weights: nothing is downloaded and no tokenizer file is
read (stand-in tokenizers of the right sizes; ids are random). The teacher's weights are bf16 (frozen,
eval); the student trains in float32 under ``torch.autocast(bfloat16)`` (Lightning's ``bf16-mixed``).

* Same-tokenizer methods (``sft``, ``kd`` = SRKL at kd_rate 1, ``mta``) need one vocabulary, which this
  pair does not have: the student gets the teacher's 151936 ids (a GPT-2 body with the Qwen vocabulary,
  the large-vocabulary case). Cross-tokenizer methods (``sra``, ``uld``) use the two real vocabularies.
* The batch is ``--batch`` x ``--seq-len`` random ids per side, every position counted after a 64-token
  prompt, with the bench's synthetic word/phrase spans (``bench_methods.build_batch``'s generator).
* Each method runs in its own child process: ``--warmup`` steps, then ``--steps`` timed steps
  (``torch.cuda.synchronize`` around each), peak ``max_memory_allocated``.

MFU = achieved FLOP/s / the device's peak dense bf16 FLOP/s, with FLOP per trained token counted as the
floor ``2·N_teacher + 6·N_student`` (a forward is 2 FLOP per parameter per token, forward + backward 6),
where N counts the parameters that do matrix products per token: every parameter except the input
lookup tables (token and position embeddings), plus the output head once (so a tied GPT-2 head counts).
Attention's own FLOP (``L·d`` per token per layer) and the methods' extra work are not in the floor, so
MFU here is a lower bound of the hardware's use. Peak: :data:`PEAK_TFLOPS` by
``torch.cuda.get_device_name``, else ``--peak-tflops``. ``--dry-run`` (any machine) builds the models on
the ``meta`` device and prints the parameter counts and FLOP per token without allocating anything; on a
machine without a GPU the benchmark refuses to run otherwise. ``--count-flops`` adds one step per method
under :func:`benchmarks.common.count_flops` (the matmul FLOPs actually run, forward + backward, the
methods' own work included) and each method's count over KD's; ``--child NAME --device cpu`` runs one
method's child on the CPU and prints its record (minutes at this size; for ``--count-flops``). Writes
``benchmarks/results/paper.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import count_flops, run_json_child  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PAIR = "qwen-to-gpt2"
GPT2_VOCAB = 50257
#: dense bf16 peak TFLOP/s (no sparsity) by a substring of ``torch.cuda.get_device_name()``
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0}
#: name -> (overrides, one vocabulary?)
METHODS: dict[str, tuple[list[str], bool]] = {
    "sft": (["method=sft"], True),
    "kd": (["method=kd", "method.divergence=srkl", "method.kd_rate=1.0"], True),
    "mta": (["method=mta"], True),
    "sra": (["method=sra"], False),
    "uld": (["method=uld"], False),
}
NOT_ON_CPU = (
    "BENCH_SCALE=paper builds Qwen1.5-1.8B and GPT-2 at their real size in bf16 and needs a CUDA GPU; "
    "none is visible here. `python benchmarks/bench_paper.py --dry-run` prints the parameter counts "
    "and FLOP per token without a GPU; on a GPU host run `bash benchmarks/gpu_check.sh`."
)


class StandIn:
    """A tokenizer stand-in of ``size`` ids (``<i>`` strings: two of them share their first ids)."""

    all_special_ids: list[int] = []
    eos_token_id = bos_token_id = pad_token_id = None

    def __init__(self, size: int):
        self.size, self.name_or_path = size, f"stand-in-{size}"

    def __len__(self) -> int:
        return self.size

    def get_vocab(self) -> dict[str, int]:
        return {f"<{i}>": i for i in range(self.size)}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [f"<{i}>" for i in ids]


#: ``--shrink`` (tests): the paper path on a CPU with 2-layer models (the real vocabularies kept)
SHRINK = [
    "model.teacher.layers=2",
    "model.teacher.hidden=64",
    "model.teacher.heads=2",
    "model.teacher.intermediate=128",
    "model.student.layers=2",
    "model.student.hidden=32",
    "model.student.heads=2",
    "model.student.intermediate=64",
    "layer_map=uniform",
    "layer_map.num_pairs=2",
]


def pair_cfg(method: str = "sft", shrink: bool = False):
    from tests.helpers import compose_cfg

    return compose_cfg([f"model={PAIR}", *METHODS[method][0], *(SHRINK if shrink else [])])


def hf_configs(cfg, one_vocab: bool) -> tuple[Any, Any]:
    """The teacher's and the student's HF configs from the pair's ``arch`` + ``arch_config``."""
    from distillkit.models.pair import build_config

    t_side, s_side = cfg.model.teacher, cfg.model.student
    v_t = int(t_side.arch_config.get("vocab_size") or 0) or 151936
    v_s = v_t if one_vocab else int(s_side.arch_config.get("vocab_size") or GPT2_VOCAB)
    return build_config(t_side, StandIn(v_t), "teacher"), build_config(s_side, StandIn(v_s), "student")


def count_params(model) -> dict[str, int]:
    """``total``; ``lookup`` (input token + position embedding tables); ``matmul`` = total - lookup + the
    output head once when it is tied to the input embedding (its matrix multiplies every token)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    lookup = embed.numel()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, module in base.named_modules():
        if name.endswith(("wpe", "embed_positions")) and hasattr(module, "weight"):
            lookup += module.weight.numel()
    tied = head is embed or head.data_ptr() == embed.data_ptr() and not head.is_meta
    tied = tied or getattr(model.config, "tie_word_embeddings", False)
    return {"total": total, "lookup": lookup, "matmul": total - lookup + (head.numel() if tied else 0)}


def flop_per_token(n_teacher: int, n_student: int) -> int:
    """The floor of one distillation step per trained token: teacher forward + student forward/backward."""
    return 2 * n_teacher + 6 * n_student


def meta_counts(method: str) -> dict[str, Any]:
    """Parameter counts and FLOP per token of the pair for ``method``, built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = pair_cfg(method)
    t_cfg, s_cfg = hf_configs(cfg, METHODS[method][1])
    with torch.device("meta"):
        teacher = AutoModelForCausalLM.from_config(t_cfg)
        student = AutoModelForCausalLM.from_config(s_cfg)
    nt, ns = count_params(teacher), count_params(student)
    return {
        "teacher": {
            **nt,
            "vocab": t_cfg.vocab_size,
            "layers": t_cfg.num_hidden_layers,
            "dim": t_cfg.hidden_size,
        },
        "student": {
            **ns,
            "vocab": s_cfg.vocab_size,
            "layers": s_cfg.num_hidden_layers,
            "dim": s_cfg.hidden_size,
        },
        "flop_per_token": flop_per_token(nt["matmul"], ns["matmul"]),
    }


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return float(override)
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return value
    return None


def build_batch(B: int, L: int, v_t: int, v_s: int, device: str):
    """Random ids per side (B x L each), a 64-token prompt, the bench's word/phrase/aligned span grids."""
    import random

    import torch

    from benchmarks.bench_methods import chunk_units
    from distillkit.spans.membership import collate_membership
    from distillkit.types import Batch, SideBatch, SpanGrid

    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)

    def side(vocab: int) -> SideBatch:
        ids = torch.randint(0, vocab, (B, L), generator=gen)
        labels = ids.roll(-1, 1)
        labels[:, : min(64, L // 4)] = -100
        labels[:, -1] = -100
        pos = torch.arange(L)
        offsets = torch.stack([pos * 4, pos * 4 + 4], -1).expand(B, L, 2).contiguous()
        return SideBatch(ids, torch.ones(B, L, dtype=torch.long), labels, offsets)

    s_side = side(v_s)
    t_side = side(v_t) if v_t != v_s else s_side
    grids = {}
    for name, sizes, stride, skip in (("word", (2, 3), (2, 3), 0.1), ("phrase", (4, 8), (3, 5), 0.0)):
        mem = collate_membership([chunk_units(L, sizes, stride, skip, rng) for _ in range(B)], L)
        grids[name] = SpanGrid(mem, mem)
    grids["aligned"] = grids["word"]
    # ULD pairs response positions from the labels alone; no token pairs needed for the listed methods
    batch = Batch(s_side, t_side, [""] * B, [0] * B, torch.arange(B), grids=grids, num_tokens=B * L)
    return batch.to(device)


def run_child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.models.pair import LoadedModel
    from distillkit.module import DistillModule
    from distillkit.pipeline import build_method, enable_attention_capture

    cfg = pair_cfg(method, args.shrink)
    one_vocab = METHODS[method][1]
    t_cfg, s_cfg = hf_configs(cfg, one_vocab)
    torch.manual_seed(0)
    device = args.device
    cuda = device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    teacher = (
        AutoModelForCausalLM.from_config(t_cfg, dtype=torch.bfloat16).to(device).eval().requires_grad_(False)
    )
    student = AutoModelForCausalLM.from_config(s_cfg, dtype=torch.float32).to(device).train()
    counts = {"teacher": count_params(teacher), "student": count_params(student)}
    t_loaded = LoadedModel(teacher, StandIn(t_cfg.vocab_size), "teacher")
    s_loaded = LoadedModel(student, StandIn(s_cfg.vocab_size), "student")
    m = build_method(cfg)
    m.check_tokenizers(t_loaded.tokenizer, s_loaded.tokenizer)
    m.setup(t_loaded, s_loaded)
    enable_attention_capture(t_loaded, m.teacher_needs, None)
    enable_attention_capture(s_loaded, m.student_needs, None)
    module = DistillModule(s_loaded, t_loaded, m, cfg.trainer.optim).to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    batch = build_batch(args.batch, args.seq_len, t_cfg.vocab_size, s_cfg.vocab_size, device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = module.weighted_loss(module.compute_terms(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    record: dict[str, Any] = {
        "child": method,
        "one_vocabulary": one_vocab,
        "params": counts,
        "flop_per_token": flop_per_token(counts["teacher"]["matmul"], counts["student"]["matmul"]),
        "tokens": batch.num_tokens,
        "step_s": statistics.median(times),
        "step_s_range": [min(times), max(times)],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
    }
    if args.count_flops:  # one more step, under the FLOP counter (slower: dispatch)
        record["counted_flop_per_token"] = count_flops(step) / batch.num_tokens
    if args.sync_debug and cuda:
        import warnings

        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        record["sync_warnings"] = len(syncs)
        record["sync_examples"] = sorted(set(syncs))[:5]
    return record


def spawn(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method, "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    cmd += ["--sync-debug"] if args.sync_debug else []
    cmd += ["--count-flops"] if args.count_flops else []
    return run_json_child(cmd, {"child": method}, cwd=str(REPO))


def summarize(records: list[dict[str, Any]], peak: float | None) -> dict[str, dict[str, Any]]:
    out = {}
    for r in records:
        if "error" in r:
            out[r["child"]] = {"error": r["error"]}
            continue
        tps = r["tokens"] / r["step_s"]
        achieved = r["flop_per_token"] * tps
        out[r["child"]] = {
            "step_s": r["step_s"],
            "tokens_per_s": tps,
            "achieved_tflops": achieved / 1e12,
            "mfu": achieved / (peak * 1e12) if peak else None,
            "peak_memory_gib": r["peak_memory_gib"],
            "flop_per_token": r["flop_per_token"],
            "one_vocabulary": r["one_vocabulary"],
            **({"sync_warnings": r["sync_warnings"]} if "sync_warnings" in r else {}),
            **(
                {"counted_flop_per_token": r["counted_flop_per_token"]}
                if "counted_flop_per_token" in r
                else {}
            ),
        }
    kd = out.get("kd", {}).get("counted_flop_per_token")
    for r in out.values():  # each method's counted work over KD's (MTA's target is a ratio to its base)
        if kd and "counted_flop_per_token" in r:
            r["counted_flops_vs_kd"] = r["counted_flop_per_token"] / kd
    return out


def counted_text(r: dict[str, Any]) -> str:
    """The ``--count-flops`` part of a method's printed line ("" without it)."""
    if "counted_flop_per_token" not in r:
        return ""
    vs_kd = f" ({r['counted_flops_vs_kd']:.3f}x kd)" if "counted_flops_vs_kd" in r else ""
    return f"  counted {r['counted_flop_per_token'] / 1e9:.2f} GFLOP/token{vs_kd}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--methods", nargs="+", default=["sft", "kd", "mta", "sra"], choices=list(METHODS))
    cli.add_argument("--steps", type=int, default=10, help="timed steps per method (median)")
    cli.add_argument("--warmup", type=int, default=2)
    cli.add_argument("--batch", type=int, default=8)
    cli.add_argument("--seq-len", type=int, default=512)
    cli.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by its name)")
    cli.add_argument(
        "--sync-debug", action="store_true", help="count host syncs of one step (sync debug mode)"
    )
    cli.add_argument(
        "--count-flops",
        action="store_true",
        help="count one more step's matmul FLOPs per method (benchmarks.common.count_flops)",
    )
    cli.add_argument(
        "--dry-run", action="store_true", help="parameter counts and FLOP/token only (meta device)"
    )
    cli.add_argument("--out", type=Path, default=RESULTS / "paper.json")
    cli.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    cli.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="with --child: cpu runs one method's child on the CPU (slow at this size; e.g. --count-flops)",
    )
    cli.add_argument("--shrink", action="store_true", help=argparse.SUPPRESS)
    args = cli.parse_args(argv)

    if args.dry_run:
        result = {"pair": PAIR, "dry_run": True, "methods": {m: meta_counts(m) for m in args.methods}}
        for name, c in result["methods"].items():
            t, s = c["teacher"], c["student"]
            print(
                f"{name}: teacher {t['total'] / 1e6:.1f}M params ({t['matmul'] / 1e6:.1f}M matmul, V={t['vocab']}), "
                f"student {s['total'] / 1e6:.1f}M ({s['matmul'] / 1e6:.1f}M matmul, V={s['vocab']}), "
                f"FLOP/token 2*N_t + 6*N_s = {c['flop_per_token'] / 1e9:.2f} GFLOP"
            )
        return result

    import torch

    if args.child and (args.shrink or args.device == "cpu"):  # one child on the CPU (tests: --shrink)
        print(json.dumps(run_child(args.child, args)))
        return {}
    if not torch.cuda.is_available():
        raise SystemExit(NOT_ON_CPU)
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return {}
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, args.peak_tflops)
    records = [spawn(m, args) for m in args.methods]
    result = {
        "pair": PAIR,
        "device_name": name,
        "peak_tflops": peak,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "flop_rule": "2*N_teacher + 6*N_student per token; N = parameters minus lookup tables, tied head once",
        "methods": summarize(records, peak),
        "raw": records,
    }
    print(f"paper scale ({PAIR}, {args.batch} x {args.seq_len}, {name}, peak {peak} TFLOP/s bf16):")
    for m, r in result["methods"].items():
        if "error" in r:
            print(f"  {m:<5} failed: {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (--peak-tflops)"
        print(
            f"  {m:<5} step {r['step_s'] * 1e3:7.1f} ms  {r['tokens_per_s']:9.0f} tok/s  "
            f"{r['achieved_tflops']:6.1f} TFLOP/s  MFU {mfu}  peak {r['peak_memory_gib']:.1f} GiB"
            + counted_text(r)
        )
    from distillkit.utils.io import atomic_write_json

    atomic_write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
