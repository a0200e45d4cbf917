"""kdsuite's Hydra sweeper: Hydra multirun drives the trials, a current Optuna does the search
(ask/tell), and every trial is an MLflow child run of one parent run per sweep."""
