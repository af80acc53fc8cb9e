"""The GPU check: one command that proves the CUDA paths and measures the real training step.

Usage (on a machine with a CUDA GPU; no arguments needed)::

    python benchmarks/gpu_check.py                 # the whole check, about 8 minutes on an H100
    python benchmarks/gpu_check.py --smoke --device cpu   # the same plan at toy sizes (tests)

Without CUDA (and without ``--smoke``) it exits at once with a one-line message.
It runs, each step in its own process with a time limit so one failure or hang
cannot take the rest down:

1. ``pytest -m cuda`` (``tests/test_cuda.py``): fp32 / bf16 / fp16 + GradScaler,
   channels_last and ``torch.compile`` training runs of PiPa on the tiny synthetic
   benchmark, gradient checkpointing, bitwise resume on the GPU, losses equal to CPU;
2. the paper-preset step (``bench_train_step.py``, MiT-B5 + DAFormer head, 512x512,
   2 source + 2 target): PiPa in fp32, bf16 and bf16 + compile, with the phase split
   and the cost of each contrastive loss; DACS and DAFormer in bf16 beside it;
3. DINOv2 ViT-L/14 + PiPa step (bf16, gradient checkpointing) at 512x512; HRDA + PiPa
   step memory at the paper's crops (``bench_hrda_memory.py``, 1024x1024
   context, 512x512 detail, 720x720 patches, bf16, with and without checkpointing);
4. inference throughput (``bench_inference.py``): whole image and sliding window on
   512x1024 and on full-resolution 1024x2048 images, bf16.

Every step writes its own JSON / markdown under ``benchmarks/results/``; this script
adds ``gpu_check_<device>.json`` / ``.md``: the device, torch and CUDA versions, each
step's status and time, and the headline figures against the targets (PiPa step
<= 0.15 s in bf16 and <= 16 GB peak; HRDA + PiPa <= 24 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

#: The targets of the speed / memory issue (one H100-class GPU).
TARGETS = {"pipa_step_bf16_s": 0.15, "pipa_peak_gib": 16.0, "hrda_pipa_peak_gib": 24.0}


def plan(smoke: bool, device: str, out: Path) -> list[dict[str, Any]]:
    """The steps: name, command, time limit (s) and the result file each writes.

    The limits add up to 8 minutes: a GPU slot here is 15 minutes in all, start-up
    included, and a rerun must fit. A step over its limit is recorded as ``timeout``
    and the next one starts."""
    py = sys.executable
    dev = ["--device", device]
    size = ["--smoke"] if smoke else ["--preset", "paper"]
    iters = [] if smoke else ["--warmup", "5", "--iters", "20"]
    o = ["--out", str(out)]

    def step(name, args, limit, result):
        return {"name": name, "cmd": [py, *args], "limit_s": limit, "result": result}

    pipa = "quickstart" if smoke else "mit_b5_512"
    ratio = "quickstart" if smoke else "mit_b5_512_dacs,mit_b5_512_daformer"
    ts = "train_step"
    return [
        step("cuda_tests", ["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                            str(REPO / "tests" / "test_cuda.py")], 90, None),
        step("pipa_fp32", [str(BENCH / "bench_train_step.py"), *dev, *size, *iters, *o,
                           "--models", pipa, "--ablation", "none", "--name", f"{ts}_gpucheck"],
             40, f"{ts}_gpucheck_{device}.json"),
        step("pipa_bf16", [str(BENCH / "bench_train_step.py"), *dev, *size, *iters, *o,
                           "--models", pipa, "--dtype", "bf16", "--ablation", "each",
                           "--name", f"{ts}_gpucheck"], 80, f"{ts}_gpucheck_bf16_{device}.json"),
        *([] if smoke else [  # Inductor's CPU compile of the step alone takes minutes
            step("pipa_bf16_compile", [str(BENCH / "bench_train_step.py"), *dev, *size, *iters,
                                       *o, "--models", pipa, "--dtype", "bf16", "--compile",
                                       "--ablation", "none", "--name", f"{ts}_gpucheck_compile"],
                 100, f"{ts}_gpucheck_compile_bf16_{device}.json")]),
        step("dacs_daformer_bf16", [str(BENCH / "bench_train_step.py"), *dev, *size, *iters, *o,
                                    "--models", ratio, "--dtype", "bf16", "--ablation", "none",
                                    "--name", f"{ts}_gpucheck_baselines"],
             40, f"{ts}_gpucheck_baselines_bf16_{device}.json"),
        step("dinov2_l_bf16", [str(BENCH / "bench_train_step.py"), *dev, *size, *iters, *o,
                               "--models", "quickstart" if smoke else "dinov2_l_512",
                               "--dtype", "bf16", "--ablation", "none",
                               "--name", f"{ts}_gpucheck_dinov2"],
             40, f"{ts}_gpucheck_dinov2_bf16_{device}.json"),
        step("hrda_memory", [str(BENCH / "bench_hrda_memory.py"), *dev, *o,
                             *(["--context", "64", "--arch", "hrda_daformer_mit_b0",
                                "--batch", "1", "--cases", "pipa_hrda", "--steps", "1"]
                               if smoke else ["--context", "1024", "--amp", "bf16"])],
             50, f"hrda_memory_{device}.json"),
        step("inference", [str(BENCH / "bench_inference.py"), *dev, *size, *o,
                           *([] if smoke else ["--models", "mit_b5,mit_b5_full", "--dtype", "bf16",
                                               "--warmup", "2", "--iters", "5"]),
                           "--name", "inference_gpucheck"],
             40, f"inference_gpucheck{'' if smoke else '_bf16'}_{device}.json"),
    ]  # fmt: skip


def run_step(step: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run one step in its own process; status ``ok``, ``failed`` or ``timeout``."""
    t0 = time.perf_counter()
    print(f"[gpu_check] {step['name']} (limit {step['limit_s']} s)", flush=True)
    try:
        proc = subprocess.run(
            step["cmd"], cwd=REPO, capture_output=True, text=True, timeout=step["limit_s"]
        )
        status = "ok" if proc.returncode == 0 else "failed"
        tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        status, tail = "timeout", str(exc.stdout or "")[-3000:]
    rec = {
        "name": step["name"],
        "status": status,
        "seconds": round(time.perf_counter() - t0, 1),
        "command": " ".join(str(c) for c in step["cmd"]),
        "result_file": step["result"],
    }
    if status != "ok":
        rec["output_tail"] = tail
    if step["name"] == "cuda_tests":
        rec["summary"] = next(
            (
                ln
                for ln in reversed(tail.splitlines())
                if any(w in ln for w in ("passed", "failed", "skipped", "error"))
            ),
            "",  # fmt: skip
        )
    print(f"[gpu_check] {step['name']}: {status} in {rec['seconds']} s", flush=True)
    return rec


def _read(out: Path, name: Optional[str]) -> Optional[dict]:
    path = out / name if name else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def headline(out: Path, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures the targets are about, read back from the steps' own result files."""
    files = {s["name"]: _read(out, s["result_file"]) for s in steps}
    h: dict[str, Any] = {}
    for key, name in (("pipa_fp32", "pipa_fp32"), ("pipa_bf16", "pipa_bf16"),
                      ("pipa_bf16_compile", "pipa_bf16_compile")):  # fmt: skip
        res = (files.get(name) or {}).get("results") or []
        if res:
            h[f"{key}_step_s"] = round(res[0]["step"]["median_ms"] / 1e3, 4)
            h[f"{key}_peak_gib"] = round(res[0]["step"]["peak_mem_mib"] / 1024, 2)
    for r in (files.get("dacs_daformer_bf16") or {}).get("results") or []:
        h[f"{r['name']}_bf16_step_s"] = round(r["step"]["median_ms"] / 1e3, 4)
    for r in (files.get("dinov2_l_bf16") or {}).get("results") or []:
        h["dinov2_l_bf16_step_s"] = round(r["step"]["median_ms"] / 1e3, 4)
        h["dinov2_l_bf16_peak_gib"] = round(r["step"]["peak_mem_mib"] / 1024, 2)
    hrda = files.get("hrda_memory") or {}
    peaks = [
        r.get("peak_allocated_gib", r.get("peak_rss_gib"))
        for r in hrda.get("rows", [])
        if r.get("case") == "pipa_hrda"
    ]
    peaks = [p for p in peaks if p is not None]
    if peaks:
        h["hrda_pipa_peak_gib"] = round(min(peaks), 2)
    checks = {}
    if "pipa_bf16_step_s" in h:
        checks["pipa_step_bf16_s"] = h["pipa_bf16_step_s"] <= TARGETS["pipa_step_bf16_s"]
        checks["pipa_peak_gib"] = h["pipa_bf16_peak_gib"] <= TARGETS["pipa_peak_gib"]
    if "hrda_pipa_peak_gib" in h:
        checks["hrda_pipa_peak_gib"] = h["hrda_pipa_peak_gib"] <= TARGETS["hrda_pipa_peak_gib"]
    h["meets_target"] = checks
    return h


def to_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [
        f"# GPU check ({m.get('gpu') or m['device']})",
        "",
        f"{m['date_utc']}, torch {m['torch']}, CUDA {m.get('cuda') or '-'}; "
        f"{'smoke sizes (not the paper setting)' if report['smoke'] else 'paper sizes'}.",
        "",
        bu.markdown_table(
            ["step", "status", "seconds", "result file"],
            [
                [s["name"], s["status"], s["seconds"], s["result_file"] or "-"]
                for s in report["steps"]
            ],
        ),
        "",
        "| figure | value | target |",
        "|---|---|---|",
    ]
    targets = {"pipa_bf16_step_s": "<= 0.15 s", "pipa_bf16_peak_gib": "<= 16 GiB",
               "hrda_pipa_peak_gib": "<= 24 GiB"}  # fmt: skip
    for k, v in report["headline"].items():
        if k != "meets_target":
            lines.append(f"| {k} | {v} | {targets.get(k, '')} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="toy sizes, seconds (tests, CPU)")
    p.add_argument("--out", type=Path, default=bu.RESULTS)
    p.add_argument("--only", default=None, help="comma-separated subset of the steps")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU and none is visible here; nothing was run.")
        return 2
    device = bu.parse_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = plan(args.smoke, device.type, args.out)
    if args.only:
        keep = set(args.only.split(","))
        steps = [s for s in steps if s["name"] in keep]
    meta = bu.machine_record(device, ["benchmarks/gpu_check.py", *(argv or sys.argv[1:])])
    meta.update(torch=torch.__version__, cuda=torch.version.cuda, device=device.type)
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    print(f"[gpu_check] {meta.get('gpu', device.type)}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)  # fmt: skip
    records = [run_step(s, args.out) for s in steps]
    report = {"meta": meta, "smoke": args.smoke, "steps": records, "targets": TARGETS,
              "headline": headline(args.out, records)}  # fmt: skip
    bu.write_results(args.out, "gpu_check", device, report, to_markdown(report))
    print(to_markdown(report))
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
