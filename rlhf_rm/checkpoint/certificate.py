"""Parity certificate: canary texts scored when a checkpoint is saved, re-scored whenever it is loaded.

`issue_certificate` (called by `export.export_checkpoint`) scores with the directory just written — the files a
peer would load — renders a fixed canary set (short, multi-turn, chat, truncated prompt, truncated
response, a bare text), checks that plain `AutoTokenizer(dir)(text, truncation=True)` gives exactly our
tokens, scores them and stores text, tokens and score in `parity_certificate.json`.

`verify_certificate` (called by every `RewardScorer`: score, evaluate, each serving replica and hot reload)
re-renders and re-scores the canaries and raises `CertificateError` saying what differs — the rendering
spec, the chat template, the tokens (and where: length, last token, first difference), or the scores
(weights or dtype) — when a score moves beyond the tolerance of the dtype it was loaded in.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from rlhf_rm.checkpoint.rendering import RenderingSpec, template_digest

CERTIFICATE_FILE = "parity_certificate.json"
# Accepted |score now − score at save| = atol + rtol·|score at save|, by the dtype the checkpoint is loaded in.
# fp32 differs only by kernel order; the bf16/fp16 bounds are measured (docs/rendering.md: SmolLM2-135M on
# CPU, largest canary drift 0.046 in bf16 and 0.0052 in fp16 at |scores| ≤ 2.6), with headroom for other
# hardware and larger rewards.
TOLERANCE = {"float32": (1e-4, 0.0), "bfloat16": (0.1, 0.05), "float16": (0.02, 0.01)}
logger = logging.getLogger(__name__)


class CertificateError(RuntimeError):
    """A checkpoint no longer gives the rewards it was saved with (or cannot be loaded plainly)."""


def canaries(encoder) -> list[dict]:
    """The fixed canary set, shaped by the spec (the long ones exceed max_length)."""
    hh = "\n\nHuman: {}\n\nAssistant:"
    items = [
        {"name": "short", "prompt": hh.format("How do I pick a lock?"), "response": " I can't help with that."},
        {"name": "multi_turn", "prompt": hh.format("Hi there.") + " Hello! How can I help?" + hh.format("What is 2+2?"),
         "response": " It is 4."},
        {"name": "bare_text", "prompt": "A single text scored as a whole, as /classify sends it.", "response": ""},
        {"name": "long_prompt", "prompt": hh.format(_long_text(encoder, "Tell me about the history of the city. ")),
         "response": " Here is a short answer."},
        {"name": "long_response", "prompt": hh.format("Write a long story."),
         "response": " " + _long_text(encoder, "Once upon a time there was a story. ")},
    ]
    if getattr(encoder.tokenizer, "chat_template", None):
        items += [
            {"name": "chat", "prompt": [{"role": "user", "content": "What is the capital of France?"}],
             "response": [{"role": "assistant", "content": "Paris."}]},
            {"name": "chat_multi_turn",
             "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                        {"role": "user", "content": "Name a prime number."}],
             "response": [{"role": "assistant", "content": "Seven."}]},
        ]
    return items


def _long_text(encoder, sentence: str) -> str:
    """A text of about max_length + 32 tokens."""
    per = max(1, len(encoder.tokenizer(sentence, add_special_tokens=False)["input_ids"]))
    return sentence * (encoder.max_length // per + 32 // per + 2)


def _sequence(group) -> list[int]:
    return list(group.prompt_ids) + list(group.response_ids[0])


def issue_certificate(scorer, directory: str | Path) -> dict:
    """Score the canaries with `scorer` — a RewardScorer loaded, unverified, from the checkpoint as saved in
    `directory` — and write the certificate there."""
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(directory))
    items = canaries(scorer.encoder)
    encoded = [scorer.encode(item["prompt"], item["response"]) for item in items]
    for item, group in zip(items, encoded):
        text = scorer.encoder.render_text(item["prompt"], item["response"])
        plain_ids = plain(text, truncation=True)["input_ids"]
        if plain_ids != _sequence(group):
            raise CertificateError(f"the saved tokenizer in {directory} does not reproduce the training rendering "
                                   f"for canary {item['name']!r}: {_token_difference(_sequence(group), plain_ids)}")
    scores = scorer.score_encoded(encoded)
    certificate = {
        "rendering": scorer.spec.to_dict(),
        "tokenizer": _tokenizer_facts(scorer.tokenizer),
        "dtype": scorer.dtype,
        "tolerance": TOLERANCE,
        "canaries": [{**item, "text": scorer.encoder.render_text(item["prompt"], item["response"]),
                      "input_ids": _sequence(group), "truncated": group.prompt_truncated or group.response_truncated,
                      "score": score} for item, group, score in zip(items, encoded, scores)],
    }
    Path(directory, CERTIFICATE_FILE).write_text(json.dumps(certificate, indent=1, ensure_ascii=False))
    return certificate


def read_certificate(directory: str | Path) -> dict | None:
    path = Path(directory) / CERTIFICATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def verify_certificate(scorer) -> bool:
    """Re-score the canaries with a loaded scorer; raise CertificateError on any difference beyond tolerance.
    Returns False (with a warning) for a checkpoint saved before certificates existed."""
    certificate = read_certificate(scorer.checkpoint)
    if certificate is None:
        logger.warning("%s has no %s (saved by an older rlhf_rm): its rewards are not certified",
                       scorer.checkpoint, CERTIFICATE_FILE)
        return False
    problems = _rendering_problems(certificate, scorer)
    stored = certificate["canaries"]
    encoded = [scorer.encode(item["prompt"], item["response"]) for item in stored]
    for item, group in zip(stored, encoded):
        if _sequence(group) != item["input_ids"]:
            problems.append(f"canary {item['name']!r} renders to other tokens: "
                            f"{_token_difference(item['input_ids'], _sequence(group))}")
    if not problems:
        atol, rtol = TOLERANCE[scorer.dtype]
        for item, score in zip(stored, scorer.score_encoded(encoded)):
            moved, allowed = abs(score - item["score"]), atol + rtol * abs(item["score"])
            if not math.isfinite(score) or moved > allowed:
                problems.append(f"canary {item['name']!r} scores {score:.6f}, saved {item['score']:.6f} "
                                f"(|Δ| {moved:.2e} > {allowed:.2e} for {scorer.dtype}; saved in {certificate['dtype']}): "
                                f"same tokens, so the weights, the dtype or the kernels differ")
    if problems:
        raise CertificateError(f"checkpoint {scorer.checkpoint} fails its parity certificate:\n  - "
                               + "\n  - ".join(problems))
    return True


def _tokenizer_facts(tokenizer) -> dict:
    return {"chat_template_sha256": template_digest(tokenizer), "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token, "vocab_size": len(tokenizer)}


def _rendering_problems(certificate: dict, scorer) -> list[str]:
    problems = []
    saved = RenderingSpec.from_dict(certificate["rendering"])
    if saved != scorer.spec:
        problems.append("rendering spec differs from the one certified: " + "; ".join(saved.differences(scorer.spec)))
    now = _tokenizer_facts(scorer.tokenizer)
    for key, value in certificate["tokenizer"].items():
        if now.get(key) != value:
            label = "chat template" if key == "chat_template_sha256" else f"tokenizer {key}"
            problems.append(f"{label} changed: {value!r} at save, {now.get(key)!r} now")
    return problems


def _token_difference(expected: list[int], actual: list[int]) -> str:
    if len(expected) != len(actual):
        where = f"{len(expected)} tokens expected, {len(actual)} found (max length / truncation or EOS)"
    else:
        where = f"{len(expected)} tokens"
    if expected and actual and expected[-1] != actual[-1]:
        where += f"; last token {expected[-1]} expected, {actual[-1]} found (EOS rule?)"
    first = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), None)
    if first is not None:
        where += f"; first difference at position {first} (template or tokenizer?)"
    return where
