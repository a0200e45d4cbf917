"""`kdsuite ...`: the same command as `python run.py ...`, from any folder.

`kdsuite loss=fdd student=bert4l` and `kdsuite -m sweep=fdd_weights` compose the same configs and
call the same `kdsuite.run.train(cfg)` as run.py. The module is named `run` on purpose: Hydra
names the job after the module (or file) of its task function, so the job is `run` for both
commands, and so are its log file (`run.log`) and its `--help` header.

Where the configs are (`config_dir`): one `conf/` folder, at the top of the repository, and
`src/kdsuite/conf`, a symlink to it. A non-editable install (`pip install .`, a wheel) carries
them as package data, `kdsuite/conf/` (pyproject.toml's `package-data`); an editable install
reads the repository's `conf/` through the symlink. A checkout where the symlink is not one (git
on Windows writes it as a text file) falls back to `conf/` two folders above the package.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

import kdsuite

PACKAGE = Path(kdsuite.__file__).resolve().parent


def config_dir() -> Path:
    """The folder holding `config.yaml`: the installed copy (`kdsuite/conf/`) when there is one,
    else the checkout's `conf/` (editable install). The symlink is resolved, so an editable install
    names the folder run.py does (in Hydra's errors and `hydra.runtime.config_sources`). Neither
    holding config.yaml is an error naming both places."""
    for candidate in (PACKAGE / "conf", PACKAGE.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"kdsuite's configs are not installed: neither {PACKAGE / 'conf'} nor "
                            f"{PACKAGE.parents[1] / 'conf'} holds config.yaml; reinstall kdsuite")


def train_from_config(cfg: DictConfig) -> float:
    # imported here, as in run.py: a multirun's own process only sweeps and launches
    from kdsuite.run import train

    return train(cfg)


def main() -> None:
    """The `kdsuite` console script: Hydra's command line over `config_dir()`."""
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(train_from_config)()
