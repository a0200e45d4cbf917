"""MkDocs hooks (mkdocs.yml `hooks:`): pages that are generated, so they cannot drift.

- `reference/config.md`: every file of `conf/`, group by group, as it stands at build time.
- The "Loss families" section of the nav: `losses/index.md`, then every other page in
  `docs/losses/` (the seed families ce, kd, fdd, codir first, the rest by name), and on
  `losses/index.md` a list of links to them; a family that adds its page appears without an edit.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SEED_FAMILIES = ("ce", "kd", "fdd", "codir")
LOSSES_SECTION = "Loss families"


def loss_pages(docs_dir: Path) -> list[Path]:
    pages = [page for page in (docs_dir / "losses").glob("*.md") if page.name != "index.md"]
    return sorted(pages, key=lambda page: (SEED_FAMILIES.index(page.stem) if page.stem in SEED_FAMILIES
                                           else len(SEED_FAMILIES), page.stem))


def on_config(config):
    pages = [f"losses/{page.name}" for page in loss_pages(Path(config["docs_dir"]))]
    for item in config["nav"] or []:
        if isinstance(item, dict) and LOSSES_SECTION in item:
            item[LOSSES_SECTION] = ["losses/index.md", *pages]
    return config


def on_files(files, config):
    files.append(File.generated(config, "reference/config.md", content=config_reference()))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "losses/index.md":
        return markdown
    links = []
    for path in loss_pages(Path(config["docs_dir"])):
        title = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("# ")),
                     path.stem)
        links.append(f"- [{title}]({path.name})")
    return markdown + "\n" + "\n".join(links) + "\n"


def config_reference() -> str:
    """Markdown: `conf/config.yaml`, then per group (folder of `conf/`) a table of its options and
    each option's file."""
    parts = [
        "# Config reference\n",
        "Generated from `conf/` when the docs are built (`docs/hooks.py`), so it is what the code "
        "composes. An option is a file `conf/<group>/<option>.yaml`, picked with `group=option`; files "
        "whose name starts with `_` are bases the options extend, not options.\n",
        "## config.yaml\n", fenced(CONF / "config.yaml"),
    ]
    groups = sorted({path.parent for path in CONF.rglob("*.yaml")} - {CONF})
    for group in groups:
        name = group.relative_to(CONF).as_posix()
        files = sorted(group.glob("*.yaml"))
        options = ", ".join(f"`{path.stem}`" for path in files if not path.stem.startswith("_"))
        parts.append(f"## {name}\n\nOptions: {options}.\n")
        for path in files:
            parts.append(f"### {name}/{path.stem}\n\n" + fenced(path))
    return "\n".join(parts)


def fenced(path: Path) -> str:
    return "```yaml\n" + path.read_text().rstrip("\n") + "\n```\n"
