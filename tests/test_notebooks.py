"""Notebooks: committed clean (no outputs, one ``parameters`` cell, in sync with the generator),
and every notebook runs through papermill with tiny parameters on the synthetic benchmark (CPU)."""

import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
NOTEBOOKS = ["quickstart", "train", "evaluate", "ablation", "tsne", "ccd", "video"]


# ----------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_with_one_parameters_cell(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs committed"
    # every parameter is documented and parsed by papermill (no '=' in its comment)
    inferred = pm.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))
    n_assignments = sum(1 for line in tagged[0].source.splitlines() if "=" in line.split("#")[0])
    assert len(inferred) == n_assignments
    assert all(p["help"] for p in inferred.values()), f"{name}: undocumented parameter"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def _cells(nb) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_pair_is_in_sync(name):
    """notebooks/<name>.py (the source) and <name>.ipynb (what papermill runs) hold the
    same cells; `make notebooks` rewrites the .ipynb after an edit of the .py."""
    import jupytext

    script = jupytext.read(NB_DIR / f"{name}.py")
    notebook = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert _cells(script) == _cells(notebook), (
        f"notebooks/{name}.py and {name}.ipynb differ: run `make notebooks` "
        "(or save the notebook in JupyterLab with jupytext installed)"
    )


def test_every_notebook_is_paired():
    scripts = {p.stem for p in NB_DIR.glob("*.py")}
    notebooks = {p.stem for p in NB_DIR.glob("*.ipynb")}
    assert scripts == notebooks == set(NOTEBOOKS)


# ----------------------------------------------------------------------------- execution

# Tiny runs on the tiny synthetic benchmark (32x64 images): 2 iterations, 2 evaluation images.
TINY = [
    "data.synthetic_size=tiny",
    "losses.patch.crop_size=32",
    "model.decoder_channels=16",
    "model.init_from=null",
    "model.proj_dim=8",
    "optim.max_iters=2",
    "optim.warmup_iters=1",
    "eval.max_samples=2",
    "runtime.num_threads=1",
    "runtime.tensorboard=false",
]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """The tiny synthetic benchmark under ``<data_root>/synthetic``."""
    from pipa_core.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("data")
    ensure_synthetic(root / "synthetic", size="tiny")
    return root


@pytest.fixture(scope="session")
def trained_runs(data_root, tmp_path_factory):
    """Two tiny runs (source-only and PiPa) for the analysis notebooks."""
    from pipa_core.experiments.runs import make_run_config
    from pipa_core.uda import train

    base = tmp_path_factory.mktemp("runs")
    runs = {}
    for method in ("source_only", "pipa"):
        cfg = make_run_config(
            "synthetic", method, data_root=data_root, run_dir=base / method,
            overrides=[*TINY, "runtime.progress=false"],
        )  # fmt: skip
        runs[method] = train(cfg)["run_dir"]
    return runs


def run_notebook(name: str, cwd: Path, **parameters) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>.ipynb`` in ``cwd`` with papermill; return the executed notebook."""
    out = cwd / f"{name}.executed.ipynb"
    pm.execute_notebook(
        str(NB_DIR / f"{name}.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(cwd),
        kernel_name="python3",
        progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def test_notebook_parameters_are_checked_like_the_command_line():
    from typing import Optional

    from pipa_core.config import ConfigError
    from pipa_core.experiments.notebook import check_parameters

    ok = check_parameters(
        {"max_iters": "40", "seeds": [0, "1"]}, {"max_iters": Optional[int], "seeds": list[int]}
    )
    assert ok == {"max_iters": 40, "seeds": [0, 1]}
    assert check_parameters({"max_iters": None}, {"max_iters": Optional[int]}) == {
        "max_iters": None
    }
    with pytest.raises(
        ConfigError, match="notebook parameter max_iters: expected an integer, got 'abc'"
    ):
        check_parameters({"max_iters": "abc"}, {"max_iters": Optional[int]})


@pytest.mark.parametrize(
    ("name", "param"),
    [
        ("train", "max_iters"),
        ("evaluate", "max_samples"),
        ("ablation", "jobs"),
        ("tsne", "max_images"),
    ],
)
def test_a_wrong_parameter_type_fails_in_the_first_code_cell(name, param, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as info:
        run_notebook(name, tmp_path, **{param: "abc"})
    assert f"notebook parameter {param}: expected an integer, got 'abc'" in str(info.value)
    assert info.value.exec_count <= 3  # the parameters cell, the injected one, the set-up cell


def _outputs(nb, mime: str) -> list:
    return [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})
    ]


@pytest.mark.slow
def test_train_notebook(data_root, tmp_path):
    run = tmp_path / "run"
    nb = run_notebook(
        "train",
        tmp_path,
        data_root=str(data_root),
        run_dir=str(run),
        losses=["pixel"],
        overrides=TINY,
    )
    result = json.loads((run / "result.json").read_text())
    assert result["finished"] and result["iterations"] == 2 and 0 <= result["mIoU"] <= 100
    assert json.loads((run / "config.json").read_text())["losses"]["enabled"] == ["pixel"]
    assert (run / "figures" / "losses.png").stat().st_size > 0
    assert _outputs(nb, "image/png")  # figures are shown


@pytest.mark.slow
def test_evaluate_notebook(trained_runs, tmp_path):
    nb = run_notebook(
        "evaluate", tmp_path, run=trained_runs["pipa"], max_samples=3, n_examples=2,
        out_dir=str(tmp_path / "eval"),
    )  # fmt: skip
    res = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert res["num_images"] == 3 and len(res["confusion_matrix"]) == 19
    # without max_samples the notebook scores the run exactly as its trainer did
    nb_all = run_notebook(
        "evaluate", tmp_path, run=trained_runs["pipa"], n_examples=1, out_dir=str(tmp_path / "all")
    )
    full = json.loads((tmp_path / "all" / "eval.json").read_text())
    trained = json.loads((Path(trained_runs["pipa"]) / "result.json").read_text())
    assert full["num_images"] == trained["eval"]["num_images"]
    assert full["mIoU"] == pytest.approx(trained["mIoU"], abs=1e-9)
    assert full["settings"]["protocols"] == list(trained["eval"]["protocols"])
    assert _outputs(nb_all, "image/png")
    for f in ("confusion.png", "qualitative.png"):
        assert (tmp_path / "eval" / f).stat().st_size > 0
    assert _outputs(nb, "application/vnd.jupyter.widget-view+json")  # the browser widget


@pytest.mark.slow
def test_tsne_notebook(trained_runs, tmp_path):
    run_notebook(
        "tsne", tmp_path, runs={"source-only": trained_runs["source_only"], "PiPa": trained_runs["pipa"]},
        max_images=2, n_per_class=5, max_pixels=60, tsne_iters=250, perplexity=5.0, out_dir="figs",
    )  # fmt: skip
    out = json.loads((tmp_path / "figs" / "tsne.json").read_text())
    assert set(out["maps"]) == {"source-only", "PiPa"}
    for m in out["maps"].values():
        assert 5 <= len(m["coords"]) <= 60 and set(m["domain_names"]) == {"source", "target"}
    assert (tmp_path / "figs" / "tsne.png").stat().st_size > 0


@pytest.mark.slow
def test_ccd_notebook(trained_runs, tmp_path):
    run_notebook(
        "ccd", tmp_path, runs={"source-only": trained_runs["source_only"], "PiPa": trained_runs["pipa"]},
        max_images=2, out_dir="figs",
    )  # fmt: skip
    out = json.loads((tmp_path / "figs" / "ccd.json").read_text())
    assert set(out["ccd"]) == {"source-only", "PiPa"} and out["embedding"] == "feat"
    assert set(out["ccd"]["PiPa"]) == {"source", "target", "all"}
    assert out["ccd"]["PiPa"]["target"]["mean"] > 0
    for d in ("source", "target"):
        assert (tmp_path / "figs" / f"ccd_{d}.png").stat().st_size > 0


@pytest.mark.slow
def test_ablation_notebook_table_and_reuse_of_finished_runs(data_root, tmp_path):
    from pipa_core.experiments.runs import load_run_config

    run_notebook(
        "ablation", tmp_path, data_root=str(data_root), settings=["self-training", "+pixel"],
        seeds=[0], out_dir="abl", overrides=TINY, reuse_from=[], jobs=1,
    )  # fmt: skip
    out = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    control = "source only (control)"
    assert [r["setting"] for r in out["table"]] == [control, "self-training", "+pixel"]
    assert all(r["runs"] == 1 and r["std"] == 0.0 for r in out["table"])
    assert sorted(r["losses"] for r in out["runs"]) == ["-", "-", "pixel"]
    by = {r["setting"]: r for r in out["runs"]}
    mode = lambda setting: load_run_config(tmp_path / by[setting]["run_dir"]).uda.mode  # noqa: E731
    assert mode(control) == "source_only" and mode("self-training") == "self_training"
    # every gain is the row's mean minus the control's
    base = out["table"][0]
    assert base["gain"] is None
    for row in out["table"][1:]:
        assert row["gain"] == pytest.approx(row["mean"] - base["mean"])
    assert (tmp_path / "abl" / "ablation.png").stat().st_size > 0
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| self-training |" in md and f"| {control} |" in md and "| reference |" in md
    # A second ablation into another folder reuses the first one's finished runs.
    run_notebook(
        "ablation", tmp_path, data_root=str(data_root), settings=["+pixel"], seeds=[0],
        out_dir="abl2", overrides=TINY, reuse_from=["abl"], jobs=1, control=False,
    )  # fmt: skip
    again = json.loads((tmp_path / "abl2" / "ablation.json").read_text())
    assert [r["setting"] for r in again["table"]] == ["+pixel"]
    assert again["table"][0]["gain"] is None  # no control, no gain
    assert again["runs"][0]["run_dir"] == by["+pixel"]["run_dir"]
    assert not (tmp_path / "abl2" / "pixel").exists()


@pytest.mark.slow
def test_quickstart_command_runs_the_notebook(data_root, tmp_path, monkeypatch):
    from pipa_core.quickstart import main

    monkeypatch.chdir(tmp_path)
    # --data-root may name the synthetic cache itself (the command's former meaning)
    args = ["--data-root", str(data_root / "synthetic"), "--seeds", "0", "1", "--jobs", "2"]
    summary = main(args + [a for o in TINY for a in ("--set", o)])
    rows = {r["method"]: r for r in summary["table"]["rows"]}
    assert list(rows) == ["source_only", "oracle", "dacs", "pipa"]
    assert all(r["iterations"] == 2 and r["seeds"] == [0, 1] for r in rows.values())
    assert set(summary["runs"]) == set(rows)
    assert rows["pipa"]["mean"] == pytest.approx(summary["runs"]["pipa"]["mIoU"])
    saved = json.loads((tmp_path / "runs" / "quickstart" / "results.json").read_text())
    assert {r["method"]: r["miou"] for r in saved["rows"]} == {
        m: r["miou"] for m, r in rows.items()
    }
    assert saved["domain_gap"] == pytest.approx(
        rows["oracle"]["mean"] - rows["source_only"]["mean"]
    )
    out = tmp_path / "runs" / "quickstart"
    assert (out / "results.md").is_file() and (out / "quickstart.ipynb").is_file()
    for f in ("dataset_card", "quickstart_curves", "quickstart_per_class", "quickstart_pseudo_labels",
              "quickstart_predictions"):  # fmt: skip
        assert (out / "figures" / f"{f}.png").stat().st_size > 0, f
    assert not (tmp_path / "figures").exists()  # nothing written outside the run directory
    executed = nbformat.read(out / "quickstart.ipynb", as_version=4)
    assert len(_outputs(executed, "image/png")) >= 5


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    """VIPER -> Cityscapes-Seq fixture trees with the real naming (tests/data_fixtures.py), prepared."""
    import data_fixtures as fx

    from pipa_core.data.prepare import prepare

    root = tmp_path_factory.mktemp("video_data")
    fx.make_cityscapes(root / "cityscapes", per_city=1)
    for split in ("train", "val"):
        for city in ("aachen", "zurich"):
            fx.make_cityscapes_seq(root / "cityscapes", split=split, city=city, seqs=(0,))
    fx.make_viper(root / "viper", frames=range(0, 3), labelled=(1, 2))
    for name, sub in [("viper", "viper"), ("cityscapes", "cityscapes")]:
        prepare(name, root / sub, progress=False)
    return root


@pytest.mark.slow
def test_video_notebook_on_viper_to_cityscapes_seq(video_root, tmp_path):
    small = [
        "model.arch=daformer_mit_b0", "model.decoder_channels=16", "model.proj_dim=8",
        "model.init_from=null", "model.pretrained=null",
        "uda.pseudo_crop_top=null", "uda.pseudo_crop_bottom=null",
        "data.source_scale=32,48", "data.target_scale=32,48", "data.crop_size=32,32",
        "data.batch_size=1", "data.num_workers=0", "data.rcs_min_pixels=10",
        "losses.patch.crop_size=32", "eval.crop_size=null", "eval.stride=null",
        "optim.max_iters=2", "optim.warmup_iters=1", "runtime.num_threads=1",
        "runtime.tensorboard=false",
    ]  # fmt: skip
    run_notebook(
        "video", tmp_path, benchmark="viper2csseq", data_root=str(video_root), overrides=small,
        eval_max_samples=2, max_pairs=1, out_dir="vid", seeds=[0], jobs=1,
    )  # fmt: skip
    out = json.loads((tmp_path / "vid" / "video.json").read_text())
    assert [r["model"] for r in out["table"]] == ["PiPa", "PiPa++ (+temporal)"]
    assert out["protocol"] == "viper15" and len(out["runs"]) == 2
    for c in out["runs"]:
        assert c["num_pairs"] == 1 and 0 <= c["pixel agreement (%)"] <= 100
    cfg = json.loads((tmp_path / "vid" / "viper2csseq_pipa_pp_s0" / "config.json").read_text())
    assert "temporal" in cfg["losses"]["enabled"]
    for f in ("video_frames.png", "video_predictions.png"):
        assert (tmp_path / "vid" / f).stat().st_size > 0


@pytest.mark.slow
def test_video_notebook_on_synthetic_sequences(data_root, tmp_path):
    """The default video benchmark: PiPa vs PiPa++ on the embedded sequences (tiny)."""
    small = [
        "data.synthetic_size=tiny", "model.decoder_channels=16", "model.proj_dim=8",
        "model.init_from=null",
        "losses.patch.crop_size=32", "optim.max_iters=2", "optim.warmup_iters=1",
        "runtime.num_threads=1", "runtime.tensorboard=false",
    ]  # fmt: skip
    run_notebook(
        "video", tmp_path, data_root=str(data_root), overrides=small, eval_max_samples=2,
        max_pairs=2, out_dir="vid", seeds=[0, 1], jobs=2,
    )  # fmt: skip
    out = json.loads((tmp_path / "vid" / "video.json").read_text())
    assert out["benchmark"] == "synthetic_seq" and out["seeds"] == [0, 1]
    assert sorted((r["model"], r["seed"]) for r in out["runs"]) == [
        ("PiPa", 0), ("PiPa", 1), ("PiPa++ (+temporal)", 0), ("PiPa++ (+temporal)", 1)
    ]  # fmt: skip
    for c in out["runs"]:
        assert c["num_pairs"] == 2 and 0 <= c["pixel agreement (%)"] <= 100
    assert all(r["mIoU"] >= 0 for r in out["std"])  # one std per model over the two seeds
    cfg = json.loads((tmp_path / "vid" / "synthetic_seq_pipa_pp_s0" / "config.json").read_text())
    assert "temporal" in cfg["losses"]["enabled"]


@pytest.mark.slow
def test_analysis_notebooks_take_released_checkpoints(data_root, tmp_path):
    """A released DAFormer file is evaluated, and a released PiPa(HRDA) file's proj_head
    embedding analysed, by the notebooks a user runs (the benchmark given as a parameter)."""
    import official_fixtures as fx

    daformer, pipa = tmp_path / "daformer_latest.pth", tmp_path / "pipa_latest.pth"
    fx.write_released(daformer, "daformer")
    fx.write_released(pipa, "pipa_hrda", seed=1)
    root = str(data_root)
    run_notebook(
        "evaluate", tmp_path, run=str(daformer), benchmark="synthetic", data_root=root,
        max_samples=2, n_examples=1,
    )  # fmt: skip
    res = json.loads((tmp_path / "runs/analysis/eval/daformer_latest/eval.json").read_text())
    assert res["benchmark"] == "synthetic" and res["num_images"] == 2
    run_notebook(
        "ccd", tmp_path, runs={"PiPa (released)": str(pipa)}, benchmark="synthetic",
        data_root=root, embedding="proj_head", max_images=2, out_dir="figs",
    )  # fmt: skip
    out = json.loads((tmp_path / "figs" / "ccd.json").read_text())
    assert out["embedding"] == "proj_head" and out["ccd"]["PiPa (released)"]["target"]["mean"] > 0
    # t-SNE: the map fitted on source pixels, target pixels placed into it (openTSNE)
    run_notebook(
        "tsne", tmp_path, runs={"PiPa (released)": str(pipa)}, benchmark="synthetic",
        data_root=root, embedding="proj_head", backend="opentsne", fit_on="source",
        max_images=2, n_per_class=5, max_pixels=60, tsne_iters=250, perplexity=5.0, out_dir="figs",
    )  # fmt: skip
    m = json.loads((tmp_path / "figs" / "tsne.json").read_text())["maps"]["PiPa (released)"]
    placed = [m["domain_names"][d] for d, p in zip(m["domains"], m["placed"]) if p]
    assert placed and set(placed) == {"target"} and m["backend"] == "opentsne"
