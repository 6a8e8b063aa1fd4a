"""A small, real PPO loop against the reward pool: N policy Ray actors, one shared reward model.

    python launchers/ppo_example.py --reward-checkpoint outputs/main_320/checkpoint
    python launchers/ppo_example.py --reward-checkpoint CKPT --actors 2 --steps 4 --max-new-tokens 12

Each policy actor holds the SmolLM2 causal LM (trained) and a frozen copy (reference). Per step it
samples `--samples-per-prompt` replies to its prompts (first human turns of the HH-RLHF fixtures), asks
the pool for rewards through a `RewardClient` (a DeploymentHandle; prompts go as chat messages, so the
reward model renders them with its own template), and takes a clipped-surrogate step:

    reward_i   = RM(prompt, reply_i) - kl_coef * sum_t [log pi_old - log pi_ref]     (sequence KL penalty)
    advantage  = (reward_i - mean over the prompt's samples) / (std + 1e-6)           (group baseline;
                 with --samples-per-prompt 1, the batch is the group)
    loss       = -mean_t min(ratio_t * A, clip(ratio_t, 1 - eps, 1 + eps) * A),  ratio = pi / pi_old

Actors learn independently (no gradient sync; this shows the serving side, not distributed PPO).
Mean RM reward per step goes to W&B (offline unless WANDB_API_KEY is set) and to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_human_turns(path: Path, limit: int) -> list[str]:
    prompts = []
    for line in path.read_text().splitlines():
        text = json.loads(line)["chosen"]
        turn = text.split("\n\nHuman:", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
        if turn and turn not in prompts:
            prompts.append(turn)
        if len(prompts) == limit:
            break
    return prompts


def baseline_advantages(rewards, samples: int):
    """(reward - baseline) / (std + 1e-6), the baseline being the prompt's other samples (rewards are grouped
    by prompt, `samples` each). With one sample per prompt there is no group to compare with: the whole
    batch is the baseline (torch's unbiased std of one value is NaN, which used to poison every step)."""
    grouped = rewards.view(-1, samples) if samples > 1 else rewards.view(1, -1)
    if grouped.shape[1] < 2:
        return rewards.new_zeros(rewards.shape)  # a single reward in the batch carries no relative signal
    centred = grouped - grouped.mean(1, keepdim=True)
    return (centred / (grouped.std(1, keepdim=True, unbiased=False) + 1e-6)).reshape(-1)


def make_policy_actor():
    import ray

    @ray.remote(num_cpus=1)
    class PolicyActor:
        def __init__(self, policy_path: str, reward_client, lr: float, kl_coef: float, clip: float, seed: int,
                     torch_threads: int):
            import copy

            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.manual_seed(seed)
            torch.set_num_threads(torch_threads)
            self.torch = torch
            self.tokenizer = AutoTokenizer.from_pretrained(policy_path, padding_side="left")
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32)
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
            self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=lr, weight_decay=0.0)
            self.rewards = reward_client
            self.kl_coef, self.clip = kl_coef, clip

        def _token_logprobs(self, model, sequences, attention_mask, prompt_width):
            """log p(token_t | tokens_<t) for the completion part only: [B, T_completion]."""
            positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=positions).logits
            logp = logits[:, prompt_width - 1:-1].float().log_softmax(-1)
            return logp.gather(-1, sequences[:, prompt_width:, None]).squeeze(-1)

        def step(self, prompts: list[str], samples: int, max_new_tokens: int, ppo_epochs: int) -> dict:
            torch = self.torch
            tok = self.tokenizer
            messages = [[{"role": "user", "content": p}] for p in prompts for _ in range(samples)]
            rendered = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
            enc = tok(rendered, return_tensors="pt", padding=True, truncation=True, max_length=96,
                      add_special_tokens=False)
            width = enc["input_ids"].shape[1]
            self.policy.eval()
            started = time.perf_counter()
            with torch.no_grad():
                sequences = self.policy.generate(**enc, do_sample=True, temperature=1.0, top_k=0,
                                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
            completion = sequences[:, width:]
            # Tokens after the first EOS are padding; the EOS itself is part of the reply.
            done_before = (completion == tok.eos_token_id).long().cumsum(1) - (completion == tok.eos_token_id).long()
            completion_mask = (done_before == 0).float()
            attention_mask = torch.cat([enc["attention_mask"], completion_mask.long()], dim=1)
            replies = tok.batch_decode(completion, skip_special_tokens=True)
            generate_s = time.perf_counter() - started

            started = time.perf_counter()
            rm_scores = torch.tensor(self.rewards.score(messages, replies))
            reward_s = time.perf_counter() - started

            with torch.no_grad():
                old = self._token_logprobs(self.policy, sequences, attention_mask, width)
                ref = self._token_logprobs(self.reference, sequences, attention_mask, width)
            kl = ((old - ref) * completion_mask).sum(1)
            total = rm_scores - self.kl_coef * kl
            advantages = baseline_advantages(total, samples)

            self.policy.train()
            for _ in range(ppo_epochs):
                new = self._token_logprobs(self.policy, sequences, attention_mask, width)
                ratio = (new - old).exp()
                surrogate = torch.minimum(ratio * advantages[:, None],
                                          ratio.clamp(1 - self.clip, 1 + self.clip) * advantages[:, None])
                loss = -(surrogate * completion_mask).sum() / completion_mask.sum().clamp(min=1)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
                self.optimizer.step()
            return {"reward_mean": float(rm_scores.mean()), "kl_mean": float(kl.mean()), "loss": float(loss),
                    "reply_tokens": float(completion_mask.sum(1).mean()), "generate_s": generate_s,
                    "reward_s": reward_s, "example_reply": replies[0][:80]}

    return PolicyActor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-checkpoint", required=True)
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="backbone name or HF directory")
    parser.add_argument("--data", default=str(ROOT / "tests" / "fixtures" / "hh_train_small.jsonl"))
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--prompts-per-actor", type=int, default=2)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--clip", type=float, default=0.2)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--port", type=int, default=8000, help="the pool's HTTP port (127.0.0.1)")
    parser.add_argument("--pool-app", default=None, help="use a pool already running under this Serve app name")
    parser.add_argument("--fresh-prompts", action="store_true", help="new prompts every step")
    parser.add_argument("--wandb", action="store_true", help="log to W&B (offline unless WANDB_API_KEY is set)")
    args = parser.parse_args(argv)

    import ray

    from rlhf_rm.backbone import resolve_backbone
    from rlhf_rm.serve import RewardClient
    from rlhf_rm.serve.app import start
    from rlhf_rm.serve.config import LiveSettings, ServeConfig
    from rlhf_rm.training.tracking import RunTracker

    policy_path = args.policy if Path(args.policy).is_dir() else resolve_backbone(args.policy)
    prompts = first_human_turns(Path(args.data), args.actors * args.prompts_per_actor * args.steps)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started_ray = not ray.is_initialized()  # joined to a running Ray (a test, a notebook): leave it running
    if started_ray:
        ray.init(num_cpus=args.actors + 1, include_dashboard=False, log_to_driver=False)
    app = args.pool_app
    if app is None:
        app = "rlhf_rm"
        start(ServeConfig(app_name=app, port=args.port, num_cpus_per_replica=1,
                          live=LiveSettings(checkpoint=args.reward_checkpoint)))
    tracker = RunTracker({"backend": "wandb"} if args.wandb else None, str(ROOT / "outputs" / "ppo_example"),
                         vars(args), name="ppo_example")
    policy_actor = make_policy_actor()
    actors = [policy_actor.remote(policy_path, RewardClient(app), args.lr, args.kl_coef, args.clip, seed,
                                  args.torch_threads) for seed in range(args.actors)]
    per_step = args.actors * args.prompts_per_actor
    history = []
    for step in range(args.steps):
        # By default every step revisits the same prompts, so a change in mean reward is the policy's doing,
        # not the prompts'; --fresh-prompts draws new ones each step as a real run would.
        offset = step * per_step if args.fresh_prompts else 0
        batch = prompts[offset:offset + per_step]
        shards = [batch[i::args.actors] for i in range(args.actors)]
        results = ray.get([a.step.remote(s, args.samples_per_prompt, args.max_new_tokens, args.ppo_epochs)
                           for a, s in zip(actors, shards)])
        metrics = {key: sum(r[key] for r in results) / len(results)
                   for key in ("reward_mean", "kl_mean", "loss", "reply_tokens", "generate_s", "reward_s")}
        history.append(metrics["reward_mean"])
        tracker.log({f"ppo/{k}": v for k, v in metrics.items()}, step=step)
        print(json.dumps({"step": step, **{k: round(v, 4) for k, v in metrics.items()},
                          "example_reply": results[0]["example_reply"]}), flush=True)
    tracker.summary({"ppo/reward_first": history[0], "ppo/reward_last": history[-1]})
    tracker.finish()
    print(json.dumps({"reward_mean_by_step": [round(r, 4) for r in history]}))
    if started_ray:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
