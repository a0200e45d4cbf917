"""The installed commands (`[project.scripts]` in pyproject.toml).

- `kdsuite` (`cli.run`): `python run.py` from any folder, on the same configs;
- `kdsuite-report` (`cli.report`): mean +- sd per loss and paired tests from any MLflow store.
"""
