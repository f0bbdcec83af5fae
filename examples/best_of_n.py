"""Best-of-N through the diffusers custom pipeline `pipelines/zreward_pipeline.py`, on TinyWorld (< 1 min on a CPU).

    python examples/best_of_n.py     # from the repository root

`DiffusionPipeline.from_pretrained(..., custom_pipeline=...)` wraps the folder's stock pipeline; `mode` picks
"best_of_n" (here), "guidance", "noise" or "plain". N candidates per prompt, the reward's batched `score` keeps the
best; candidate 0 is the plain sample's own noise, so the result never scores below it by the reward.
"""

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

torch.set_num_threads(1)
pipe = DiffusionPipeline.from_pretrained("models/tinyworld/sft", custom_pipeline="pipelines/zreward_pipeline.py",
                                         trust_remote_code=True, dtype=torch.float32)  # diffusers 0.42 asks for both
# pipe.load_lora("RUN/lora")  # a LoRA written by train_t2i.py, checked against the model first
prompts = ["a large blue circle on the right", "a small yellow triangle in the center", "a large green square at the top"]
plain = pipe(prompts, reward="models/tinyworld/student", mode="plain", seeds=[0, 1, 2])
best = pipe(prompts, reward="models/tinyworld/student", mode="best_of_n", n=4, seeds=[0, 1, 2])
for prompt, a, b in zip(prompts, plain.rewards, best.rewards):
    print(f"{prompt:40s} plain {a:.3f}  best of 4 {b:.3f}")
Path("outputs/examples").mkdir(parents=True, exist_ok=True)
best.images[0].save("outputs/examples/best_of_n_0.png")
print("wrote outputs/examples/best_of_n_0.png")
