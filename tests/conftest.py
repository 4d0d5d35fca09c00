"""Shared fixtures: small synthetic data settings and a CLI runner, so tests stay fast on 2 CPU cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One CPU thread per test process, in this process and in the anobench runs it starts: the suite runs as two
# pytest-xdist workers on a 2-core machine (README's test command), so two threads each would oversubscribe
# the cores, and a test's numbers then do not depend on how many cores the machine has.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
# Keep end-to-end runs tiny: few synthetic images (the generator's defaults are larger), small batches.
SMALL_RUN = [
    "method.input.batch_size=8",
    "data.synthetic.n_train=8",
    "data.synthetic.n_test_good=4",
    "data.synthetic.n_test_per_defect=2",
]


def mvtec_root() -> Path | None:
    """Real MVTec AD for real-data tests: $ANOBENCH_MVTEC_ROOT, else ../shared/mvtec_ad beside the repo."""
    for candidate in (os.environ.get("ANOBENCH_MVTEC_ROOT"), REPO.parent / "shared" / "mvtec_ad"):
        if candidate and (Path(candidate) / "bottle" / "train" / "good").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m anobench ...` in a subprocess with results and data under tmp_path."""

    def run(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "ANOBENCH_RESULTS_DIR": str(tmp_path / "results"),
                    "ANOBENCH_DATA_DIR": str(tmp_path / "data"), "HYDRA_FULL_ERROR": "0", **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "anobench", *args], cwd=tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"anobench {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
        return proc

    return run


@pytest.fixture
def one_torch_thread():
    """Pin torch to one CPU thread for the test: GAN metrics depend on the thread count (float reduction
    order), so values measured at one thread hold on any machine only there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
