"""Evaluation of the causal-LM track: sampled responses scored with ROUGE-L.

As the FDD paper evaluates: responses sampled at temperature 1, top-p 1, one pass per sampling
seed (`n_seeds`), ROUGE-L F-measure against the reference response averaged over examples, then
the mean over seeds is the run's metric. ROUGE-L comes from Google's `rouge-score` package
(lower-cased, non-alphanumerics dropped, no stemming). Scores are fractions in [0, 1] like the
GLUE metrics; tables print them x100.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch


@dataclass
class GenerationSet:
    """The prompts to answer (token ids) and their reference responses."""

    prompts: list[list[int]]
    references: list[str]
    instructions: list[str]


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure over the pairs."""
    from rouge_score import rouge_scorer  # imported here: it pulls in nltk (seconds), which GLUE runs never need

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(reference, prediction)["rougeL"].fmeasure
              for prediction, reference in zip(predictions, references)]
    return statistics.fmean(scores) if scores else 0.0


@torch.no_grad()
def sample_responses(
    model, tokenizer, prompts: list[list[int]], seed: int, max_new_tokens: int,
    temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
) -> list[str]:
    """One sampled response per prompt (left-padded batches), decoded without special tokens."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    responses = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in batch], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=temperature,
            top_p=top_p, top_k=0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        responses += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return [response.strip() for response in responses]


def evaluate_generation(model, tokenizer, examples: GenerationSet, settings) -> tuple[dict[str, float], list[dict]]:
    """ROUGE-L over `settings.n_seeds` sampling seeds: (metrics, a sample of generations).

    metrics: `rougeL` (mean over seeds), `rougeL_sd` (sd over seeds) and `rougeL_seed<k>`.
    """
    per_seed, samples = [], []
    for seed in range(int(settings.n_seeds)):
        responses = sample_responses(
            model, tokenizer, examples.prompts, seed, int(settings.max_new_tokens),
            float(settings.temperature), float(settings.top_p), int(settings.batch_size),
        )
        per_seed.append(rouge_l(responses, examples.references))
        if seed == 0:
            samples = [
                {"instruction": instruction, "reference": reference, "response": response}
                for instruction, reference, response in zip(
                    examples.instructions, examples.references, responses)
            ][: int(settings.log_examples)]
    metrics = {"rougeL": statistics.fmean(per_seed),
               "rougeL_sd": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0}
    metrics.update({f"rougeL_seed{seed}": value for seed, value in enumerate(per_seed)})
    return metrics, samples
