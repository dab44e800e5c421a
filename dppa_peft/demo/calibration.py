"""Extra calibration texts for the demo: unlabeled prompts drawn from the task generators, never a dev or test prompt.

Kept out of ``domains.py`` so that the zoo's code fingerprint (and so the cached zoo) does not change with it.
"""

from __future__ import annotations

import itertools
import random

from .domains import DATA_SEED, TASKS, _all_splits


def calibration_prompts(task: str, count: int, seed: int = DATA_SEED) -> tuple[str, ...]:
    """``count`` distinct unlabeled prompts of ``task`` from its generator, drawn with a stream of their own (labels
    balanced like the splits), none of them a dev or test prompt: extra calibration texts for learned factors."""
    spec, splits = TASKS[task], _all_splits(task, seed)
    held_out = {ex.prompt for split in ("dev", "test") for ex in splits[split]}
    rng = random.Random(f"{seed}:{task}:calibration")
    prompts: list[str] = []
    for attempt in itertools.count():
        if len(prompts) == count:
            break
        if attempt > 100 * count:
            raise RuntimeError(f"{task}: too few distinct prompts for {count} calibration prompts")
        label = spec.choices[len(prompts) % len(spec.choices)] if spec.choices else ""
        prompt = spec.example(rng, label).prompt
        if prompt not in held_out:
            held_out.add(prompt)
            prompts.append(prompt)
    if set(prompts) & {ex.prompt for ex in splits["test"]}:
        raise AssertionError(f"{task}: a calibration prompt is a test prompt")
    return tuple(prompts)
