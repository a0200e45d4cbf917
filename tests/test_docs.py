"""The docs site and the README: the config reference is generated from every file of conf/, a
loss page is listed however many there are, the README stays short and keeps its GLUE headline,
and the site builds with `mkdocs build --strict` (a broken link fails)."""

import importlib.util
import shutil
import subprocess
import sys

from conftest import REPO


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_reference_shows_every_file_of_conf():
    reference = hooks().config_reference()
    for path in (REPO / "conf").rglob("*.yaml"):
        if path.parent != REPO / "conf":
            group = path.parent.relative_to(REPO / "conf").as_posix()
            assert f"### {group}/{path.stem}\n" in reference
        assert path.read_text().rstrip("\n") in reference


def test_every_loss_page_is_in_the_nav_seed_families_first(tmp_path):
    (tmp_path / "losses").mkdir()
    for name in ("index", "uld", "kd", "ce", "pkd", "fdd", "codir"):
        (tmp_path / "losses" / f"{name}.md").write_text(f"# {name}\n")
    config = {"docs_dir": str(tmp_path), "nav": [{"Home": "index.md"}, {"Loss families": ["losses/index.md"]}]}
    nav = hooks().on_config(config)["nav"]
    assert nav[1]["Loss families"] == ["losses/index.md", *[f"losses/{name}.md" for name in
                                                           ("ce", "kd", "fdd", "codir", "pkd", "uld")]]


def test_readme_is_short_and_keeps_the_glue_headline():
    readme = (REPO / "README.md").read_text()
    assert readme.count("\n") <= 200
    headline = readme.split("<!-- glue headline")[1].split("<!-- end glue headline -->")[0]
    assert "| bert2l kd |" in headline and "| bert4l kd |" in headline
    assert "experiments/results/glue.md" in headline
    assert "pip install torch==2.13.0 -e \".[dev]\"" in readme
    assert "python -m pytest -q -n 2 --dist loadgroup" in (REPO / ".ci" / "run").read_text()


def test_the_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs")
    assert mkdocs is not None, "mkdocs is not installed: README's install command installs it"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "fdd_weights" in reference
