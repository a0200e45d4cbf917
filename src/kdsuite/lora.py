"""LoRA students through `peft`, as the FDD paper trains its LLaMA students (r = 16 on q and v).

`student.lora.targets` takes short names that mean the same thing across architectures: `q`,
`k`, `v`, `o` resolve to LLaMA's `q_proj`/`k_proj`/`v_proj`/`o_proj`, BERT's `query`/`key`/
`value`, or GPT-2's fused `c_attn` (GPT-2 computes q, k and v in one matrix, so `q,v` adapts
that matrix); any other name is taken as a module name as is. `r = 0` means no LoRA.
"""

from __future__ import annotations

from omegaconf import DictConfig

TARGET_ALIASES = {
    "q": ("q_proj", "query", "c_attn"),
    "k": ("k_proj", "key", "c_attn"),
    "v": ("v_proj", "value", "c_attn"),
    "o": ("o_proj", "dense", "c_proj"),
}


def resolve_targets(model, targets: list[str]) -> list[str]:
    """Module names (last path component) in `model` that the short `targets` denote."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    resolved = set()
    for target in targets:
        candidates = [alias for alias in TARGET_ALIASES.get(target, (target,)) if alias in present]
        if not candidates:
            raise ValueError(
                f"student.lora.targets: {target!r} matches no module of {type(model).__name__} "
                f"(tried {list(TARGET_ALIASES.get(target, (target,)))})"
            )
        resolved.add(candidates[0])
    return sorted(resolved)


def apply_lora(model, lora_cfg: DictConfig | None, task):
    """`model` wrapped in LoRA adapters (only they, and a classifier head, train), or unchanged."""
    if not lora_cfg or int(lora_cfg.get("r", 0)) == 0:
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=int(lora_cfg.r),
        lora_alpha=int(lora_cfg.alpha),
        lora_dropout=float(lora_cfg.dropout),
        target_modules=resolve_targets(model, list(lora_cfg.targets)),
        task_type=TaskType[task.track.lora_task_type],
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores weights transposed
    )
    return get_peft_model(model, config)
