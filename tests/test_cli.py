"""The `kdsuite` console script: `python run.py` from any folder, on the same configs, and a wheel
that carries them. Every command runs in a folder outside the checkout."""

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import optuna
import pytest
from conftest import REPO
from sweep_runs import FAST, children_of, mlflow_runs, sweep_parents

pytestmark = pytest.mark.e2e  # starts processes


def kdsuite_command() -> str:
    command = shutil.which("kdsuite")
    assert command is not None, "the kdsuite console script is not installed: run README's install command"
    return command


def both(folder: Path, *arguments: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """`kdsuite ARGS` and `python run.py ARGS`, each started in `folder`."""
    ours = subprocess.run([kdsuite_command(), *arguments], capture_output=True, text=True, cwd=folder)
    theirs = subprocess.run([sys.executable, str(REPO / "run.py"), *arguments], capture_output=True, text=True,
                            cwd=folder)
    return ours, theirs


def test_kdsuite_composes_what_run_py_composes(tmp_path):
    ours, theirs = both(tmp_path, "--cfg", "all", "loss=fdd", "student=bert4l", "hydra.run.dir=fixed")
    assert ours.returncode == theirs.returncode == 0, ours.stderr[-3000:]
    assert "alpha_traj" in ours.stdout and "name: run" in ours.stdout  # Hydra's job: `run`, as for run.py
    assert ours.stdout == theirs.stdout


def test_an_unknown_group_option_gives_run_pys_error(tmp_path):
    ours, theirs = both(tmp_path, "loss=nope")
    assert ours.returncode == theirs.returncode != 0
    assert "Could not find 'loss/nope'" in ours.stderr and "\tfdd\n" in ours.stderr  # names the allowed options
    assert ours.stderr == theirs.stderr


@pytest.mark.slow(seconds=45)
def test_kdsuite_sweeps_from_any_folder(tmp_path, glue_dir):
    """`kdsuite -m sweep=fdd_weights`: the sweeper plugin, the processes launcher and the trial's
    training all work from a folder that is not the checkout."""
    result = subprocess.run(
        [kdsuite_command(), "-m", "sweep=fdd_weights", "hydra.sweeper.n_trials=1", *FAST,
         f"dataset.data_dir={glue_dir}", f"cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    [study_name] = optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study_name.startswith("fdd_weights_rte_bert2l_")
    _, runs = mlflow_runs(tmp_path)
    [parent] = sweep_parents(runs)
    [trial] = children_of(runs, parent)
    assert trial.info.status == "FINISHED" and trial.data.tags["loss"] == "fdd"
    assert list(tmp_path.glob("multirun/*/*/0/run.log"))  # the job is `run`, as for run.py


@pytest.mark.slow(seconds=30)
def test_a_wheel_carries_the_configs(tmp_path):
    """A non-editable install: the wheel holds every file of conf/ under kdsuite/conf/, and its
    `kdsuite`, installed into a fresh environment, composes from that copy what run.py composes."""
    source = tmp_path / "source"  # built from a copy: an in-tree build would write build/ into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("kdsuite-*.whl")
    configs = {str(path.relative_to(REPO / "conf")) for path in (REPO / "conf").rglob("*.yaml")}
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name.removeprefix("kdsuite/conf/") for name in archive.namelist()
                    if name.startswith("kdsuite/conf/")}
    assert packaged == configs

    environment = tmp_path / "env"
    venv.create(environment, system_site_packages=True, with_pip=False)  # torch etc. from this environment
    python = environment / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "from kdsuite.cli.run import config_dir; print(config_dir())"],
                           capture_output=True, text=True, cwd=outside, env=env, check=True).stdout.strip()
    assert Path(where).is_relative_to(environment) and Path(where).name == "conf"
    ours = subprocess.run([str(environment / "bin" / "kdsuite"), "--cfg", "job", "loss=codir", "student=bert4l"],
                          capture_output=True, text=True, cwd=outside, env=env)
    theirs = subprocess.run([sys.executable, str(REPO / "run.py"), "--cfg", "job", "loss=codir", "student=bert4l"],
                            capture_output=True, text=True, cwd=outside)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert ours.stdout == theirs.stdout
