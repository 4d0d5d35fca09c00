"""The benchmark scripts under scripts/ still run and print their figures (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_bench_methods_prints_a_row_of_figures(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/bench_methods.py", "--methods", "memae", "--device", "cpu", "--steps", "2",
         "--override", "method.input.image_size=64", "method.input.batch_size=2", "method.module.channels=[8,16]",
         "method.module.memory_size=20", "data.synthetic.n_train=4", "data.synthetic.n_test_good=2",
         "data.synthetic.n_test_per_defect=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("memae"))
    size, batch, train_ips, infer_ips, prepare_s = row.split()[1:6]
    assert (size, batch) == ("64", "2")
    assert float(train_ips) > 0 and float(infer_ips) > 0 and float(prepare_s) >= 0
    assert "MiB" in row
