"""benchmarks/gpu_check.sh: without CUDA it says so and exits 0; its plan covers every pipeline
benchmark config (fp16, compile off and on, 1/2/4/8 sessions); overlong runs are stopped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check

ROOT = gpu_check.ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the whole check")
def test_without_cuda_it_says_so_and_exits_0(tmp_path) -> None:
    output = tmp_path / "gpu.json"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(output)],
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here" in done.stdout
    assert not output.exists()


def test_the_plan_covers_every_benchmark_config_fp16_compile_off_and_on() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--plan"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    configs = gpu_check.pipeline_configs()
    assert "sd-turbo" in configs and "tiny" not in configs
    for config in configs:
        runs = [r for r in plan["runs"] if r["config"] == config]
        assert sorted(r["compile"] for r in runs) == [False, True]
        for r in runs:
            args = r["args"]
            assert args[args.index("--dtype") + 1] == "float16"
            assert args[args.index("--device") + 1] == "cuda"
            assert args[args.index("--sessions") + 1] == "1,2,4,8"
            assert "--random-weights" in args
            assert ("--compile" in args) == r["compile"]
    assert plan["cuda_tests"] == gpu_check.cuda_test_files()
    loras = {r["config"]: r for r in plan["runs"] if r["config"].startswith("lora:")}
    assert sorted(loras) == sorted(f"lora:{c}" for c in configs)
    for r in loras.values():
        assert (ROOT / r.get("script", "benchmarks/pipeline.py")).is_file()
        assert r["args"][r["args"].index("--device") + 1] == "cuda"


def test_a_run_that_overstays_its_share_is_stopped_with_its_children() -> None:
    child = "import subprocess, sys; subprocess.run([sys.executable, '-c', " \
            "'import time; time.sleep(600)']); print('not reached')"
    result = gpu_check.run([sys.executable, "-c", f"print('started', flush=True); {child}"], 1.0)
    assert result["timed_out"] and result["rc"] != 0
    assert "started" in result["output"] and "not reached" not in result["output"]


def test_the_last_json_line_is_the_benchmark_result() -> None:
    out = 'loading\n{"benchmark": "pipeline", "results": [1]}\n'
    assert gpu_check.last_json_line(out) == {"benchmark": "pipeline", "results": [1]}
    assert gpu_check.last_json_line("Traceback ...\n") is None
