"""Write a small synthetic instruction set in the Dolly format ({instruction, context, response}
per line), for running the causal-LM track offline (`experiment=causal_smoke`).

    python experiments/tools/make_dolly_sample.py /tmp/dolly_sample.jsonl --rows 64

The rows follow two simple patterns (a question with or without a context), so a tiny model can
learn something from them in seconds; they are no substitute for databricks-dolly-15k.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

THINGS = ["apple", "sky", "grass", "banana", "night", "snow", "car", "house"]
COLORS = ["red", "blue", "green", "yellow", "black", "white"]


def sample_rows(count: int, seed: int = 0) -> list[dict]:
    generator = random.Random(seed)
    rows = []
    for index in range(count):
        thing, color = generator.choice(THINGS), generator.choice(COLORS)
        if index % 2:
            rows.append({"instruction": f"What color is the {thing}?", "context": f"The {thing} is {color}.",
                         "response": f"The {thing} is {color}."})
        else:
            rows.append({"instruction": f"Name something {color}.", "context": "",
                         "response": f"A {thing} can be {color}."})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    args.path.write_text("".join(json.dumps(row) + "\n" for row in sample_rows(args.rows)))
    print(f"wrote {args.rows} rows to {args.path}")


if __name__ == "__main__":
    main()
