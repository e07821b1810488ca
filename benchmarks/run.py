"""The benchmark suite: ``python -m benchmarks.run`` (``make bench``) -> BENCHMARKS.md.

Every row runs in its own process (so one row's compiled programs, threads and memory do
not bleed into the next) and times this project against its PyTorch peer in that process,
alternating, after a warm-up, as the median of ``--repeats``. The ratio is
peer time / our time, so above 1 means this project is faster.

    python -m benchmarks.run                      # everything, 224x224, batch 32
    python -m benchmarks.run --quick              # batch 8, 112x112, resnet18, 3 repeats
    python -m benchmarks.run --rows train infer   # a subset (see --help for the names)
    python -m benchmarks.run --no-write           # print only

torch runs with ``torch.set_num_threads(cores)`` (``BENCH_TORCH_THREADS`` to change).
The "Explain" section of BENCHMARKS.md belongs to benchmarks/bench_explain.py, which this
runs when it exists (row ``explain``), and the "GPU" section to ``benchmarks/gpu.py
--record``; both are kept when this one rewrites its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import owned_sections

ROOT = Path(__file__).resolve().parents[1]
# `python train.py` configurations whose start-up is timed with a cold and a warm cache:
# the default run (the course's model on digits) and a torchvision-sized model.
TRAIN_CONFIGS = ("--max-steps 2 --epochs 1",
                 "--arch resnet50 --batch-size 16 --max-steps 2 --epochs 1")
ROW_NAMES = ("matmul", "train", "infer", "memory", "pipeline", "compile", "xla_flags",
             "torch_compile", "explain")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(dist):
        try:
            return version(dist)
        except PackageNotFoundError:
            return "-"

    try:
        import subprocess as sp

        gpu = sp.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, sp.SubprocessError):
        gpu = ""
    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    load = os.getloadavg()
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "isa": " ".join(isa),
        "accelerator": gpu or "none (CPU only)",
        "jax": v("jax"), "jaxlib": v("jaxlib"), "flax": v("flax"), "optax": v("optax"),
        "torch": v("torch"), "torchvision": v("torchvision"), "python": platform.python_version(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }


def run_row(row: str, *args: str, env: dict | None = None, timeout: float = 1800) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.rows", row, *args]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode:
        tail = (p.stderr or p.stdout).strip().splitlines()
        return {"error": tail[-1] if tail else f"exit status {p.returncode}"}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["_load"] = os.getloadavg()[0]
    print(f"  {time.perf_counter() - t0:.0f} s: {json.dumps(out)}", flush=True)
    return out


def f(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def model_table(rows: list[dict], compile_col: bool) -> list[str]:
    head = ("| model | step | batch x size | resnet-jax img/s | torchvision eager img/s | ratio |"
            " torch 1 thread img/s | ratio vs torch's best |")
    sep = "|---|---|---|---:|---:|---:|---:|---:|"
    if compile_col:
        head += " torch.compile img/s | ratio vs compile |"
        sep += "---:|---:|"
    head += " jax GFLOP/s | first compile s | load |"
    sep += "---:|---:|---:|"
    lines = [head, sep]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('_name', '?')} | error: {r['error']} |")
            continue
        kind = r["kind"] + (" (+ torch.compile)" if "torch_compile_img_s" in r
                            or "torch_compile_error" in r else "")
        line = (f"| {r['arch']} | {kind} | {r['batch']} x {r['size']}² | {f(r['jax_img_s'], 2)} | "
                f"{f(r['torch_img_s'], 2)} | **{f(r['ratio'], 2)}x** | "
                f"{f(r.get('torch_1thread_img_s'), 2)} | {f(r.get('ratio_best_torch'), 2)}x |")
        if compile_col:
            if "torch_compile_img_s" in r:
                line += f" {f(r['torch_compile_img_s'], 2)} | {f(r['ratio_compile'], 2)}x |"
            elif "torch_compile_error" in r:
                line += f" failed: {r['torch_compile_error']} | - |"
            else:
                line += " (row `torch_compile`) | - |"
        line += f" {f(r['jax_gflops'])} | {f(r['jax_compile_s'])} | {r['_load']:.1f} |"
        lines.append(line)
    return lines


def render(info: dict, res: dict, args) -> str:
    L = ["# Benchmarks", "",
         "Written by `python -m benchmarks.run" + (" --quick" if args.quick else "") + "` "
         "(`make bench`); method in `benchmarks/NOTES.md`. Ratio = torch time / resnet-jax time "
         "(above 1: resnet-jax is faster), both measured in the same process, alternating, after "
         f"a warm-up, median of {args.repeats} repeats. torch uses "
         f"`torch.set_num_threads({os.environ.get('BENCH_TORCH_THREADS', os.cpu_count())})`. "
         "The machine is shared, so the load average (1 min) is given per row; figures taken "
         "at a high load are noisy, ratios less so than absolute numbers.", "",
         "## Machine", "",
         f"- CPU: {info['cpu']}, {info['cores']} cores ({info['isa']})",
         f"- accelerator: {info['accelerator']}",
         f"- jax {info['jax']} (jaxlib {info['jaxlib']}), flax {info['flax']}, optax {info['optax']}, "
         f"torch {info['torch']}, torchvision {info['torchvision']}, Python {info['python']}",
         f"- date: {info['date']}; load average at start: {info['load']}",
         f"- XLA_FLAGS set by `resnet_jax.xla_cpu.configure()`: `{res.get('_xla_flags', '')}`; "
         "inference programs are also compiled with "
         "`resnet_jax.xla_cpu.inference_compiler_options()` "
         "(no YNNPACK fusions)", ""]
    for section in (_models_section, _matmul_section, _xla_flags_section, _memory_section,
                    _pipeline_section, _compile_section):
        L += section(res, args)
    return "\n".join(L)


def _models_section(res: dict, args) -> list[str]:
    L: list[str] = []
    models = [r for k, r in res.items() if k.startswith(("train", "infer"))]
    if models:
        L += ["## Train and inference steps", "",
              "Train: forward in train mode, cross-entropy, backward, SGD momentum 0.9 update, "
              "BatchNorm running statistics (resnet-jax: its own `make_train_step`, jitted with the "
              "state donated; torch: `model.train()`, `loss.backward()`, `optim.SGD`). Inference: "
              "eval mode (torch under `inference_mode`). float32 everywhere. GFLOP/s from XLA's "
              "cost analysis of the compiled step. \"torch 1 thread\": the same torch step with "
              "`set_num_threads(1)`, timed in the same rotation, because on a loaded machine "
              "torch's two OpenMP threads stall each other (at load ~3.4, resnet18 eval ran at 8 "
              "img/s on 2 threads and 80 on 1); the last ratio is against the faster of the two.", ""]
        L += model_table(models, any("torch_compile_img_s" in r or "torch_compile_error" in r
                                     for r in models)) + [""]
        firsts = [f"{r['arch']} {r['kind']} {f(r['torch_compile_first_s'])} s" for r in models
                  if "torch_compile_first_s" in r]
        if firsts:
            L += ["torch.compile's first call (compilation; inductor's own on-disk cache may "
                  "already hold earlier runs' kernels): " + ", ".join(firsts) + ". "
                  "\"first compile s\" is resnet-jax's `jit(...).lower().compile()` of the step.", ""]
    return L


def _matmul_section(res: dict, args) -> list[str]:
    L: list[str] = []
    if "matmul" in res:
        r = res["matmul"]
        if "error" in r:
            L += ["## Matmul ceiling", "", f"error: {r['error']}", ""]
        else:
            L += ["## Matmul ceiling", "",
                  f"float32 {r['n']}x{r['n']} @ {r['n']}x{r['n']}: jax {f(r['jax_gflops'])} GFLOP/s, "
                  f"torch {f(r['torch_gflops'])} GFLOP/s (load {r['_load']:.1f}). The train and "
                  "inference rows' GFLOP/s read against this.", ""]
    return L


def _xla_flags_section(res: dict, args) -> list[str]:
    L: list[str] = []
    if "xla_flags" in res:
        r, base = res["xla_flags"], res.get("train_resnet18")
        L += ["## XLA flags: before and after", ""]
        if "error" in r:
            L += [f"error: {r['error']}", ""]
        else:
            L += ["| resnet18 train step | resnet-jax img/s | torch img/s | ratio | load |",
                  "|---|---:|---:|---:|---:|",
                  f"| XLA defaults (`RESNET_JAX_XLA_FLAGS=0`) | {f(r['jax_img_s'], 2)} | "
                  f"{f(r['torch_img_s'], 2)} | {f(r['ratio'], 2)}x | {r['_load']:.1f} |"]
            if base and "error" not in base:
                L.append(f"| resnet_jax's flags | {f(base['jax_img_s'], 2)} | {f(base['torch_img_s'], 2)} | "
                         f"{f(base['ratio'], 2)}x | {base['_load']:.1f} |")
            L.append("")
    return L


def _memory_section(res: dict, args) -> list[str]:
    L: list[str] = []
    if "memory_jax" in res or "memory_torch" in res:
        L += ["## Peak memory (RSS)", "",
              f"A process that builds the {args.arch_mem} train step (batch {args.batch}, "
              f"{args.size}²) and runs it 3 times, one framework per process.", "",
              "| framework | peak RSS MiB |", "|---|---:|"]
        for k in ("memory_jax", "memory_torch"):
            r = res.get(k, {})
            L.append(f"| {k[7:]} | {r.get('error') or f(r.get('peak_rss_mib'), 0)} |")
        L.append("")
    return L


def _pipeline_section(res: dict, args) -> list[str]:
    L: list[str] = []
    if "pipeline" in res:
        p, d, tr = res["pipeline"], res.get("digits_step", {}), res.get("train_resnet18", {})
        L += ["## Input pipeline vs the train step", "",
              "`resnet_jax.data.pipeline.Loader` in training mode (shuffle, random-resized crop, "
              "flip; 2 worker threads, the CLI's default) against the images/s of the step it feeds.",
              ""]
        if "error" in p:
            L += [f"error: {p['error']}", ""]
        else:
            L += ["| data | batch | pipeline img/s | step img/s | pipeline / step | load |",
                  "|---|---:|---:|---:|---:|---:|"]
            dg = p["digits"]
            if "img_s" in d:
                L.append(f"| digits (8x8 -> {dg['image_size']}², `python train.py`'s {d['arch']}) | "
                         f"{dg['batch']} | {f(dg['img_s'], 0)} | {f(d['img_s'], 0)} | "
                         f"**{f(dg['img_s'] / d['img_s'], 1)}x** | {p['_load']:.1f} |")
            jp = p["jpeg"]
            if "jax_img_s" in tr:
                L.append(f"| {jp['images']} JPEGs 320x240 -> {jp['image_size']}² (resnet18 train step) | "
                         f"{jp['batch']} | {f(jp['img_s'], 0)} | {f(tr['jax_img_s'], 1)} | "
                         f"**{f(jp['img_s'] / tr['jax_img_s'], 1)}x** | {p['_load']:.1f} |")
            L += ["", "The pipeline and the step share the CPU while training; these are measured "
                  "apart.", ""]
    return L


def _compile_section(res: dict, args) -> list[str]:
    L: list[str] = []
    if "compile_step" in res or "compile_cache0" in res:
        L += ["## Compilation and the persistent cache", "",
              "Each figure from a fresh process; the second process finds the first's "
              "programs in the persistent compilation cache (`resnet_jax.cli.enable_compilation_cache`).", ""]
        c = res.get("compile_step")
        if c:
            if "error" in c:
                L.append(f"- train step compile: error {c['error']}")
            else:
                L.append(f"- {c['arch']} train step (batch {args.batch}, {args.size}²): compile "
                         f"{f(c['first_compile_s'])} s cold, {f(c['second_compile_s'], 2)} s from the cache "
                         f"(process total {f(c['first_total_s'])} s -> {f(c['second_total_s'])} s)")
        for c in [v for k, v in res.items() if k.startswith("compile_cache")]:
            if "error" in c:
                L.append(f"- `{c.get('command', 'train.py')}`: error {c['error']}")
            else:
                L.append(f"- `{c['command']}`, from the process start to its first step logged "
                         f"(imports, data, init, compile, step 1): {f(c['first_s'])} s the first time, "
                         f"{f(c['second_s'])} s the second: **{f(c['speedup'], 1)}x** sooner "
                         f"(whole runs: {f(c['first_total_s'])} s and {f(c['second_total_s'])} s; "
                         f"load {c['_load']:.1f})")
        L.append("")
    return L

def write(path: Path, text: str):
    """Replace everything but the sections other scripts own (``OWNED_SECTIONS``)."""
    kept = owned_sections(path)
    path.write_text(text.rstrip() + "\n\n" + kept if kept else text.rstrip() + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", choices=ROW_NAMES, help="rows to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="batch 8, 112x112, resnet18 only, 3 repeats")
    ap.add_argument("--archs", nargs="*", help="default resnet18 resnet50 (quick: resnet18)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    args.batch = args.batch or (8 if args.quick else 32)
    args.size = args.size or (112 if args.quick else 224)
    args.repeats = args.repeats or (3 if args.quick else 5)
    archs = args.archs or (["resnet18"] if args.quick else ["resnet18", "resnet50"])
    args.arch_mem = archs[0]
    rows = args.rows or list(ROW_NAMES)
    common = ["--batch", str(args.batch), "--size", str(args.size), "--repeats", str(args.repeats)]
    if args.quick:
        common.append("--quick")

    from resnet_jax import xla_cpu

    xla_cpu.configure()  # the CLI's CPU tuning; the rows' processes inherit XLA_FLAGS

    info = machine_info()
    res: dict = {"_xla_flags": os.environ.get("XLA_FLAGS", "")}
    if "matmul" in rows:
        res["matmul"] = run_row("matmul", *common)
    for arch in archs:
        for kind in ("train", "infer"):
            if kind in rows:
                res[f"{kind}_{arch}"] = run_row(kind, "--arch", arch, *common)
                res[f"{kind}_{arch}"]["_name"] = f"{arch} {kind}"
    if "torch_compile" in rows:
        for kind in ("infer", "train"):
            r = run_row(kind, "--arch", archs[0], *common, "--torch-compile", timeout=1200)
            r["_name"] = f"{archs[0]} {kind} (torch.compile)"
            res[f"{kind}_{archs[0]}_compile"] = r
    if "xla_flags" in rows:
        res["xla_flags"] = run_row("train", "--arch", archs[0], *common,
                                   env={"RESNET_JAX_XLA_FLAGS": "0", "XLA_FLAGS": ""})
    if "memory" in rows:
        for fw in ("jax", "torch"):
            res[f"memory_{fw}"] = run_row("memory", "--framework", fw, "--arch", archs[0], *common)
    if "pipeline" in rows:
        if (ROOT / "resnet_jax" / "data" / "pipeline.py").exists():
            res["pipeline"] = run_row("pipeline", *common)
            res["digits_step"] = run_row("digits_step", *common)
            if "train_resnet18" not in res:
                res["train_resnet18"] = run_row("train", "--arch", "resnet18", *common)
        else:
            print("no resnet_jax/data/pipeline.py yet: pipeline row skipped")
    if "compile" in rows:
        res["compile_step"] = run_row("compile_step", "--arch", archs[0], *common)
        if (ROOT / "train.py").exists():
            for i, cfg in enumerate(TRAIN_CONFIGS):
                res[f"compile_cache{i}"] = run_row("compile_cache", f"--train-args={cfg}")
    text = render(info, res, args)
    print(text)
    if not args.no_write:
        write(args.out, text)
        print(f"wrote {args.out}")
    if "explain" in rows and (ROOT / "benchmarks" / "bench_explain.py").exists():
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_explain.py")]
        if args.quick:
            cmd += ["--repeats", "2"]
        if args.no_write:
            cmd.append("--no-write")
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
