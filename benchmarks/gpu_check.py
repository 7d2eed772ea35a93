"""The GPU check's driver (run it through `benchmarks/gpu_check.sh`): CUDA-only tests, then
every pipeline benchmark config at real size with random weights, fp16, compile off and on,
1/2/4/8 sessions, then per config the per-frame cost of LoRAs (none / fused / runtime PEFT),
within a time budget; one JSON file with all of it.

    python benchmarks/gpu_check.py --output gpu-check.json [--budget-s 440]
    python benchmarks/gpu_check.py --plan       # what it would run (works without CUDA)

Standard library only: it must start on a bare GPU machine. The configs are the `--config`
choices of benchmarks/pipeline.py (all but `tiny`), so a config added there is checked here
too. CUDA-only tests are those marked `@pytest.mark.cuda`; they run with `--noconftest` (the
GPU machine has no aiortc, av or gradio), so they must not need conftest's fixtures.
Each run gets an equal share of the time left; a run that overstays it is stopped and
reported as timed out, and the next one still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "benchmarks" / "pipeline.py"
SESSIONS = "1,2,4,8"
CUDA_MARK = re.compile(r"pytest\.mark\.cuda\b|mark\.cuda\b")


def pipeline_configs() -> list[str]:
    """The `--config` choices of benchmarks/pipeline.py, except the tiny test models."""
    text = subprocess.run([sys.executable, str(BENCHMARK), "--help"], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"--config\s+\{([^}]*)\}", text)
    if not found:
        raise RuntimeError("benchmarks/pipeline.py --help lists no --config choices")
    return [c for c in found.group(1).split(",") if c != "tiny"]


def benchmark_runs(configs: list[str], model_root: Path) -> list[dict[str, Any]]:
    """Per config: eager, then compiled (one step count: compiling costs minutes)."""
    runs = []
    for config in configs:
        common = ["--config", config, "--random-weights", "--device", "cuda",
                  "--dtype", "float16", "--sessions", SESSIONS, "--frames", "10",
                  "--warmup", "2", "--model-dir", str(model_root / config)]
        runs.append({"config": config, "compile": False,
                     "args": [*common, "--steps", "1,2"]})
        runs.append({"config": config, "compile": True,
                     "args": [*common, "--steps", "1", "--compile"]})
    return runs


def lora_runs(configs: list[str]) -> list[dict[str, Any]]:
    """Per config, LoRA cost: sd-turbo through benchmarks/lora.py (rank 16, the trainers'
    usual), the Wan pipelines at LongLive's own LoRA rank (256) on one session."""
    runs = []
    for config in configs:
        if config == "sd-turbo":
            args = ["--config", "sd-turbo", "--size", "512", "--device", "cuda", "--dtype",
                    "float16", "--frames", "30", "--rank", "16"]
            runs.append({"config": f"lora:{config}", "compile": False,
                         "script": "benchmarks/lora.py", "args": args})
        else:
            args = ["--config", config, "--random-weights", "--device", "cuda", "--dtype",
                    "float16", "--sessions", "1", "--steps", "2", "--frames", "6",
                    "--lora-modes", "none,runtime_peft,permanent", "--lora-rank", "256"]
            runs.append({"config": f"lora:{config}", "compile": False, "args": args})
    return runs


def cuda_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if CUDA_MARK.search(p.read_text(encoding="utf-8")))


def run(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    """Run `cmd` in its own process group; stop the whole group when it overstays."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout_s))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        timed_out = True
    return {"cmd": cmd[1:], "rc": proc.returncode, "timed_out": timed_out,
            "seconds": round(time.monotonic() - started, 1), "output": out or ""}


def last_json_line(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def junit_counts(path: Path) -> dict[str, int] | None:
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def machine() -> dict[str, Any]:
    import torch  # the GPU machine has it; imported late so that --plan runs anywhere

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpus=torch.cuda.device_count())
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "test-output" / "gpu-check.json")
    parser.add_argument("--budget-s", type=float, default=440.0)
    parser.add_argument("--plan", action="store_true", help="print the runs; run nothing")
    args = parser.parse_args()
    started = time.monotonic()
    deadline = started + args.budget_s
    model_root = Path(tempfile.gettempdir()) / "gpu-check-models"
    tests = cuda_test_files()
    configs = pipeline_configs()
    runs = benchmark_runs(configs, model_root) + lora_runs(configs)
    if args.plan:
        print(json.dumps({"cuda_tests": tests, "runs": runs}, indent=1))
        return 0

    report: dict[str, Any] = {"benchmark": "gpu_check", "machine": machine(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "budget_s": args.budget_s}
    junit = Path(tempfile.gettempdir()) / "gpu-check-junit.xml"
    junit.unlink(missing_ok=True)
    if tests:
        # At most a quarter of the budget: the benchmarks are the point.
        result = run([sys.executable, "-m", "pytest", "--noconftest", "-m", "cuda", "-q",
                      f"--junitxml={junit}", *tests],
                     args.budget_s / 4)
        report["tests"] = {"files": tests, "rc": result["rc"], "timed_out": result["timed_out"],
                           "seconds": result["seconds"], "counts": junit_counts(junit),
                           "output_tail": result["output"][-4000:]}
        print(f"CUDA tests: rc {result['rc']} {report['tests']['counts']} "
              f"in {result['seconds']} s", flush=True)
    else:
        report["tests"] = {"files": [], "note": "no test is marked @pytest.mark.cuda"}

    report["runs"] = []
    for i, spec in enumerate(runs):
        share = (deadline - time.monotonic()) / (len(runs) - i)
        script = ROOT / spec["script"] if "script" in spec else BENCHMARK
        result = run([sys.executable, str(script), *spec["args"]], share)
        entry = {**spec, "rc": result["rc"], "timed_out": result["timed_out"],
                 "seconds": result["seconds"], "result": last_json_line(result["output"])}
        if result["rc"] != 0 or entry["result"] is None:
            entry["output_tail"] = result["output"][-3000:]
        report["runs"].append(entry)
        state = "timed out" if result["timed_out"] else f"rc {result['rc']}"
        print(f"{spec['config']} compile={spec['compile']}: {state} in {result['seconds']} s",
              flush=True)
        for row in (entry["result"] or {}).get("results", []):
            print(f"  {row.get('lora_mode') or row.get('mode') or ''} steps={row.get('steps')} "
                  f"sessions={row.get('sessions')}: "
                  f"{row.get('fps_total')} frames/s, p50 {row.get('latency_ms_p50')} ms",
                  flush=True)

    report["elapsed_s"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.output}")
    failed = report["tests"].get("rc", 0) not in (0, 5) or any(
        r["rc"] != 0 for r in report["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
