"""kdsuite's one entry point: `python run.py loss=fdd student=bert4l dataset=mrpc`."""

import hydra
from omegaconf import DictConfig

from kdsuite.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
