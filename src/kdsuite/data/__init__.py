"""A run's data, by track.

- `glue`: GLUE tasks read from GLUE's TSV layout (or the `nyu-mll/glue` hub dataset) and tokenised.
- `instructions`: instruction data (Dolly JSONL or hub) as prompt + response tokens for causal LMs.
- `run_data`: what a run gets from either track: tokenised train/dev sets, the collator that pads
  them per batch, how they are scored, and the prompts whose sampled responses are scored.
"""
