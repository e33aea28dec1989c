"""codes-mode vs none-mode generation time at a realistic batch: 64 XSTest prompts, batch 32, 64 new tokens, the
embedded model on the CPU. Each mode runs twice (the second codes run reuses the encoded prefix).

    python benchmarks/prefix_batch.py
"""

from __future__ import annotations

import time


def main() -> None:
    from cada.data.benchmarks import load_benchmark
    from cada.models import LocalGenerator, SamplingParams
    from cada.reasoning import build_messages
    from cada.spec.schema import load_spec

    spec = load_spec(None)
    items = load_benchmark("xstest-safe")[:64]
    gen = LocalGenerator.from_name("smollm2-135m", batch_size=32, show_progress=False)
    for mode in ("none", "codes", "none", "codes"):
        msgs = [build_messages(it.prompt, mode, spec) for it in items]
        gen.generate(msgs[:1], SamplingParams(max_new_tokens=2))  # encodes the prefix, kept for the next call
        t = time.perf_counter()
        gen.generate(msgs, SamplingParams(max_new_tokens=64))
        print(mode, round(time.perf_counter() - t, 1), gen.last_stats, flush=True)


if __name__ == "__main__":
    main()
