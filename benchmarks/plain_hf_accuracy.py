"""Pair accuracy of a checkpoint scored the plain Hugging Face way — no rlhf_rm import at all.

    python benchmarks/plain_hf_accuracy.py outputs/<run>/checkpoint ../shared/data/hh-rlhf-harmless/dev.jsonl

What a peer does with the directory: AutoTokenizer + AutoModelForSequenceClassification, one text at a
time, `tok(text, truncation=True)` (no EOS added by hand). HH-RLHF rows hold full texts (the prompt is the
shared dialogue), so chosen and rejected are scored as they stand. Prints accuracy, pairs, and how many
texts the tokenizer truncated.
"""

import json
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main(checkpoint: str, pairs_file: str, limit: int | None = None) -> dict:
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    rows = [json.loads(line) for line in open(pairs_file, encoding="utf-8") if line.strip()][:limit]
    correct = truncated = 0
    with torch.no_grad():
        for row in rows:
            scores = []
            for text in (row["chosen"], row["rejected"]):
                if len(tok(text)["input_ids"]) > tok.model_max_length:
                    truncated += 1
                scores.append(float(model(**tok(text, truncation=True, return_tensors="pt")).logits[0, 0]))
            correct += scores[0] > scores[1]
    result = {"accuracy": correct / len(rows), "pairs": len(rows), "truncated_texts": truncated,
              "model_max_length": tok.model_max_length, "truncation_side": tok.truncation_side}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
