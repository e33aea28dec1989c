"""codes-mode vs none-mode generation time at a realistic batch: 64 XSTest prompts, batch 32, 64 new tokens, the
embedded model on the CPU. Each mode runs twice (the second codes run reuses the encoded prefix).

    python benchmarks/prefix_batch.py
"""
import time
from cada.models.generate import LocalGenerator, SamplingParams
from cada.reasoning import build_messages, Mode
from cada.spec.schema import load_spec
from cada.data.benchmarks import load_benchmark
import inspect
spec = load_spec(None)
items = load_benchmark("xstest-safe")[:64]
gen = LocalGenerator.from_name("smollm2-135m", batch_size=32, show_progress=False)
print(inspect.signature(build_messages))
for mode in ("none", "codes", "none", "codes"):
    msgs = [build_messages(it.prompt, mode, spec) for it in items]
    gen.generate(msgs[:1], SamplingParams(max_new_tokens=2))  # prefix memo
    t = time.perf_counter()
    gen.generate(msgs, SamplingParams(max_new_tokens=64))
    dt = time.perf_counter() - t
    print(mode, round(dt, 1), gen.last_stats, flush=True)
