"""What a finished sweep selected: its best trial's values, read back from the sweep's MLflow
parent run (the `best.<key>` tags the sweeper sets), as run.py overrides for fresh seeds."""

from __future__ import annotations

from kdsuite import tracking_names as names


def newest_sweep_parent(client, experiment: str, preset: str, task: str, student: str):
    """The newest parent run of `sweep=<preset>` on (task, student) in an MLflow experiment (by
    name), or None. Its study is named `<preset>_<task>_<student>_<hash>` (study_identity)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    parents = client.search_runs(
        [found.experiment_id],
        filter_string=(f"tags.{names.ROLE} = '{names.SWEEP}' "
                       f"and tags.{names.OPTUNA_STUDY} LIKE '{preset}_{task}_{student}_%'"),
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return parents[0] if parents else None


def selected_overrides(parent) -> list[str]:
    """The best trial's values as overrides (`loss.alpha=0.3`), sorted by key; [] before any
    trial completed."""
    prefix = names.BEST_PREFIX
    return [f"{key[len(prefix):]}={value}" for key, value in sorted(parent.data.tags.items())
            if key.startswith(prefix)]


def selection_id(parent) -> str:
    """Names one selection: the study and its best trial, `<study>/<trial>` (a valid Hydra override
    value, for a run's tag). A study topped up later may select other values, and another id."""
    return f"{parent.data.tags[names.OPTUNA_STUDY]}/{parent.data.tags.get(names.BEST_TRIAL, 'none')}"
