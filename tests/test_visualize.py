"""Run figures (panels, curves) and the static HTML report, without training anything.

A tiny synthetic category on disk supplies images and masks; the "method" is a fixed set of maps,
so what the figures must show is known exactly.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from anobench.data.mvtec import index_category
from anobench.data.synthetic import ensure_synthetic
from anobench.errors import ConfigError
from anobench.metrics import evaluate_category, trapezoid
from anobench.tasks.publish import publish
from anobench.results.record import write_result
from anobench.visualize import figures
from anobench.visualize.figures import ColourScale, heatmap_rgba, panel_name, run_colour_scale, write_run_figures
from anobench.visualize.report import REPORT_FILE, write_report
from anobench.visualize.task import VisualizeSettings

N_PER_DEFECT = 3  # synthetic test images per defect type (and good)


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """A small synthetic 'weave' category (64 px) and its index."""
    root = tmp_path_factory.mktemp("data")
    ensure_synthetic(root, "weave", seed=0, image_size=64, n_train=2, n_test_good=N_PER_DEFECT,
                     n_test_per_defect=N_PER_DEFECT)
    return index_category(root, "weave")


def _mask(samples, i: int) -> np.ndarray:
    path = samples[i].mask_path
    if path is None:
        w, h = Image.open(samples[i].image_path).size
        return np.zeros((h, w), dtype=bool)
    return np.asarray(Image.open(path)) > 0


def _maps(samples, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Noise maps at model resolution, brighter inside the defect (a decent but imperfect 'method')."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(samples)):
        mask = _mask(samples, i)
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)) / 255.0
        out.append((rng.random((size, size)) + 1.5 * small).astype(np.float32))
    return out


def _evaluate(samples, maps):
    scores = np.array([float(m.max()) for m in maps])
    return evaluate_category(maps, scores, [_mask(samples, i) for i in range(len(samples))],
                             np.array([s.label for s in samples]))


@pytest.fixture(scope="module")
def run_with_figures(category, tmp_path_factory):
    """One run folder with figures written for max_per_defect=2 (of 3 images per defect type)."""
    samples = category.test
    maps = _maps(samples)
    results = _evaluate(samples, maps)
    run_dir = tmp_path_factory.mktemp("run")
    manifest = write_run_figures(run_dir, maps, np.array([m.max() for m in maps]), samples,
                                 lambda i: _mask(samples, i), results, max_per_defect=2, title="test run")
    return run_dir, manifest, maps, results


# --- panels -------------------------------------------------------------------------------------
def test_panels_exist_for_the_capped_count_with_the_right_names(category, run_with_figures):
    run_dir, manifest, _, _ = run_with_figures
    defect_types = sorted({s.defect_type for s in category.test})
    assert len(defect_types) >= 3 and "good" in defect_types
    files = sorted(p.name for p in (run_dir / "figures" / "panels").glob("*.png"))
    per_type = collections.Counter(f.rsplit("_", 1)[0] for f in files)
    assert per_type == {d: 2 for d in defect_types}  # capped at 2 of the 3 images of each type
    expected = sorted(panel_name(s) for s in category.test if s.image_path.stem in ("000", "001"))
    assert files == expected and "good_000.png" in files
    assert [p["file"] for p in manifest["panels"]] == [f"panels/{panel_name(category.test[p['index']])}"
                                                        for p in manifest["panels"]]
    image = Image.open(run_dir / "figures" / "panels" / files[0])
    assert image.size[0] > 2 * image.size[1]  # three views side by side
    assert (run_dir / "figures" / "curves.png").is_file()
    assert json.loads((run_dir / "figures" / "figures.json").read_text())["max_per_defect"] == 2


def test_zero_panels_still_writes_curves(category, tmp_path):
    samples = category.test
    maps = _maps(samples)
    write_run_figures(tmp_path, maps, np.zeros(len(maps)), samples, lambda i: _mask(samples, i),
                      _evaluate(samples, maps), max_per_defect=0)
    assert not list((tmp_path / "figures" / "panels").glob("*.png"))
    assert (tmp_path / "figures" / "curves.png").is_file()


def test_colour_scale_is_per_run_not_per_image(category, tmp_path, monkeypatch):
    """Every panel of a run is drawn with the run's min..max, so a weak map stays dark."""
    samples = category.test
    maps = [np.full((8, 8), 1.0, dtype=np.float32) for _ in samples]
    maps[0][0, 0] = 0.0  # run minimum
    maps[-1][:] = 10.0   # one image with much higher scores
    maps[-1][0, 0] = 5.0
    used: list[ColourScale] = []
    original = figures.heatmap_rgba
    monkeypatch.setattr(figures, "heatmap_rgba", lambda m, scale, *a: (used.append(scale), original(m, scale, *a))[1])
    manifest = write_run_figures(tmp_path, maps, np.zeros(len(maps)), samples, lambda i: _mask(samples, i),
                                 _evaluate(samples, maps), max_per_defect=1)
    assert len(used) == len(manifest["panels"]) >= 3
    assert set(used) == {ColourScale(0.0, 10.0)}
    assert manifest["colour_scale"]["vmin"] == 0.0 and manifest["colour_scale"]["vmax"] == 10.0
    # A map of 1.0 everywhere is drawn at 10 % of the colour map, not stretched to its own range.
    from matplotlib import colormaps

    rgba = heatmap_rgba(maps[1], run_colour_scale(maps))
    np.testing.assert_allclose(rgba[3, 3], colormaps[figures.HEATMAP_CMAP](0.1))
    assert not np.allclose(rgba[3, 3], colormaps[figures.HEATMAP_CMAP](1.0))


def test_constant_maps_get_a_usable_scale():
    assert run_colour_scale([np.full((4, 4), 2.0)]) == ColourScale(2.0, 3.0)


# --- curves -------------------------------------------------------------------------------------
def test_the_curves_drawn_are_the_evaluations_own(run_with_figures):
    """One PRO definition: the figure draws the curves evaluate_category read off its own pixel ranking,
    and the PRO area under the drawn curve is result.json's PRO."""
    run_dir, manifest, _, results = run_with_figures
    for name in ("image_roc", "pixel_roc", "pro"):
        curve = getattr(results.curves, name)
        assert manifest["curve_points"][name] == {"drawn": len(curve.x), "exact": curve.n_exact}
    pro = results.curves.pro
    assert trapezoid(pro.x, pro.y, x_max=0.3) / 0.3 == pytest.approx(results.metrics["pro"], abs=1e-9)
    assert manifest["pro_fpr_limit"] == results.fpr_limit == 0.3
    assert Image.open(run_dir / "figures" / "curves.png").size[0] > 0


def test_figures_need_the_evaluations_curves(category, tmp_path):
    samples = category.test
    maps = _maps(samples)
    results = evaluate_category(maps, np.zeros(len(maps)), [_mask(samples, i) for i in range(len(samples))],
                                np.array([s.label for s in samples]), with_curves=False)
    with pytest.raises(ValueError, match="no curves"):
        write_run_figures(tmp_path, maps, np.zeros(len(maps)), samples, lambda i: _mask(samples, i), results)


# --- settings -------------------------------------------------------------------------------------
def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from anobench.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("overrides,expected", [
    ([], (True, 3)),
    (["trainer=smoke"], (False, 3)),
    (["trainer=smoke", "visualize.enabled=true", "visualize.max_per_defect=1"], (True, 1)),
    (["visualize.enabled=false"], (False, 3)),
])
def test_figures_are_on_by_default_and_off_in_smoke_unless_asked(overrides, expected):
    assert VisualizeSettings.from_config(_compose(overrides)) == VisualizeSettings(*expected)


def test_invalid_visualize_setting_is_named():
    with pytest.raises(ConfigError, match="visualize.max_per_defect"):
        VisualizeSettings.from_config(_compose(["visualize.max_per_defect=-1"]))
    with pytest.raises(ConfigError, match="visualize.enabled"):
        VisualizeSettings.from_config(_compose(["visualize.enabled=sometimes"]))


# --- report -------------------------------------------------------------------------------------
class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)
            if name == "id":
                self.ids.add(value)


def _record(method: str, category: str, seed: int, status: str = "ok", resolution: str = "ground_truth") -> dict:
    return {
        "task": "train", "method": method, "dataset": "synthetic", "category": category, "seed": seed,
        "status": status, "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.8, "pro": 0.7} if status == "ok" else None,
        "error": None if status == "ok" else {"type": "RuntimeError", "message": "boom <b>"},
        "evaluation": {"resolution": resolution, "fpr_limit": 0.3},
        "config": {"seed": seed, "method": {"name": method}, "evaluation": {"resolution": resolution}},
        "git_sha": f"abc{seed}def", "budget": {"label": "smoke", "global_step": 2},
        "device": {"accelerator": "cpu", "cpu": "test cpu"}, "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": f"2026-01-01T00:0{seed}:00+00:00", "command": "anobench train seed=0",
    }


@pytest.fixture
def results_folder(tmp_path, run_with_figures):
    """A results folder with runs: two with figures, one without, one failed, one at model resolution."""
    results = tmp_path / "my results"  # a space: links must be URL-quoted
    run_src = run_with_figures[0]
    runs = {
        "runs/patch_svdd/synthetic/weave/seed0/a": _record("patch_svdd", "weave", 0),
        "runs/patch_svdd/synthetic/weave/seed1/b": _record("patch_svdd", "weave", 1),
        "runs/memae/synthetic/washer/seed0/c": _record("memae", "washer", 0),
        "runs/memae/synthetic/washer/seed1/d": _record("memae", "washer", 1, status="failed"),
        "runs/eval/e": _record("memae", "washer", 2, resolution="model"),
    }
    for rel, record in runs.items():
        write_result(results / rel, record)
    for rel in list(runs)[:2]:
        shutil.copytree(run_src / "figures", results / rel / "figures")
    return results, runs


def test_report_lists_every_run_and_has_no_broken_local_links(results_folder, run_with_figures):
    results, runs = results_folder
    page = write_report(results)
    assert page == results / REPORT_FILE
    text = page.read_text()
    parser = _Links()
    parser.feed(text)
    for rel in runs:  # every run of the folder, with a link to its result file
        assert f"{rel.replace(' ', '%20')}/result.json" in parser.links
    assert "abc1def" in text and "test cpu" in text and "budget" in text  # provenance
    assert "boom &lt;b&gt;" in text and "boom <b>" not in text  # escaped
    n_panels = len(run_with_figures[1]["panels"])
    assert sum(1 for link in parser.links if "/figures/panels/" in link) >= 2 * n_panels  # img + link per panel
    assert sum(1 for link in parser.links if link.endswith("figures/curves.png")) == 4  # 2 runs: img + link
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link
        if link.startswith("#"):
            assert link[1:] in parser.ids, link
        else:
            assert (results / unquote(parsed.path)).is_file(), link
    assert "http://" not in text and "https://" not in text and "<script" not in text


def test_leaderboard_markdown_links_to_the_report(results_folder):
    results, _ = results_folder
    publish(results)
    assert "(report.html)" in (results / "leaderboard.md").read_text()
    assert (results / REPORT_FILE).is_file()  # rebuilt with the tables, so the link is never broken


# --- headless Chromium ------------------------------------------------------------------------------
_INSTALL_ATTEMPT: dict[str, str] = {}


def _chromium() -> str:
    """Path of a headless Chromium; installs Debian's `chromium` once per session where possible."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if "error" not in _INSTALL_ATTEMPT:
        if not shutil.which("apt-get") or os.geteuid() != 0:
            _INSTALL_ATTEMPT["error"] = "chromium is not installed and apt-get (as root) is unavailable"
        else:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            try:
                proc = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True,
                                      text=True, timeout=300)
                if proc.returncode != 0:
                    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
                    proc = subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env,
                                          capture_output=True, text=True, timeout=300)
                _INSTALL_ATTEMPT["error"] = "" if proc.returncode == 0 else \
                    f"`apt-get install -y chromium` failed: {proc.stderr.strip()[-300:]}"
            except (OSError, subprocess.TimeoutExpired) as error:
                _INSTALL_ATTEMPT["error"] = f"`apt-get install -y chromium` did not finish: {error}"
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"headless Chromium unavailable: {_INSTALL_ATTEMPT['error'] or 'not on PATH after install'}")


def test_report_renders_in_headless_chromium(results_folder, tmp_path):
    results, _ = results_folder
    page = write_report(results)
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1200,900", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 900)
    colours = image.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, tables and plot images, not a blank page
    assert max(count for count, _ in colours) < 0.95 * 1200 * 900


def test_eval_keeps_the_runs_visualize_setting_unless_overridden():
    from omegaconf import OmegaConf

    from anobench.visualize.task import eval_visualize_settings

    run = OmegaConf.create({"visualize": {"enabled": "auto", "max_per_defect": 5}})
    assert eval_visualize_settings(run, OmegaConf.create({"visualize": {"enabled": None, "max_per_defect": None}})) \
        == {"enabled": "auto", "max_per_defect": 5}
    assert eval_visualize_settings(run, OmegaConf.create({"visualize": {"enabled": True, "max_per_defect": None}})) \
        == {"enabled": True, "max_per_defect": 5}
    old_run = OmegaConf.create({"seed": 0})  # written before the visualize block existed: defaults apply
    assert eval_visualize_settings(old_run, OmegaConf.create({})) == {"enabled": None, "max_per_defect": None}


def test_a_run_without_figures_says_why_and_how_to_draw_them(results_folder):
    results, _ = results_folder
    text = write_report(results).read_text()
    assert "no figures in this run folder" not in text
    assert "CC BY-NC-SA" in text and "anobench eval checkpoint=&lt;run dir&gt;/checkpoints/last.ckpt " \
                                      "visualize.enabled=true" in text


def test_without_masks_the_figures_leave_out_the_pixel_curves_and_the_ground_truth(category, tmp_path):
    samples = category.test
    maps = _maps(samples)
    labels = np.array([s.label for s in samples])
    sizes = [_mask(samples, i).shape for i in range(len(samples))]
    results = evaluate_category(maps, np.array([m.max() for m in maps]), None, labels, image_sizes=sizes)
    manifest = write_run_figures(tmp_path, maps, np.array([m.max() for m in maps]), samples, None, results,
                                 max_per_defect=1, title="no masks", pixel_threshold=0.5)
    assert set(manifest["curve_points"]) == {"image_roc"}  # no pixel ROC, no PRO
    with Image.open(tmp_path / "figures" / "curves.png") as curves:
        assert curves.size == (520, 460)  # the image ROC alone (one axis), not the ROC | PRO pair
    with Image.open(tmp_path / "figures" / manifest["panels"][0]["file"]) as panel:
        assert panel.size[0] == 1050  # input | predicted | heatmap: no ground-truth column


def test_the_report_and_the_leaderboard_show_null_metrics(tmp_path):
    record = {**_record("patch_svdd", "default", 0), "dataset": "widgets",
              "metrics": {"image_auroc": 0.9, "pixel_auroc": None, "pro": None},
              "evaluation": {"resolution": "ground_truth", "fpr_limit": 0.3,
                             "pixel_metrics": "not computed: the dataset has no ground-truth masks"}}
    write_result(tmp_path / "runs" / "a", record)
    publish(tmp_path)
    text = (tmp_path / REPORT_FILE).read_text()
    assert "pixel_auroc n/a" in text and "not computed: the dataset has no ground-truth masks" in text
    assert "| default | n/a |" in (tmp_path / "leaderboard.md").read_text()
    assert (tmp_path / "plots" / "widgets_pro.svg").is_file()
