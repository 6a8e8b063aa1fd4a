"""Reward quality on the test split, several seeds, TRL side by side — a benchmark that runs in pieces.

Each piece trains one arm with one seed and saves one JSON row (seed, commit, figures) under
benchmarks/results/quality/; `merge` builds the README table (mean ± std over the seeds each arm has).
A piece is 10–40 minutes on 2 CPU cores, so a full table (arms × ≥ 3 seeds) spans sessions.

Arms (`--arm`):
  trl          the issue-9 reference: TRL RewardTrainer, SmolLM2-135M-Instruct, the first 400 HH-RLHF
               harmless train pairs (TRL drops those over max length), max length 512, batch 8, one epoch,
               lr 5e-5, cosine, 5 % warmup, center_rewards_coefficient 0.01, fp32 (benchmarks/train_bench.py)
  rlhf_rm      the README's main job (`make train`: 400 pairs, 2 Ray Train workers); its rows were written before
               issue 29, when it trained on the same first 400 pairs as TRL (the tuning split inside them); a new
               piece of it would train today's LoRA main job into that row, so run lora_1e-3 for the main job
  equal_time   the main job on the pairs TRL's training time allows: the reference's training loop took 1525 s
               (seed 0, 2026-11-29) and the main job trains 0.82 pairs/s here (400 pairs in 488 s), so 1200 pairs
               (`data.limit=1200`, ≈ 1460 s); the table prints both training times, so the claim can be checked
  *_length     an arm with the length-disentangled head (`model.length_head.enabled=true`, docs/length.md)
  rlhf_rm_balanced  the main job's 400 rows, length-balanced (`data.length_balance.mode=downsample`: in each
               16-token bin of length difference as many chosen-longer as chosen-shorter pairs; 319 pairs remain)
  general      `experiment=general` (HH harmless + OpenAssistant rankings + QA-Feedback ties): its own table,
               test accuracy per source (HH on the test split, OASST on held-out trees, QA on held-out questions)

Every arm is scored on the same test split (`hh-rlhf-harmless/dev.jsonl`, 208 pairs; no choice was made on
it) with one rendering: the full text, each text keeping its last 512 tokens. The length split ("chosen
longer" / "chosen shorter", by response tokens) is reported for every arm.

    python benchmarks/quality_bench.py run --arm trl --seed 0
    python benchmarks/quality_bench.py run --arm equal_time --seed 0
    python benchmarks/quality_bench.py merge [--write-readme]
    python benchmarks/quality_bench.py relength --arm rlhf_rm --seed 0   # see relength()
    python benchmarks/quality_bench.py on-general --seed 0   # make train's checkpoint on general's test sources

Choosing the main job (issue 29): every candidate arm trains exactly as the main job does (400 pairs outside the
tuning split), 3 seeds, scored on the tuning split (`--split tune`, rows under results/quality/tune/); only the
chosen candidate (and the default, the baseline measured the same way) is then scored on the test split from the
same checkpoints (`test`), so the test split decides nothing. The rule, written down
after the first three tuning rows (seed 0 of each of the first three candidates) and before the rest: the highest
mean tuning-split accuracy over 3 seeds wins, as long as its job fits the quickstart budget (15 minutes on
2 cores); within one pair (0.005) of another, the faster job wins.

    python benchmarks/quality_bench.py run --split tune --arm lr1e-4_centered --seed 0
    python benchmarks/quality_bench.py test --arm lr1e-4_centered --seed 0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality"
TUNE_RESULTS = RESULTS / "tune"  # candidates scored on the tuning split carved out of train
ON_GENERAL = RESULTS / "on_general"  # HH-only checkpoints scored on experiment=general's test sources
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_bench  # noqa: E402  (the TRL run is the same code as the throughput benchmark's baseline)

TEST_PAIRS = 208  # all of hh-rlhf-harmless/dev.jsonl
ARMS = {
    "trl": ("TRL RewardTrainer, 400 pairs (reference)", None),
    "rlhf_rm": ("rlhf_rm `make train` before issue 29, 400 pairs", []),
    # candidates for the main job (issue 29): the main job's data, these settings over it
    "rlhf_rm_defaults": ("rlhf_rm 400 pairs, the defaults before issue 29 (lr 5e-5, Bradley-Terry, head N(0, 0.02))",
                         ["trainer.lr=5e-5", "loss=bradley_terry", "model.head_init_std=0.02"]),
    "lr1e-4_centered": ("rlhf_rm 400 pairs, lr 1e-4, reward centering 0.01, head N(0, 1/(H+1))",
                        ["trainer.lr=1e-4", "loss=regularized", "loss.coefficient=0.01", "model.head_init_std=0.0416"]),
    "lora_1e-3": ("rlhf_rm `make train` since issue 29: 400 pairs, LoRA r=16 at lr 1e-3 (chosen)",
                  ["model.lora.enabled=true", "trainer.lr=1e-3"]),
    "pairs700": ("rlhf_rm 705 pairs (the first 780 rows outside the tuning split), the defaults",
                 ["trainer.lr=5e-5", "loss=bradley_terry", "model.head_init_std=0.02", "data.limit=780"]),
    "equal_time": ("rlhf_rm at TRL's training time, 1200 pairs", ["data.limit=1200"]),
    "rlhf_rm_length": ("rlhf_rm 400 pairs + length head", ["model.length_head.enabled=true"]),
    "equal_time_length": ("rlhf_rm 1200 pairs + length head", ["data.limit=1200", "model.length_head.enabled=true"]),
    "rlhf_rm_balanced": ("rlhf_rm 400 rows, length-balanced pairs (downsample)", ["data.length_balance.mode=downsample"]),
    "general": ("`experiment=general` (HH 250 pairs + OASST 40 trees + QA-Feedback 40 questions)",
                ["experiment=general"]),
}
GENERAL_SOURCES = ("hh_rlhf", "oasst", "qa_feedback")


def git_commit() -> str:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "rlhf_rm", "benchmarks", ":!benchmarks/results"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+dirty" if dirty else "")


# -- TRL ---------------------------------------------------------------------------------------------
def trl_piece(queue, backbone: str, work: str, seed: int) -> None:
    started = time.perf_counter()
    args = argparse.Namespace(pairs=400, dev_pairs=TEST_PAIRS, max_length=512, lr=5e-5, batch_pairs=8, work=work,
                              center_rewards=0.01, seed=seed, keep_scores=True)
    try:
        result = train_bench.run_trl(args, backbone)
        result["job_seconds"] = time.perf_counter() - started
        queue.put(result)
    except BaseException as exc:  # reported, never hidden
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_trl_arm(work: str, seed: int) -> dict:
    from rlhf_rm.backbone import resolve_backbone
    from rlhf_rm.evaluation.diagnostics import length_bias

    context = mp.get_context("spawn")  # its own process: its memory and threads are its own
    queue = context.Queue()
    process = context.Process(target=trl_piece, args=(queue, resolve_backbone("smollm2-135m-instruct"), work, seed))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    scores = result.pop("scores")
    length = length_bias(scores["chosen"], scores["rejected"], scores["chosen_lengths"], scores["rejected_lengths"])
    return {"train_pairs": result["pairs"], "train_seconds": result["seconds"], "job_seconds": result["job_seconds"],
            "test_accuracy": result["dev_accuracy"], "test_pairs": TEST_PAIRS, **length_figures(length)}


# -- rlhf_rm -----------------------------------------------------------------------------------------
def run_rlhf_rm_arm(work: str, seed: int, overrides: list[str]) -> dict:
    run_dir = Path(work) / "rlhf_rm"
    experiment = [] if any(o.startswith("experiment=") for o in overrides) else ["experiment=quickstart"]
    command = [sys.executable, "-m", "rlhf_rm.train", *experiment, "logger=none", f"seed={seed}",
               f"hydra.run.dir={run_dir}", f"trainer.storage_path={Path(work) / 'ray'}", *overrides]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    job_seconds = time.perf_counter() - started
    metrics = json.loads((run_dir / "metrics.json").read_text())
    diagnostics = json.loads((run_dir / "diagnostics.json").read_text())
    return {"train_pairs": metrics["data"]["train"]["groups"], "train_seconds": metrics["train_seconds"],
            "job_seconds": job_seconds, "test_accuracy": metrics["dev_accuracy"], "test_pairs": metrics["dev_pairs"],
            **length_figures(diagnostics["length"]),
            # per dev source (experiment=general): pairs, accuracy, the chosen shorter / longer split
            "by_source": diagnostics.get("by_source", {}),
            "tie_aware_accuracy": metrics.get("dev_tie_aware_accuracy"), "ties": metrics.get("dev_ties"),
            "length_definition": OWN_TOKENS}


# How "chosen longer / shorter" counts a response: its own tokens, as a single-text scorer sees them. Rows
# written before 2026-11-30 01:18 (commit 00eb20a) counted len(response_ids), which for a pair whose prompt
# truncation cut at two places includes prompt tokens; `relength` rescored those rows' checkpoints.
OWN_TOKENS = "each response's own tokens after truncation (rlhf_rm.evaluate's count)"


def relength(arm: str, seed: int, work: Path) -> Path:
    """Recompute an rlhf_rm row's length split (overall and per source) with `rlhf_rm.evaluate` on its saved
    checkpoint and the same test sources; accuracy is unchanged (same scores), only the split's counting."""
    path = RESULTS / f"{arm}-seed{seed}.json"
    row = json.loads(path.read_text())
    report = evaluate_checkpoint(arm, seed, work, "relength", ["data=general"] if arm == "general" else [])
    accuracy = report["rewards"]["accuracy"]
    if abs(accuracy - row["test_accuracy"]) > 1e-9:  # the same checkpoint on the same pairs: the same scores
        raise RuntimeError(f"evaluate's accuracy {accuracy} differs from the row's {row['test_accuracy']}")
    row.update(length_figures(report["length"]))
    if arm == "general":
        row["by_source"] = report["by_source"]
    row["length_definition"] = OWN_TOKENS
    row["relength"] = {"commit": git_commit(), "at": datetime.now(timezone.utc).isoformat()}
    path.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps({k: row[k] for k in ("arm", "seed", "longer_chosen_pairs", "longer_chosen_accuracy",
                                          "shorter_chosen_pairs", "shorter_chosen_accuracy")}), flush=True)
    return path


def evaluate_checkpoint(arm: str, seed: int, work: Path, name: str, data: list[str],
                        report_dir: Path | None = None) -> dict:
    """`rlhf_rm.evaluate` on an arm's saved checkpoint into <work>/<arm>-seed<seed>/<name>; its report.json.
    `report_dir`: a report already made (checked to be of that checkpoint) instead of a new run."""
    checkpoint = work / f"{arm}-seed{seed}" / "rlhf_rm" / "checkpoint"
    if report_dir is None:
        report_dir = work / f"{arm}-seed{seed}" / name
        subprocess.run([sys.executable, "-m", "rlhf_rm.evaluate", str(checkpoint), *data,
                        f"hydra.run.dir={report_dir}"], cwd=ROOT, check=True)
    report = json.loads((report_dir / "report.json").read_text())
    if Path(report["checkpoint"]).resolve() != checkpoint.resolve():
        raise RuntimeError(f"{report_dir} scored {report['checkpoint']}, not {checkpoint}")
    return report


def on_general(arm: str, seed: int, work: Path, report_dir: Path | None = None) -> Path:
    """Score an HH-only arm's saved checkpoint on experiment=general's three test sources (`rlhf_rm.evaluate
    CKPT data=general`): the comparison row of the general table. `report_dir`: an evaluate report already made."""
    row = json.loads((RESULTS / f"{arm}-seed{seed}.json").read_text())
    report = evaluate_checkpoint(arm, seed, work, "on_general", ["data=general"], report_dir)
    hh = report["by_source"]["hh_rlhf"]["accuracy"]
    if abs(hh - row["test_accuracy"]) > 1e-9:  # the same checkpoint on the same HH test pairs: the same scores
        raise RuntimeError(f"evaluate's HH accuracy {hh} differs from the row's {row['test_accuracy']}")
    out = {"arm": arm, "label": row["label"], "seed": seed, "commit": git_commit(),
           "at": datetime.now(timezone.utc).isoformat(), "checkpoint_commit": row["commit"],
           "by_source": report["by_source"], "evaluate_seconds": report["seconds"]}
    ON_GENERAL.mkdir(parents=True, exist_ok=True)
    path = ON_GENERAL / f"{arm}-seed{seed}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("arm", "seed", "by_source")}), flush=True)
    return path


def length_figures(length: dict) -> dict:
    return {key: length[key] for key in ("longer_chosen_accuracy", "longer_chosen_pairs", "shorter_chosen_accuracy",
                                         "shorter_chosen_pairs", "reward_length_correlation")}


def run_piece(arm: str, seed: int, work: Path, extra: list[str], split: str = "test") -> Path:
    label, overrides = ARMS[arm]
    if split == "tune":
        if overrides is None:
            raise SystemExit(f"--split tune: {arm} is not an rlhf_rm arm")
        # dev is the tuning split instead of the test split; the main job's train spec (experiment=quickstart,
        # applied after the data group) is the same one, so the training data is the main job's
        extra = [*extra, "data=hh_rlhf_tune"]
        work = work / "tune"
    work = work / f"{arm}-seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = datetime.now(timezone.utc)
    commit = git_commit()  # the code this piece runs (read before it starts: the tree may move meanwhile)
    if overrides is None:
        figures = run_trl_arm(str(work), seed)
    else:
        figures = run_rlhf_rm_arm(str(work), seed, overrides + extra)
    row = {"arm": arm, "label": label, "seed": seed, "commit": commit, "started": started.isoformat(),
           "device": f"{platform.machine()}, {os.cpu_count()} CPU cores",
           "loadavg_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
           "overrides": (overrides or []) + extra, "split": split, **figures}
    if split == "tune":  # the figures are tuning-split figures, not test figures
        row["tune_accuracy"] = row.pop("test_accuracy")
        row["tune_pairs"] = row.pop("test_pairs")
    out = TUNE_RESULTS if split == "tune" else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{arm}-seed{seed}.json"
    path.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row), flush=True)
    return path


def score_on_test_split(arm: str, seed: int, work: Path) -> Path:
    """Score a tuning-split piece's checkpoint on the test split (`rlhf_rm.evaluate`, hh-rlhf-harmless/dev.jsonl):
    the test row of a chosen candidate, from the very checkpoint its tuning row measured."""
    tune_row = json.loads((TUNE_RESULTS / f"{arm}-seed{seed}.json").read_text())
    report = evaluate_checkpoint(arm, seed, work / "tune", "test", [])
    rewards = report["rewards"]
    row = {**{k: tune_row[k] for k in ("arm", "label", "seed", "commit", "started", "device", "loadavg_1m",
                                       "overrides", "train_pairs", "train_seconds", "job_seconds")},
           "split": "test", "trained_in": f"tune/{arm}-seed{seed}.json", "tune_accuracy": tune_row["tune_accuracy"],
           "test_accuracy": rewards["accuracy"], "test_pairs": rewards["pairs"], "scored_by": git_commit(),
           **length_figures(report["length"]), "length_definition": OWN_TOKENS}
    path = RESULTS / f"{arm}-seed{seed}.json"
    path.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row), flush=True)
    return path


# -- merge -------------------------------------------------------------------------------------------
def mean_std(values: list[float], digits: int = 3, signed: bool = False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    sign = "+" if signed else ""
    if len(values) == 1:
        return f"{values[0]:{sign}.{digits}f}"
    return f"{statistics.mean(values):{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def row_baseline(figures: dict, pairs_key: str = "test_pairs", accuracy_key: str = "test_accuracy") -> dict | None:
    """The length-only baseline of a row's test pairs (rlhf_rm.evaluation.diagnostics.length_baseline: the better
    of "shorter wins" and "longer wins", equal lengths half) from the counts the row stored, and the row's margin
    over it; None for a row without those counts (nothing is invented for it)."""
    from rlhf_rm.evaluation.diagnostics import length_baseline

    counts = [figures.get(k) for k in ("shorter_chosen_pairs", "longer_chosen_pairs", pairs_key)]
    if any(c is None for c in counts):
        return None
    baseline = length_baseline(*counts)
    accuracy = figures.get(accuracy_key)
    return {**baseline, "margin": None if accuracy is None else accuracy - baseline["length_baseline"]}


def baseline_cells(rows: list[dict], pairs_key: str = "test_pairs",
                   accuracy_key: str = "test_accuracy") -> tuple[str, str]:
    """Table cells "baseline (rule)" and "margin over it" (mean ± std over the rows that hold the counts);
    "—" when none does."""
    baselines = [b for b in (row_baseline(r, pairs_key, accuracy_key) for r in rows) if b is not None]
    if not baselines:
        return "—", "—"
    rules = "/".join(sorted({b["length_baseline_rule"] for b in baselines}))
    values = [b["length_baseline"] for b in baselines]  # the same pairs in every seed: one value, shown once
    return (f"{mean_std(values if len(set(values)) > 1 else values[:1])} ({rules})",
            mean_std([b["margin"] for b in baselines], signed=True))


BASELINE_NOTE = ("Length-only baseline: the better of \"the shorter reply wins\" and \"the longer reply wins\" on the "
                 "same test pairs (equal lengths count half), computed from each row's stored chosen-shorter / "
                 "chosen-longer counts (rlhf_rm.evaluation.diagnostics.length_baseline); \"margin\" is test accuracy "
                 "minus it, per seed.")


OLD_DATA_MARK = "†"
OLD_DATA_NOTE = (f"{OLD_DATA_MARK}: trained on the first rows of train with the tuning split inside them (rows written "
                 "before 2026-12-06, when the main job started holding the tuning split out); the other rlhf_rm rows "
                 "train on the first 445 rows of train outside the tuning split (400 pairs).")


def arm_lines(rows: list[dict], split: str) -> list[str]:
    """One table line per arm (ARMS order): mean ± std over its seeds of the `split`'s figures."""
    by_arm: dict[str, list[dict]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], []).append(row)
    accuracy, pairs = f"{split}_accuracy", f"{split}_pairs"
    lines = [f"| run | seeds | train pairs | training loop (s) | job (s) | {split} accuracy | length-only baseline "
             "| margin over it | chosen longer | chosen shorter | reward–length r |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in [a for a in ARMS if a in by_arm and a != "general"]:
        group = sorted(by_arm[arm], key=lambda r: r["seed"])
        baseline, margin = baseline_cells(group, pairs, accuracy)
        mark = f" {OLD_DATA_MARK}" if any("split" not in r for r in group) else ""
        lines.append(
            f"| {ARMS[arm][0]}{mark} | {len(group)} ({', '.join(str(r['seed']) for r in group)}) "
            f"| {round(statistics.mean(r['train_pairs'] for r in group))} "
            f"| {statistics.mean(r['train_seconds'] for r in group):.0f} "
            f"| {mean_std([r.get('job_seconds') for r in group], 0)} "
            f"| {mean_std([r[accuracy] for r in group])} | {baseline} | {margin} "
            f"| {mean_std([r['longer_chosen_accuracy'] for r in group])} "
            f"| {mean_std([r['shorter_chosen_accuracy'] for r in group])} "
            f"| {mean_std([r['reward_length_correlation'] for r in group], 2)} |")
    return lines


def merge_tune(rows: list[dict]) -> str:
    """The candidates for the main job on the tuning split (the choice is made here, never on the test split)."""
    if not rows:
        return ""
    first = rows[0]
    return ("Choosing the main job: every candidate trains like `make train` and is scored on the tuning split "
            f"carved out of train ({first['tune_pairs']} pairs: {first['longer_chosen_pairs']} with the chosen response "
            f"longer, {first['shorter_chosen_pairs']} shorter); rows: benchmarks/results/quality/tune/*.json.\n\n"
            + "\n".join(arm_lines(rows, "tune")))


def merge(rows: list[dict], tune_rows: list[dict] = ()) -> str:
    lines = arm_lines(rows, "test")
    devices = sorted({r["device"] for r in rows})
    dates = sorted(r["started"][:10] for r in rows)
    # Pair counts by our encoder's response tokens (TRL's rows count with TRL's tokenizer and rendering).
    hh_rows = [r for r in rows if r["arm"] != "general"]  # general's dev is three sources, not the test split alone
    first = next((r for r in hh_rows if r["arm"] != "trl"), hh_rows[0] if hh_rows else {})
    notes = [f"Test split: hh-rlhf-harmless/dev.jsonl, {first.get('test_pairs', TEST_PAIRS)} pairs "
             f"({first.get('longer_chosen_pairs')} with the chosen response longer, "
             f"{first.get('shorter_chosen_pairs')} shorter, the rest equal, in rlhf_rm's response tokens). "
             "Mean ± sample std over seeds.",
             BASELINE_NOTE + baseline_caveats(hh_rows), OLD_DATA_NOTE,
             f"Device: {', '.join(devices)}; pieces run {dates[0] if dates else '?'} to {dates[-1] if dates else '?'}; "
             f"rows: benchmarks/results/quality/*.json (seed, commit, load average each)."]
    text = "\n".join(lines) + "\n\n" + "\n".join(notes)
    if tune_rows:
        text += "\n\n" + merge_tune(list(tune_rows))
    general = sorted((r for r in rows if r["arm"] == "general"), key=lambda r: r["seed"])
    if general:
        cross = [json.loads(p.read_text()) for p in sorted(ON_GENERAL.glob("*.json"))]
        text += "\n\n" + merge_general(general, cross)
    return text


def baseline_caveats(rows: list[dict]) -> str:
    """What the baseline column rests on: rows without counts ("—"), and TRL's own length count."""
    missing = sorted({f"{r['arm']}-seed{r['seed']}" for r in rows if row_baseline(r) is None})
    notes = [f" \"—\": the rows {', '.join(missing)} did not store the length counts."] if missing else []
    trl = {(r["shorter_chosen_pairs"], r["longer_chosen_pairs"]) for r in rows if r["arm"] == "trl" and row_baseline(r)}
    ours = {(r["shorter_chosen_pairs"], r["longer_chosen_pairs"]) for r in rows if r["arm"] != "trl" and row_baseline(r)}
    if trl:
        same = "the same counts as rlhf_rm's, so the same baseline" if trl == ours else "counts that differ from rlhf_rm's"
        notes.append(f" TRL's rows count each reply's tokens with the same tokenizer on the untruncated reply text: {same}.")
    return "".join(notes)


def merge_general(group: list[dict], cross: list[dict] = ()) -> str:
    """experiment=general's table: one row per dev source (each held out its own way, see the arm's doc), and
    beside it the HH-only checkpoints scored on the same sources (`on-general` rows), if any."""
    def figure(source: str, key: str, rows=group) -> str:
        return mean_std([r["by_source"].get(source, {}).get(key) for r in rows])

    cross_arm = cross[0]["arm"] if cross else None
    cross = sorted([r for r in cross if r["arm"] == cross_arm], key=lambda r: r["seed"])

    lines = [f"`experiment=general`, {len(group)} seed(s) ({', '.join(str(r['seed']) for r in group)}), "
             f"{round(statistics.mean(r['train_pairs'] for r in group))} training groups, training loop "
             f"{statistics.mean(r['train_seconds'] for r in group):.0f} s, job {statistics.mean(r['job_seconds'] for r in group):.0f} s:",
             "", "| test source | pairs | test accuracy | length-only baseline | margin over it | chosen longer "
             "| chosen shorter |" + (f" HH-only `{cross_arm}` checkpoint, same pairs ({len(cross)} seed(s)) |" if cross else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if cross else "")]
    without_counts = []
    for source in GENERAL_SOURCES:
        baseline, margin = baseline_cells([r["by_source"].get(source, {}) for r in group], "pairs", "accuracy")
        if baseline == "—":
            without_counts.append(source)
        lines.append(f"| {source} | {group[0]['by_source'].get(source, {}).get('pairs', 0)} "
                     f"| {figure(source, 'accuracy')} | {baseline} | {margin} "
                     f"| {figure(source, 'longer_chosen_accuracy')} | {figure(source, 'shorter_chosen_accuracy')} |"
                     + (f" {figure(source, 'accuracy', cross)} |" if cross else ""))
    lines.append("\nLength-only baseline and margin: as in the table above, per source"
                 + (f"; \"—\": the rows of {', '.join(without_counts)} did not store the length counts." if without_counts
                    else "."))
    lines.append(f"QA-Feedback's ties ({group[0].get('ties')}) are left out of pair accuracy; tie-aware accuracy over "
                 f"every dev pair of the three sources, ties included: "
                 f"{mean_std([r.get('tie_aware_accuracy') for r in group])}.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and score one arm with one seed; saves its row")
    run.add_argument("--arm", choices=sorted(ARMS), required=True)
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("--work", default="outputs/quality_bench")
    run.add_argument("--split", choices=("test", "tune"), default="test",
                     help="tune: score on the tuning split carved out of train (rows under results/quality/tune/)")
    run.add_argument("overrides", nargs="*", help="extra Hydra overrides for rlhf_rm arms (recorded in the row)")
    test = sub.add_parser("test", help="score a tuning-split piece's checkpoint on the test split")
    test.add_argument("--arm", choices=sorted(a for a in ARMS if ARMS[a][1] is not None), required=True)
    test.add_argument("--seed", type=int, required=True)
    test.add_argument("--work", default="outputs/quality_bench")
    again = sub.add_parser("relength", help="recompute an rlhf_rm row's length split from its checkpoint")
    again.add_argument("--arm", choices=sorted(a for a in ARMS if a != "trl"), required=True)
    again.add_argument("--seed", type=int, required=True)
    again.add_argument("--work", default="outputs/quality_bench")
    cross = sub.add_parser("on-general", help="score an HH-only arm's checkpoint on experiment=general's sources")
    cross.add_argument("--arm", choices=sorted(a for a in ARMS if a not in ("trl", "general")), default="rlhf_rm")
    cross.add_argument("--seed", type=int, required=True)
    cross.add_argument("--work", default="outputs/quality_bench")
    cross.add_argument("--report", help="an evaluate report directory of that checkpoint with data=general")
    merged = sub.add_parser("merge", help="build the table from the saved rows")
    merged.add_argument("--write-readme", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    if args.command == "run":
        run_piece(args.arm, args.seed, Path(args.work).resolve(), args.overrides, args.split)
        return 0
    if args.command == "test":
        score_on_test_split(args.arm, args.seed, Path(args.work).resolve())
        return 0
    if args.command == "relength":
        relength(args.arm, args.seed, Path(args.work).resolve())
        return 0
    if args.command == "on-general":
        on_general(args.arm, args.seed, Path(args.work).resolve(), Path(args.report) if args.report else None)
        return 0
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    tune_rows = [json.loads(p.read_text()) for p in sorted(TUNE_RESULTS.glob("*.json"))]
    text = merge(rows, tune_rows) + "\n\nCommands: `python benchmarks/quality_bench.py run --arm ARM --seed S` per piece " \
                         "(`on-general --seed S`: the HH-only checkpoint on general's sources; `run --split tune --arm ARM " \
                         "--seed S` a candidate on the tuning split, `test --arm ARM --seed S` its checkpoint on the test " \
                         "split), then " \
                         "`python benchmarks/quality_bench.py merge --write-readme`"
    print(text)
    if args.write_readme:
        train_bench.write_readme_block("quality-bench", text, "Reward quality")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
