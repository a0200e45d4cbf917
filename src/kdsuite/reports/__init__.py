"""Reports: what finished runs are turned into for people to read, from MLflow and Optuna.

`markdown` holds the one Markdown-table renderer every table goes through, the table order of the
loss families, and the writer of `experiments/results/*.md` files that keeps the hand-written
reading above the table marker; `results_table` builds the multi-seed GLUE table (means, sds,
paired test against kd), the per-(dataset, student) tables of `kdsuite-report` (`summarise`,
`summary_tables`), the recipe check's per-epoch table, and the resume and CSV bookkeeping of
those grids; `plots` draws their bar charts; `comparison` is the Hydra callback that summarises
`experiment=compare_methods`, and the `role=comparison` run a table is logged to;
`sweep_report` writes a finished Optuna study's per-trial table and plots. Nothing here imports
the training side: only run records (MLflow runs, Optuna studies), `kdsuite.tracks` and
`kdsuite.metrics`.
"""
