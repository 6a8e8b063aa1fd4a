"""Every YAML under conf composes against the typed schemas, config mistakes stop the run before any
worker starts, and the shipped config is found through the package."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import require_shared_data
from rlhf_rm.config import GROUP_SCHEMAS, ConfigError, TrainConfig, conf_dir, settings_from

CONF = conf_dir()
TRAIN_GROUPS = ("model", "data", "loss", "trainer", "batching", "deepspeed", "logger", "experiment")


def compose(overrides, config_name: str = "config"):
    """The shipped config composed like the command line does (old trainer.layout=... names included)."""
    from rlhf_rm.config import compose as compose_config

    return compose_config(overrides, config_name)


def all_options():
    return [(group.name, path.stem) for group in sorted(CONF.iterdir()) if group.is_dir()
            for path in sorted(group.glob("*.yaml"))]


@pytest.mark.parametrize("group,option", all_options())
def test_every_yaml_composes(group, option):
    if group in TRAIN_GROUPS:
        settings = settings_from(compose([f"{group}={option}"]))  # typed, interpolations resolved, validated
        assert isinstance(settings, TrainConfig) and settings.loss["name"] and settings.data.train
    else:  # the serving pool reads its YAML into its own dataclass
        from rlhf_rm.serve.config import ServeConfig

        values = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))
        fields = {f.name for f in dataclasses.fields(ServeConfig)}
        assert isinstance(values, dict) and set(values) <= fields, set(values) - fields


def test_every_group_has_one_schema_and_every_schema_a_group():
    assert {p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_")} == set(GROUP_SCHEMAS)


def test_evaluate_yaml_composes():
    cfg = compose(["checkpoint=/ckpt"], config_name="evaluate")
    assert cfg.checkpoint == "/ckpt" and cfg.report.bins == 10 and cfg.data.on_error == "raise"


def test_conf_is_found_through_the_installed_package():
    """conf/ at the top level is the only copy; it is read as the package rlhf_rm.conf (importlib.resources),
    never as a path relative to the repository, and every YAML in it is shipped."""
    import importlib.resources
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    assert CONF == Path(str(importlib.resources.files("rlhf_rm.conf"))) == repo / "conf"
    assert (CONF / "config.yaml").is_file() and not (repo / "rlhf_rm" / "conf").exists()
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["rlhf_rm.conf"] == "conf"
    shipped = setuptools["package-data"]["*"]
    yaml_files = {p.relative_to(CONF) for p in CONF.rglob("*.yaml")}
    assert yaml_files and all(any(Path(p.name).match(pattern) for pattern in shipped) for p in yaml_files)
    groups = {f"rlhf_rm.conf.{p.name}" for p in CONF.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert groups <= set(setuptools["packages"]), groups - set(setuptools["packages"])


def test_loss_names_in_conf_match_registry():
    from rlhf_rm.losses import build_loss

    for path in (CONF / "loss").glob("*.yaml"):
        assert OmegaConf.load(path).name == path.stem
        build_loss(OmegaConf.to_container(OmegaConf.load(path)))


def test_defaults_live_in_code_and_yaml_only_sets_values():
    """The trainer and batching YAML set nothing: their values are the dataclasses' defaults, which are
    the values the YAML used to hold (log_every 5, betas (0.9, 0.95), ...)."""
    settings = settings_from(compose([]))
    assert settings.trainer.log_every == 5 and tuple(settings.trainer.betas) == (0.9, 0.95)
    assert settings.batching.layout == "prefix_shared" and settings.batching.tokens_per_worker == 2048
    for group in ("trainer", "batching"):
        assert not OmegaConf.load(CONF / group / "default.yaml")


def test_cli_overrides_compose_like_hydra_users_expect():
    cfg = compose(["trainer.num_workers=2", "loss=regularized", "data.limit=256", "trainer.betas=[0.8,0.99]"])
    assert (cfg.trainer.num_workers, cfg.loss.name, cfg.data.limit) == (2, "regularized", 256)
    assert list(cfg.trainer.betas) == [0.8, 0.99]
    # Batching settings moved to their own group; the old names still work on the command line.
    cfg = compose(["trainer.layout=separate", "trainer.tokens_per_worker=1024", "batching.attention=sdpa"])
    assert (cfg.batching.layout, cfg.batching.tokens_per_worker) == ("separate", 1024)


@pytest.mark.parametrize("override,message", [
    ("trainer.lrr=1", "trainer.lrr"),  # a misspelt key stops composition
    ("trainer.epochs=one", "epochs"),  # so does a wrong type
])
def test_unknown_keys_and_wrong_types_fail_at_composition(override, message):
    with pytest.raises(Exception, match=message):
        compose([override])


@pytest.mark.parametrize("override,message", [
    ("batching.layout=padded", "batching.layout='padded'"),
    ("trainer.resume=sometimes", "trainer.resume"),
    ("trainer.betas=[0.9]", "trainer.betas"),
    ("batching.attention=flex", "needs a tree layout"),
    ("+loss.coefficent=0.1", "loss="),
    ("model.lora.enabled=true", "LoRA with DeepSpeed ZeRO-3"),
    ("data.length_balance.mode=even", "data.length_balance.mode='even': choose one of"),
    ("data.length_balance.bin_tokens=0", "data.length_balance.bin_tokens=0"),
    ("data.length_balance.mode=downsample", "not applied when streaming"),
])
def test_invalid_settings_fail_at_start_up(override, message):
    overrides = [override] + (["batching.layout=separate"] if "flex" in override else []) \
        + (["deepspeed=zero3"] if "lora" in override else []) \
        + (["data.streaming=true"] if override == "data.length_balance.mode=downsample" else [])
    with pytest.raises(ConfigError, match=message):
        settings_from(compose(overrides))


def test_loss_data_mismatch_fails_before_training(tmp_path, tiny_backbone):
    require_shared_data("oasst-ranked")
    import ray

    from rlhf_rm.losses import LossDataMismatch
    from rlhf_rm.train import run

    cfg = compose([f"model.path={tiny_backbone}", "data=oasst", "loss=bradley_terry", "logger=none"])
    with pytest.raises(LossDataMismatch, match="plackett_luce"):
        run(cfg, tmp_path)
    assert not ray.is_initialized()  # nothing was launched


def test_settings_built_in_code_are_resolved_and_validated():
    from rlhf_rm.config import BatchingConfig, DataConfig

    settings = settings_from(TrainConfig(data=DataConfig(train="pairs.jsonl")))
    assert "${" not in settings.run_name and settings.trainer.log_every == 5
    with pytest.raises(ConfigError, match="batching.tokens_per_worker=0"):
        settings_from(TrainConfig(data=DataConfig(train="pairs.jsonl"), batching=BatchingConfig(tokens_per_worker=0)))


def test_default_run_names_differ_within_one_second():
    """run_name had 1-second resolution on a shared storage path: two runs started together collided."""
    import time

    started = time.time()
    names = {settings_from(compose([])).run_name for _ in range(3)}
    assert time.time() - started < 1.0 or len(names) == 3  # (a slow machine crossing a second proves nothing)
    assert len(names) == 3, names


def test_sweep_chooses_on_a_tuning_split_carved_from_train_never_on_the_test_split():
    """experiment=sweep scores its points on 10 % of train's prompts (by prompt hash): no prompt is on both
    sides, the tuning split is never empty, and dev.jsonl (the test split) is not read at all."""
    from rlhf_rm.data.load import load_examples

    settings = settings_from(compose(["experiment=sweep"]))
    paths = {Path(s["path"]).name for s in [*settings.data.train, *settings.data.dev]}
    assert paths == {"train.jsonl"}, paths
    train, _ = load_examples(settings.data.train)
    tune, _ = load_examples(settings.data.dev)
    prompts = lambda items: {example.prompt for _, example in items}  # noqa: E731
    assert not prompts(train) & prompts(tune)
    assert 0.05 < len(tune) / (len(train) + len(tune)) < 0.15, (len(tune), len(train))


def test_the_main_job_trains_outside_the_tuning_split_its_settings_were_chosen_on():
    """experiment=quickstart (`make train`) holds the tuning split out of its 400 training pairs, so a candidate
    scored on that split (benchmarks/quality_bench.py --split tune) is scored on pairs it never trained on, and
    the main job reports on dev.jsonl, the test split. With data=hh_rlhf_tune the training data is unchanged."""
    from rlhf_rm.data.load import load_examples

    main = settings_from(compose(["experiment=quickstart"]))
    tuning = settings_from(compose(["experiment=quickstart", "data=hh_rlhf_tune"]))
    assert main.data.train == tuning.data.train and main.data.limit == tuning.data.limit
    assert Path(main.data.dev).name == "dev.jsonl"
    train, _ = load_examples(main.data.train, limit=main.data.limit)
    tune, _ = load_examples(tuning.data.dev)
    assert not {e.prompt for _, e in train} & {e.prompt for _, e in tune}
    assert 395 <= len(train) <= 405, len(train)
