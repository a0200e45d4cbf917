"""kdsuite: a Hydra-configured experiment suite for distilling transformer language models.

`kdsuite.run.train(cfg)` runs one configured distillation and returns its main dev metric.
Layers, each importing only from the ones listed before it:
- the core: `tasks`, `mapping`, `models` (+ `lora`), `metrics`, `generation`, `losses/`, `trainer`;
- the data by track: `data/`;
- a run: `run/` (assembly, teacher cache, tracking, pruning);
- `reports/`: tables and plots from MLflow runs.
"""

__version__ = "0.1.0"
