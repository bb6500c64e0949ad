"""benchmarks/bench_gpu.py (run by benchmarks/gpu.sh on a bare accelerator image) must not rot: its CPU path
runs here on tiny data, and the core training path it imports must need only torch and numpy."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gd_provider.demo.schema import training_spec as demo_training_spec

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_core_training_loop_imports_without_airflow_pandas_or_sklearn():
    # a fresh interpreter that can only see src/ for our code, with the heavy packages made unimportable
    code = (
        "import sys\n"
        "for m in ('airflow', 'pandas', 'pyarrow', 'sklearn', 'mlflow', 'pydantic'): sys.modules[m] = None\n"
        "import gd_provider.core.training.loop as loop, gd_provider.core.training.spec as spec\n"
        "import numpy as np\n"
        "y = np.array([0, 1, 0, 1, 1, 0], dtype=np.float32); s = np.array([.1, .9, .4, .35, .8, .1])\n"
        "print(*loop.ranking_metrics(y, s))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.9, 0.4, 0.35, 0.8, 0.1])
    roc, ap = (float(v) for v in proc.stdout.split())
    assert roc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("n", [7, 500, 20000])
def test_numpy_ranking_metrics_match_sklearn_with_ties(n):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from gd_provider.core.training.loop import ranking_metrics_numpy

    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.2).astype(np.float32)
    y[:2] = [0, 1]
    scores = np.round(rng.random(n) + 0.4 * y, 2)  # rounded: many ties
    roc, ap = ranking_metrics_numpy(y, scores)
    assert roc == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_bench_gpu_cpu_path_in_process(tmp_path):
    out = tmp_path / "gpu.json"
    result = _bench().main(
        ["--device", "cpu", "--rows", "3000", "--epochs", "2", "--batch-size", "256", "--hidden", "16",
         "--skip-ray", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["device"] == "cpu" and saved["data"]["rows"] == 3000 and "ray_error" not in saved
    for precision in ("fp32", "bf16"):
        res = saved["results"][precision]
        assert set(res) == {"plain", "guarded"}
        for variant in res.values():
            assert variant["samples_per_s"] > 0 and variant["ratio_vs_plain"] > 0
            assert len(variant["runs"][0]["epoch_s"]) == 2
    fp32, bf16 = result["results"]["fp32"], result["results"]["bf16"]
    # the hand-written loop and the engine do the same work: same seeds -> the same model
    assert fp32["plain"]["runs"][0]["val_loss"] == fp32["guarded"]["runs"][0]["val_loss"]
    assert bf16["plain"]["runs"][0]["val_loss"] == bf16["guarded"]["runs"][0]["val_loss"]
    # bf16 autocast really ran (on the CPU): different rounding, a different model
    assert bf16["plain"]["runs"][0]["val_loss"] != fp32["plain"]["runs"][0]["val_loss"]
    assert saved["results"]["fp32"]["guarded"]["runs"][0]["steps"] == 2 * 12


def test_bf16_autocast_runs_in_the_engine_on_cpu():
    from gd_provider.core.training.loop import fit_plain
    from gd_provider.core.training.spec import SpecError

    with pytest.raises(SpecError, match="bf16"):  # a spec for cpu with bf16 is refused, never downgraded
        demo_training_spec(device="cpu", precision="bf16")
    spec = demo_training_spec(epochs=1, batch_size=64, hidden_sizes=(8,), precision="bf16")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 5), dtype=np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    from tests.unit.user_models import SEEN_DTYPES

    spec = spec.with_overrides(model="tests.unit.user_models:dtype_probe")  # a user's factory by import path
    SEEN_DTYPES.clear()
    fit = fit_plain(spec, x, y, x[:128], y[:128], pos_weight=1.0, device="cpu")
    assert fit.trip is None and SEEN_DTYPES and set(SEEN_DTYPES) == {torch.bfloat16}
    SEEN_DTYPES.clear()
    fit_plain(spec.with_overrides(precision="fp32"), x, y, x[:128], y[:128], pos_weight=1.0, device="cpu")
    assert set(SEEN_DTYPES) == {torch.float32}


@pytest.mark.integration
def test_gpu_sh_cpu_path_with_ray_writes_json(tmp_path):
    """benchmarks/gpu.sh end to end on the CPU (no bundle: this venv's Ray), the Ray path included."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "RAY_ADDRESS": "",
           "GPU_BENCH_TIMEOUT_S": "400"}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--rows", "2000", "--epochs", "2",
         "--batch-size", "500", "--hidden", "8", "--precisions", "fp32"],
        capture_output=True, text=True, env=env, timeout=450, cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    ray = saved["results"]["fp32"]["ray"]
    assert ray["samples_per_s"] > 0 and len(ray["runs"][0]["epoch_s"]) == 2
    assert ray["runs"][0]["val_loss"] == saved["results"]["fp32"]["plain"]["runs"][0]["val_loss"]
    assert (tmp_path / "gpu.log").is_file() and "ratio" in (tmp_path / "gpu.log").read_text()
