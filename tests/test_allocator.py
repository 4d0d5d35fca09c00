"""keep_freed_memory: activation-sized blocks come from the heap and stay there when freed (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from conftest import REPO

# In a fresh process (glibc's defaults untouched): bytes mmap()ed for one live 9 MiB tensor, and the free
# heap bytes the process still holds after 25 tensors of 4 MiB were allocated together and freed.
_PROBE = """
import ctypes, sys, torch
from anobench.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
mapped = libc.mallinfo2().hblkhd
one = torch.ones(9 * 2**18)
mapped = libc.mallinfo2().hblkhd - mapped
del one
blocks = [torch.ones(2**20) for _ in range(25)]
del blocks
print(mapped, libc.mallinfo2().fordblks)
"""


def _probe(mode: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    mapped, free_held = done.stdout.split()[-2:]
    return int(mapped), int(free_held)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")
def test_freed_memory_stays_in_the_process_for_the_next_step():
    default_mapped, default_held = _probe("default")
    kept_mapped, kept_held = _probe("keep")
    assert default_mapped >= 9 * 2**20  # glibc's default: a block this size is its own mmap, unmapped on free
    assert kept_mapped == 0  # kept: served from the heap
    # and not trimmed away when freed (glibc's default trims it or not, depending on what sits above it)
    assert kept_held >= 90 * 2**20, (kept_held, default_held)


def test_it_does_not_change_the_config_hash():
    from anobench.results.identity import config_hash

    config = {"method": {"name": "patch_svdd"}, "seed": 0, "malloc_keep_freed": True}
    assert config_hash(config) == config_hash({**config, "malloc_keep_freed": False})
    assert config_hash(config) != config_hash({**config, "seed": 1})


@pytest.mark.parametrize("keep", [True, False])
def test_build_applies_the_config_key(monkeypatch, tmp_path, keep):
    from hydra import compose, initialize_config_dir

    from anobench.config import config_dir
    from anobench.tasks import run

    calls = []
    monkeypatch.setattr(run, "keep_freed_memory", lambda: calls.append(1) or True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["method=memae", f"malloc_keep_freed={keep}", f"paths.data_dir={tmp_path}"])
    run.build(cfg)
    assert calls == ([1] if keep else [])
