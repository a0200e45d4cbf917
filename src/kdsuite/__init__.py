"""kdsuite: a Hydra-configured experiment suite for distilling transformer language models.

`kdsuite.train.train(cfg)` runs one configured distillation and returns its main dev metric.
"""

__version__ = "0.1.0"
