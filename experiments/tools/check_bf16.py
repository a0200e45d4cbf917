"""Stop a long script whose pinned recipe trains in bf16 where bf16 would be emulated: the script
entry of `kdsuite.bf16_check` (which says why), for commands that name this path.

    python experiments/tools/check_bf16.py trainer.num_train_epochs=3 trainer.bf16=true || exit 2
"""

from kdsuite.bf16_check import main

if __name__ == "__main__":
    main()
