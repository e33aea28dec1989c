"""CADA's online reinforcement learning (the paper's section 3): TRL's GRPOTrainer configured as REINFORCE with a
KL penalty to the starting policy, plus the two things GRPO has no option for.

The paper's update is ``theta += alpha [(r - r_bar) grad log pi(R, y | x) - beta_KL grad KL(pi || pi_0)]``, one
update per batch of the policy's own samples. GRPO becomes exactly that with

* ``num_iterations=1``: one policy update per generation batch, so the clipped ratio is 1 and its gradient is
  ``grad log pi`` (no PPO-style reuse of old samples);
* ``scale_rewards="none"``: the advantage is ``r - baseline``, not divided by the group's standard deviation;
* ``loss_type="dr_grpo"``: token log-probabilities summed over the completion (divided by a constant, the
  completion budget), which is ``grad log pi(R, y | x)`` of the whole sequence; the default per-token averages
  weight a long refusal's tokens less than a short compliance's;
* ``beta`` = 0.01: TRL's KL term, to the reference model, which is the starting policy (LoRA: the adapter off).

What the subclass adds (:class:`CadaRLTrainer`), each in the smallest method that can hold it:

* **the running-mean baseline** (``baseline="running"``): ``r_bar_t = r_bar_{t-1} + beta_t (mean(r_t) -
  r_bar_{t-1})`` over batches (``beta_t = 1/t`` by default: the mean of every reward so far; or a constant rate),
  advantage ``r - r_bar_t``. GRPO only knows the group's mean; the baseline's state rides in the checkpoint
  (:class:`RunningBaseline` is a stateful callback), so a resumed run continues with the same mean.
* **the distilled placement**: rows with a ``context_prompt`` column are *generated* from it (the statutes and
  the precedents nearest the request) while the update, its log-probabilities and its KL term are taken on the
  bare ``prompt``: the policy learns to answer the bare request as it would with the spec in front of it, as DA's
  context distillation does. Without that column (``in_prompt``) the update is on the prompt it generated from.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from trl import GRPOTrainer

#: GRPOConfig settings that make GRPO the paper's REINFORCE (see the module docstring); a user's ``extra`` wins
PAPER_GRPO = {"num_iterations": 1, "scale_rewards": "none", "loss_type": "dr_grpo"}


class RunningBaseline(TrainerCallback, ExportableState):
    """The running mean of the rewards, kept as trainer state so that it is saved with every checkpoint and
    restored on resume (transformers rebuilds a stateful callback from :meth:`state`)."""

    def __init__(self, rate: float | None = None, mean: float = 0.0, count: int = 0):
        self.rate, self.mean, self.count = rate, mean, count

    def update(self, batch_mean: float) -> float:
        """Fold one batch's mean reward in; returns the new baseline."""
        self.count += 1
        step = self.rate if self.rate is not None else 1.0 / self.count
        self.mean += step * (batch_mean - self.mean)
        return self.mean

    def state(self) -> dict:
        return {"args": {"rate": self.rate, "mean": self.mean, "count": self.count}, "attributes": {}}


class CadaRLTrainer(GRPOTrainer):
    """GRPOTrainer with the paper's running-mean baseline and the distilled placement (module docstring)."""

    def __init__(self, *args, baseline: str = "group", baseline_rate: float | None = None, **kwargs):
        if baseline not in ("group", "running"):
            raise ValueError(f"baseline {baseline!r}: use group or running")
        super().__init__(*args, **kwargs)
        self.baseline = baseline
        if baseline == "running":
            self.add_callback(RunningBaseline(baseline_rate))
        self._contexts: list | None = None
        self._last_rewards = None

    def _running(self) -> RunningBaseline:
        # looked up each time: on resume transformers replaces the callback with one rebuilt from the checkpoint
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RunningBaseline))

    def _generate_and_score_completions(self, inputs):
        self._contexts = [x["context_prompt"] for x in inputs] if "context_prompt" in inputs[0] else None
        t0 = time.perf_counter()
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self._contexts = None
        # sampling, the reward and the reference's log-probabilities; step_time minus this is the update
        self._metrics["train" if self.model.training else "eval"]["sample_seconds"].append(time.perf_counter() - t0)
        if self.baseline == "running" and self.model.training:
            out["advantages"] = self._running_advantages(len(inputs))
        return out

    def _generate(self, prompts):
        if self._contexts is None:
            return super()._generate(prompts)
        # sample with the spec in context, then hand back the bare prompt's token ids: every log-probability
        # GRPO takes next (the reference's for the KL term, the policy's in the loss) conditions on the bare request
        prompt_ids, *rest = super()._generate(self._contexts)
        bare_ids = self._tokenize_prompts(prompts)[0]
        return (list(bare_ids), *rest)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards  # every process's rows, as GRPO's own baseline sees them
        return rewards

    def _running_advantages(self, n_local: int):
        import torch

        per_func = self._last_rewards
        weights = self.reward_weights.to(per_func.device).unsqueeze(0)
        rewards = (per_func * weights).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan  # unscorable rows: no signal, not in the mean
        scored = rewards[~torch.isnan(rewards)]
        baseline = self._running().update(scored.mean().item()) if scored.numel() else self._running().mean
        advantages = torch.nan_to_num(rewards - baseline, nan=0.0)
        self._metrics["train"]["running_baseline"].append(baseline)
        i = self.accelerator.process_index
        return advantages[i * n_local:(i + 1) * n_local]
