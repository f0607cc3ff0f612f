"""``otrobust eval`` and ``otrobust audit``: load the model under test (an otrobust run, or any model), check it,
attack it, print and save. Under ``torchrun`` the test images are shared out among the processes and rank 0
alone prints and writes."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from otrobust import distributed
from otrobust.attacks.gradient import with_eot
from otrobust.attacks.table import ATTACK_SPECS, Budget, for_randomized_model
from otrobust.data import get_dataset_spec, load_dataset
from otrobust.devices import pick_device
from otrobust.errors import OtrobustError
from otrobust.evaluation import audit
from otrobust.evaluation.attack_checks import black_box_note
from otrobust.evaluation.batches import BatchCache, RunOptions, fingerprint, run_evaluation, shard_starts
from otrobust.evaluation.command_settings import AuditCommandSettings, EvalSettings
from otrobust.evaluation.evaluate import (
    ThreatModel,
    attack_budgets,
    build_attacks,
    eval_record,
    predict,
    robustbench_summary,
)
from otrobust.evaluation.surrogate import train_surrogate
from otrobust.evaluation.target import Target, check_model, load_target
from otrobust.reporting.audit_report import to_markdown, write_report
from otrobust.reporting.per_example import write_per_example
from otrobust.reporting.tables import eval_table, stage_table
from otrobust.store.checkpoint import load_model
from otrobust.store.files import (
    CHECKPOINT_DIR,
    atomic_write_text,
    cache_key,
    check_outputs_spare_inputs,
    check_writable,
)
from otrobust.store.lock import run_lock


def _quiet(*args, **kwargs) -> None:
    """``print`` on the processes other than rank 0."""


def run_eval(settings: EvalSettings) -> int:
    """``otrobust eval``: clean, per-attack and worst-case accuracy of a model on the first --n test images, each
    with a 95 % interval, under a threat model stated in every output; AutoAttack stage by stage; the JSON keeps
    every wall-clock time in one ``timing`` object, so that two evaluations differ in nothing else."""
    info = distributed.env_info()
    device, joined = distributed.setup(info, pick_device(settings.device))
    try:
        code = _evaluate(settings, info, device, print if info.is_main else _quiet)
        distributed.finish(joined)
        return code
    finally:
        distributed.teardown(joined)


def prepare(target: Target, settings, device, say) -> None:
    """The checks before any attack, and the clean accuracy, printed first."""
    x = target.test.x.to(device)
    for note in target.notes:
        say(f"note: the model: {note}")
    for warning in check_model(target.model, x, target.test.num_classes, settings.randomized):
        say(f"warning: {warning}")
    torch.manual_seed(settings.seed)  # a randomised model's printed clean accuracy repeats too
    correct = predict(target.model, x, settings.batch_size).cpu() == target.test.y
    say(f"clean accuracy: {100 * correct.float().mean():.2f}% on the first {len(target.test)} {target.dataset} "
        f"test images ({target.description})")


PATHS = ("path", "model", "weights", "data_dir", "surrogate")  # may differ from machine to machine


def _same_on_every_process(settings: dict, target: Target, info: distributed.DistInfo, what: str) -> None:
    """Under torchrun: refuse (on every process) unless all run ``what`` with the same settings on the same weights
    and test images (their paths may differ)."""
    if info.enabled:
        same = {k: v for k, v in settings.items() if k not in PATHS}
        distributed.check_same({**same, **fingerprint(target.model, target.test)}, info, what)


def _attacks(settings: EvalSettings, budget: Budget, say) -> dict:
    names = list(settings.attack)
    if settings.randomized:  # EOT everywhere: AutoAttack's rand version, and gradients averaged over draws
        names = [for_randomized_model(n) for n in names]
        say(f"randomised model: gradient attacks average {settings.eot_draws} forwards (EOT); autoattack runs as "
            f"{for_randomized_model('autoattack')}")
    attacks = build_attacks(names, budget)
    if settings.randomized:  # the reference code draws its own randomness and its own EOT
        attacks = {n: a if ATTACK_SPECS[n].reference_code else with_eot(a, settings.eot_draws)
                   for n, a in attacks.items()}
    return attacks


def _budget(settings: EvalSettings, eps: float) -> Budget:
    # One worker for a randomised model: threads drawing from one generator in turn would not repeat.
    return Budget(eps=eps, norm=settings.norm, steps=settings.steps, step_size=settings.step_size,
                  restarts=settings.restarts, schedule=settings.schedule, seed=settings.seed,
                  aa_iter=settings.aa_iter, aa_queries=settings.aa_queries,
                  workers=1 if settings.randomized else settings.attack_workers)


def _evaluate(settings: EvalSettings, info: distributed.DistInfo, device, say) -> int:
    """One evaluation; the recorded batches' folder is locked while it runs (rank 0 holds the lock), so that a
    second evaluation on the same --json or --cache is refused instead of mixing its batches with these."""
    folder = settings.cache_folder
    with run_lock(folder, "--json or --cache") if folder and info.is_main else nullcontext():
        return _evaluate_locked(settings, info, device, say)


def _evaluate_locked(settings: EvalSettings, info: distributed.DistInfo, device, say) -> int:
    target = load_target(settings, device)
    check_outputs_spare_inputs({"--json": settings.json_path, "--per-example": settings.per_example,
                                "--robustbench": settings.robustbench}, input_files(target), input_folders(target))
    prepare(target, settings, device, say)
    eps = get_dataset_spec(target.dataset).default_eps if settings.eps is None else settings.eps
    _same_on_every_process({**settings.result_settings(), "eps": eps}, target, info, "evaluation")
    budget = _budget(settings, eps)
    attacks = _attacks(settings, budget, say)
    cache = None
    if settings.cache_folder:
        recorded = {**settings.result_settings(), "eps": eps}
        key = cache_key({f"file {i}": f for i, f in enumerate(target.files)}, settings=recorded)
        folder = Path(settings.cache_folder)
        if info.is_main:  # first: it clears stale records before anyone reads them
            cache = BatchCache(folder, key, recorded, say)
        distributed.barrier(info)
        if not info.is_main:  # after rank 0; on a disk of its own a process checks its own records
            cache = BatchCache(folder, key, recorded, say, first=False)
        distributed.barrier(info)
        done = cache.done()
        if done:
            say(f"resuming: {done} finished batch{'es' if done != 1 else ''} recorded in {settings.cache_folder}")
    t0 = time.perf_counter()
    share = sum(min(settings.batch_size, len(target.test) - s)
                for s in shard_starts(len(target.test), settings.batch_size, info))
    with _ProgressBar(settings, list(attacks), share) as progress:
        result = run_evaluation(target.model, target.test, attacks, labels=settings.labels,
                                batch_size=settings.batch_size, device=device, seed=settings.seed,
                                options=RunOptions(cache=cache, info=info, progress=progress))
    seconds = time.perf_counter() - t0
    if not info.is_main:
        return 0
    threat = ThreatModel(norm=settings.norm, eps=eps, n=len(target.test), labels=settings.labels,
                         seed=settings.seed, dataset=target.dataset, steps=settings.steps,
                         restarts=settings.restarts, schedule=settings.schedule, step_size=budget.step_size,
                         autoattack_standard=settings.aa_standard, randomized=settings.randomized)
    budgets = attack_budgets(list(attacks), budget)
    written = _write_outputs(settings, target, result, threat, budgets, seconds, eps)  # first: printing may fail
    _print_eval(result, threat, budgets, seconds, settings.aa_standard)
    for path in written:
        print(f"wrote {path}")
    return 0


RUN_FILES = ("config.json", "metrics.jsonl", "provenance.jsonl")  # a run directory's own files, beside checkpoints/


def input_files(target: Target) -> list[Path]:
    """The files the model under test comes from, and for a run directory's checkpoint the files of that run (an
    evaluation written there earlier is not one of them)."""
    files = list(target.files)
    ckpt = target.checkpoint
    if ckpt is not None and ckpt.parent.name == CHECKPOINT_DIR:
        files += [ckpt.parent.parent / name for name in RUN_FILES] + sorted(ckpt.parent.glob("*.safetensors"))
    return files


def input_folders(target: Target) -> list[Path]:
    """The folder of the test images, when they are read from disk."""
    return [Path(target.data_dir).expanduser()] if target.data_dir else []


class _ProgressBar:
    """A progress bar over the images this process attacks (the attacks' names, images done, an ETA), on a terminal
    unless --no-progress."""

    def __init__(self, settings: EvalSettings, attacks: list[str], total: int):
        self.on, self.desc, self.total, self.bar = settings.progress, ", ".join(attacks) or "clean", total, None

    def __call__(self, images: int) -> None:
        self.bar.update(images)

    def __enter__(self):
        if self.on is False:
            return None
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc=self.desc, unit="img", leave=False,
                        disable=None if self.on is None else not self.on)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_eval(result, threat: ThreatModel, budgets: dict[str, str], seconds: float, aa_standard: bool) -> None:
    """The terminal report: the table (with each attack's budget), AutoAttack stage by stage, the worst case,
    notes and warnings."""
    print(eval_table(result.summary(), threat, budgets, result.seconds))
    for name, stages in result.stages.items():
        if len(stages) <= 2:  # clean and one attack: the table above says it all
            continue
        robust = {stage: int(correct.sum()) for stage, correct in stages.items()}
        print(f"\n{name}, attack by attack (each on the images the ones before it left standing):\n")
        print(stage_table(robust, result.n))
        note = black_box_note(robust)
        if note:
            print(f"warning: {note}")
    label_text = ("PREDICTED labels: the paper's protocol, not robustness against the true labels"
                  if threat.labels == "predicted" else "true labels")
    if result.per_attack:
        lo, hi = result.interval("worst")
        print(f"\nrobust accuracy, worst case over {', '.join(result.per_attack)} ({label_text}): "
              f"{100 * result.accuracy('worst'):.2f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    if not aa_standard and any(ATTACK_SPECS[n].reference_code for n in result.per_attack):
        print("note: --aa-iter/--aa-queries make this a cheaper run, NOT standard AutoAttack")
    for name, texts in result.warnings.items():
        for text in texts:
            print(f"warning from {name}: {text}")
    print(f"time: {seconds:.1f} s")


def _write_outputs(settings: EvalSettings, target: Target, result, threat: ThreatModel, budgets: dict, seconds: float,
                   eps: float) -> list[str]:
    """Write --json, --per-example and --robustbench (those asked for); returns their paths."""
    if settings.json_path:
        record = {"checkpoint": str(target.checkpoint) if target.checkpoint else None, "model": target.description,
                  "dataset": target.dataset, "architecture": target.architecture, **eval_record(result, threat),
                  "budgets": budgets,
                  # wall-clock times only here, so that two evaluations of one model differ in nothing else
                  "timing": {"seconds": round(seconds, 3),
                             "attack_seconds": {k: round(v, 3) for k, v in result.seconds.items()}}}
        atomic_write_text(Path(settings.json_path), json.dumps(record, indent=2))
    if settings.per_example:
        write_per_example(Path(settings.per_example), result, target.test.y)
    if settings.robustbench:
        summary = robustbench_summary(result, dataset=target.dataset, eps=eps, norm=settings.norm,
                                      architecture=target.architecture, name=_run_name(target))
        if not settings.aa_standard:
            summary["unreliable"] = True
            summary["footnote"] += "; NOT standard AutoAttack (reduced iterations or queries)"
        atomic_write_text(Path(settings.robustbench), json.dumps(summary, indent=2))
    return [path for path in (settings.json_path, settings.per_example, settings.robustbench) if path]


def _run_name(target: Target) -> str:
    """The run directory's name for ``RUN/checkpoints/best.safetensors``, else the file's stem or the factory."""
    ckpt = target.checkpoint
    if ckpt is None:
        return target.architecture
    return ckpt.parent.parent.name if ckpt.parent.name == CHECKPOINT_DIR else ckpt.stem


def run_audit(settings: AuditCommandSettings) -> int:
    """``otrobust audit``: the evaluation sanity checks; writes the report and returns 1 if any check fails. Under
    torchrun every attack's batches are shared out among the processes, and rank 0 alone prints and writes."""
    info = distributed.env_info()
    device, joined = distributed.setup(info, pick_device(settings.device))
    try:
        code = _audit(settings, info, device)
        distributed.finish(joined)
        return code
    finally:
        distributed.teardown(joined)


def _audit(settings: AuditCommandSettings, info: distributed.DistInfo, device) -> int:
    say = print if info.is_main else _quiet
    target = load_target(settings, device)
    prepare(target, settings, device, say)
    eps = get_dataset_spec(target.dataset).default_eps if settings.eps is None else settings.eps
    budget = settings.budget(eps)
    recorded = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("out", "device")}
    _same_on_every_process({**recorded, "eps": eps}, target, info, "audit")
    out = _audit_folder(settings, target)
    check_writable(out)  # before the checks run (on every process, so that all stop): the verdict must not be lost

    def log(text: str) -> None:
        if info.is_main:
            print(text, file=sys.stderr, flush=True)

    surrogate = load_model(settings.surrogate, device) if settings.surrogate else _surrogate(target, settings,
                                                                                              budget, device, log)
    report = audit.audit_model(target.model, target.test, budget, surrogate=surrogate, device=device, log=log,
                               subject=audit.Subject(target.dataset, target.description), info=info)
    if not info.is_main:
        return 1 if report.failed else 0
    verdict = to_markdown(report).split("\n## ")[0].rstrip()
    try:  # first: printing (to a closed pipe, in an encoding without "ε") must not lose the finished audit
        write_report(report, out)
    except OtrobustError:
        print(verdict)  # a failed write (a full disk) must not lose the verdict either
        raise
    print(verdict)
    print(f"\nreport written to {out}/audit.md")
    return 1 if report.failed else 0


def _surrogate(target: Target, settings: AuditCommandSettings, budget, device, log):
    """A model of the same architecture, freshly initialised and trained normally for a few epochs (the transfer
    check's source), or None without training images."""
    try:
        train_set = load_dataset(target.dataset, "train", target.data_dir, size=2000 if settings.quick else 5000)
    except OtrobustError as exc:
        log(f"no transfer surrogate: {exc}")
        return None
    log(f"training a standard {target.architecture} surrogate on {len(train_set)} {target.dataset} training images")
    torch.manual_seed(settings.seed)  # its initial weights too: the same surrogate on every run and process
    return train_surrogate(target.fresh(), train_set, budget.surrogate_epochs, seed=settings.seed, device=device)


def _audit_folder(settings: AuditCommandSettings, target: Target) -> Path:
    """--out, else RUN_DIR/audit for a run directory, else audit-NAME beside a checkpoint file (or here, for
    --model)."""
    if settings.out:
        return Path(settings.out)
    if target.checkpoint is None:
        return Path(f"audit-{target.architecture}")
    if Path(settings.path).is_dir():
        return Path(settings.path) / "audit"
    return target.checkpoint.parent / f"audit-{target.checkpoint.stem}"
