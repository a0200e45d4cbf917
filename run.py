"""kdsuite's one entry point: `python run.py loss=fdd student=bert4l dataset=mrpc`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # imported here, not above: a multirun's own process only sweeps and launches, and its trials'
    # processes import the training stack themselves (about 7 s saved before the first trial starts)
    from kdsuite.run import train

    return train(cfg)


if __name__ == "__main__":
    main()
