"""Task evaluation against the bare forward passes its requests need, timed interleaved (issue 4).

After a warm-up run, lowbit's task evaluation and the bare passes (each distinct sequence the
harness scores, once, length-sorted batches of 16; see `bench/tasks.py`) alternate in one
process: bare, lowbit, bare, lowbit, bare, on the CPU in fp32. Prints the seconds of each run
and writes them to bench/results/tasks/cost-interleaved.json.

Usage: .venv/bin/python bench/tasks_cost.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
OUT = Path(__file__).resolve().parent / "results" / "tasks"


def main() -> None:
    import tasks as bench
    from common import write_result
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lowbit import api
    from lowbit.evaluation.harness import TaskConfig
    from lowbit.runtime import RuntimeConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=25)
    args = parser.parse_args()
    model, handle = api.load_for_tasks("smollm2-135m", api.runtime(RuntimeConfig("cpu", "float32")))
    cfg = TaskConfig(bench.MAIN, args.limit)
    warm = api.evaluate_tasks(model, handle, cfg)  # warm-up, and the task directories
    direct = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=handle.load_tokenizer(), batch_size=16),
        tasks=[f"local_{t}" for t in bench.MAIN],
        task_manager=TaskManager(include_path=warm.info["task_dirs"], include_defaults=False),
        limit=args.limit,
        log_samples=True,
        bootstrap_iters=0,
    )
    lm = HFLM(pretrained=model, tokenizer=handle.load_tokenizer())
    out: dict[str, list[float]] = {"bare": [], "lowbit": []}
    for _ in range(2):
        out["bare"].append(
            bench.bare_forward_seconds(lm, model, direct["samples"])["bare_forward_s"]
        )
        out["lowbit"].append(api.evaluate_tasks(model, handle, cfg).info["seconds"])
    out["bare"].append(bench.bare_forward_seconds(lm, model, direct["samples"])["bare_forward_s"])
    mean = {k: sum(v) / len(v) for k, v in out.items()}
    record = {"limit": args.limit, **out, "ratio_of_means": mean["lowbit"] / mean["bare"]}
    write_result(OUT / "cost-interleaved.json", record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
