"""Teacher forward at bf16: autocast over fp32 weights vs a bf16 cast copy (why the Trainer casts).

    python experiments/bench/bench_teacher_precision.py

MiniLM (pretrained), batch 32, length 128, no grad, eval mode; median of 10 forwards after 3
warm-up, the three variants interleaved. Autocast re-casts every fp32 weight at every forward
(its cast cache holds only weights that require grad, and the teacher's are frozen); a cast copy
reads half the bytes and casts nothing.
"""

import os
import statistics
import time

import torch
from omegaconf import OmegaConf

from kdsuite import models
from kdsuite.tracks import get_task

cfg = OmegaConf.load("conf/teacher/minilm.yaml")
teacher = models.load_pretrained_teacher(cfg, get_task("rte")).eval()
cast = models.load_pretrained_teacher(cfg, get_task("rte")).eval().to(torch.bfloat16)
g = torch.Generator().manual_seed(0)
ids = torch.randint(1000, 30522, (32, 128), generator=g)
mask = torch.ones_like(ids)
def fp32():
    with torch.no_grad():
        teacher(input_ids=ids, attention_mask=mask)
def autocast():
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        teacher(input_ids=ids, attention_mask=mask)
def cast_copy():
    with torch.no_grad():
        cast(input_ids=ids, attention_mask=mask)
fns = {"fp32": fp32, "bf16 autocast (fp32 weights)": autocast, "bf16 cast copy": cast_copy}
times = {k: [] for k in fns}
for step in range(13):
    for k, f in fns.items():
        t = time.perf_counter()
        f()
        dt = time.perf_counter() - t
        if step >= 3:
            times[k].append(dt)
print(f"load average (1 min) {os.getloadavg()[0]:.1f}, threads {torch.get_num_threads()}")
for k, v in times.items():
    print(f"{k}: median {statistics.median(v)*1000:.1f} ms")
