"""A preset's results as rows, Markdown and figures: results.csv, results.md and figures/ (no computation
beyond arranging what the evaluations and audits returned)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from otrobust.data import get_dataset_spec
from otrobust.experiments import study
from otrobust.experiments.claims import claims, judge, pair_name
from otrobust.experiments.planning import FULL_AUDIT_N, PlannedRun
from otrobust.experiments.presets import DATASET_LABELS, PAPER_ONLY_LABELS
from otrobust.experiments.records import AuditSummary, ResultRow
from otrobust.experiments.spec import SMOKE, SWEEP_ATTACK, Evaluation, Preset
from otrobust.reporting import plots
from otrobust.reporting.tables import format_eps, markdown_table

RESULT_FIELDS = ("preset", "scale", "run", "seed", "label", "dataset", "model", "method", "evaluation", "metric",
                 "labels", "eps", "steps", "step_size", "n", "accuracy", "ci_low", "ci_high", "paper", "diff", "audit",
                 "note")


def paper_value(preset: Preset, run: str, metric: str, eps: float | None, steps: int | None,
                train_eps: float | None) -> float | None:
    """The paper's number for this row: same run and metric, and the same sweep point if it is one."""
    for v in preset.paper_results:
        if v.run != run or v.metric != metric:
            continue
        want_eps = v.eps if v.eps is not None else (train_eps if metric != "clean" else None)
        if want_eps is not None and (eps is None or abs(eps - want_eps) > 1e-6):
            continue
        if v.steps is not None and v.steps != steps:
            continue
        return v.value
    return None


def display_names(planned: list[PlannedRun]) -> dict[str, str]:
    """Run name -> the paper's label, qualified by the name's prefix where labels repeat."""
    labels = [run.label for run in {p.run.name: p.run for p in planned}.values()]  # one per run, not per seed
    return {p.run.name: p.run.label if labels.count(p.run.label) == 1 or "/" not in p.run.name
            else f"{p.run.label} [{p.run.name.split('/')[0]}]" for p in planned}


def result_row(preset: Preset, scale: str, p: PlannedRun, row: ResultRow, source_eps: float,
               audit: str | None = None) -> dict[str, Any]:
    """A results.csv row (the CSV's dictionary): the evaluation row with the run's identity, the paper's number and
    the difference, and the run's audit verdict."""
    paper = paper_value(preset, p.run.name, row.metric, row.eps, row.steps, source_eps)
    diff = None if paper is None or row.accuracy is None else row.accuracy - paper
    out = {"preset": preset.name, "scale": scale, "run": p.run.name, "seed": p.config.seed, "label": p.run.label,
           "dataset": p.config.dataset, "model": p.config.model, "method": p.config.method, **row.to_json(),
           "paper": paper, "diff": diff, "audit": audit or "not audited"}
    return {k: out.get(k) for k in RESULT_FIELDS}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if digits is None else f"{v:.{digits}f}"
    return str(v)


AUDIT_MARKS = {"pass": "pass", "warn": "warn", "fail": "**FAIL**", "not audited": "not audited"}


def results_markdown(preset: Preset, scale: str, planned: list[PlannedRun], rows: list[dict[str, Any]],
                     figures: list[Path], out_dir: Path, audits: list[AuditSummary] | None = None) -> str:
    names = display_names(planned)
    parts = [f"# {preset.name}: {preset.reference} ({scale} scale)", "", preset.description, ""]
    failed = [a for a in audits or [] if a.verdict == "fail"]
    if audits:
        parts += [f"**Audit**: {len(audits) - len(failed)} of {len(audits)} runs pass the evaluation audit with no "
                  "fail" + (f"; **FAILED: {', '.join(names.get(a.run, a.run) for a in failed)}** — do not "
                            "trust their robust accuracy" if failed else "") + " (see *Audit* below).", ""]
    if scale == "smoke":
        parts += ["> **Smoke scale**: tiny subsets, one epoch, few attack steps, a tiny model where the paper's is "
                  "large, and a cheap, non-standard AutoAttack. It checks that the pipeline runs; its numbers are "
                  "**not comparable** with the paper's.", ""]
    for note in sorted({p.note for p in planned if p.note}):
        parts += [f"> **Stand-in data**: {note} (no --data-dir was given); only for the smoke scale.", ""]
    parts += ["Accuracies in %, against the true labels; 95 % Wilson intervals; `paper` as printed in the paper.",
              ""]
    multi_seed = len({r.get("seed") for r in rows}) > 1
    for ev in dict.fromkeys(r["evaluation"] for r in rows):
        body = [[names.get(r["run"], r["run"]) + (f" (seed {r['seed']})" if multi_seed else ""), r["metric"],
                 format_eps(r["eps"]), _fmt(r["steps"]), r["n"],
                 _fmt(r["accuracy"]), "–" if r["ci_low"] is None else f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]",
                 _fmt(r["paper"]), "–" if r["diff"] is None else f"{r['diff']:+.2f}",
                 AUDIT_MARKS.get(r["audit"], r["audit"]), r["note"] or ""]
                for r in rows if r["evaluation"] == ev]
        parts += [f"## Evaluation `{ev}`", "", markdown_table(["run", "metric", "ε", "steps", "n", "ours", "95% CI",
                                                       "paper", "ours − paper", "audit", "note"], body), ""]
    run_names = {p.run.name for p in planned}
    only = [[PAPER_ONLY_LABELS.get(v.run.split("/")[-1], v.run) + (f" [{v.run.split('/')[0]}]" if "/" in v.run
                                                                   else ""), v.metric, format_eps(v.eps),
             _fmt(v.steps), _fmt(v.value)] for v in preset.paper_results if v.run not in run_names]
    if only:
        parts += ["## Paper only (no run here)", "", markdown_table(["row", "metric", "ε", "steps", "paper"], only), ""]
    settings = [[names[p.run.name], p.config.dataset, p.config.model, p.config.method, p.config.epochs,
                 p.config.train_size or "all", p.config.optimizer, _fmt(p.config.lr, None), format_eps(p.config.eps),
                 p.config.steps, _fmt(p.config.ot_weight, None), _fmt(p.config.ot_warmup_epochs, None),
                 f"`{p.run_dir.name}`"] for p in planned]
    parts += ["## Our settings", "", markdown_table(["run", "dataset", "model", "method", "epochs", "train images",
                                             "optimiser", "lr", "ε", "attack steps", "β", "β warm-up (epochs)",
                                             "run folder (under runs/)"], settings), ""]
    parts += ["## The paper's settings", "", markdown_table(["setting", "value"],
                                                     [[k, str(v)] for k, v in preset.paper_settings.items()]), ""]
    parts += ["## Notes", ""] + [f"- {n}" for n in preset.notes] + [""]
    if audits:
        budget = (f"smoke budget: {SMOKE['audit_n']} test images, {SMOKE['audit']}" if scale == "smoke" else
                  f"{FULL_AUDIT_N} test images, PGD-20 x 5 restarts, standard AutoAttack")
        body = [[names.get(a.run, a.run), AUDIT_MARKS[a.verdict], a.passed, a.warned, a.failed,
                 ", ".join(a.failed_checks) or "–", f"`{a.report.split('/audit-')[0]}/`"]
                for a in audits]
        parts += ["## Audit", "", f"`otrobust audit` on each run's best checkpoint ({budget}); a fail means an "
                  "evaluation failure mode (e.g. gradient masking) was found.", "",
                  markdown_table(["run", "verdict", "pass", "warn", "fail", "failed checks", "audit-*/audit.md in"],
                                 body), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{f.stem}]({f.relative_to(out_dir).as_posix()})" for f in figures
                                       if f.suffix == ".png"] + [""]
    return "\n".join(parts)


def _panel(p: PlannedRun) -> str:
    dataset = p.run.config.get("dataset", p.config.dataset)
    label = DATASET_LABELS.get(dataset, dataset)
    return f"{label} ({p.config.dataset} stand-in)" if p.note else label


def _sweep_panels(planned, rows, evaluation: str, x: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    names, panels = display_names(planned), {}
    for p in planned:
        pts = [(r[x], r["accuracy"]) for r in rows if r["run"] == p.run.name and r["evaluation"] == evaluation
               and r["metric"] == SWEEP_ATTACK and r["accuracy"] is not None]
        if pts:
            panels.setdefault(_panel(p), {})[names[p.run.name]] = pts
    return panels


def _paper_panels(preset: Preset, planned, x: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    names, panels = display_names(planned), {}
    for p in planned:
        pts = [(getattr(v, x), v.value) for v in preset.paper_results if v.run == p.run.name
               and getattr(v, x) is not None and (x == "eps" or v.eps is None)]
        if pts:
            panels.setdefault(_panel(p), {})[names[p.run.name]] = pts
    return panels


Curves = dict[str, dict[str, list[tuple[int, float]]]]  # panel -> line label -> [(epoch, validation PGD %)]


def _val_pgd(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(m["epoch"], 100 * m["val_pgd"]) for m in history if isinstance(m.get("val_pgd"), (int, float))]


def curve_histories(preset: Preset, planned: list[PlannedRun], histories: dict[tuple[str, int], list],
                    names: dict[str, str]) -> dict[str, list]:
    """The first seed's epochs of every run but the tuning trials (the tuning figure has them); a fine-tuning run's
    epochs are numbered on from its parent's last, so that its curve continues the parent's."""
    trials = {run for t in preset.tunings for run in t.trials[1:]}  # the first is the default: a main arm
    curves = {}
    for p in planned:
        history = histories.get((p.run.name, 0))
        if p.seed_index != 0 or history is None or p.run.name in trials:
            continue
        start = len(histories.get((p.run.init_from, 0), [])) if p.run.init_from else 0
        curves[names[p.run.name]] = [{**m, "epoch": m.get("epoch", i + 1) + start} for i, m in enumerate(history)]
    return curves


def _plateau_panels(preset: Preset, planned: list[PlannedRun], histories: dict[tuple[str, int], list],
                    names: dict[str, str]) -> Curves:
    """A panel per run trained from scratch that takes part in a comparison, a line per seed."""
    compared = {r.name for r in preset.runs if r.baseline} | {r.baseline for r in preset.runs if r.baseline}
    panels: Curves = {}
    for p in planned:
        if p.run.name in compared and not p.run.init_from and (p.run.name, p.seed_index) in histories:
            panels.setdefault(names[p.run.name], {})[f"seed {p.config.seed}"] = _val_pgd(
                histories[(p.run.name, p.seed_index)])
    return panels


def _tuning_panels(preset: Preset, histories: dict[tuple[str, int], list], names: dict[str, str]) -> Curves:
    """A panel per tuning (``preset.tunings``), a line per trial with a record (seed index 0)."""
    return {t.name: {names.get(run, run): _val_pgd(histories[(run, 0)]) for run in t.trials if (run, 0) in histories}
            for t in preset.tunings}


def make_figures(preset: Preset, scale: str, planned: list[PlannedRun], rows: list[dict[str, Any]],
                 evaluations: list[Evaluation], fig_dir: Path, histories: dict[tuple[str, int], list[dict[str, Any]]],
                 features: dict[str, dict[str, Any]]) -> list[Path]:
    """The preset's figures (``preset.plots``) from its results rows, the per-epoch metrics (``histories``, per run
    name and seed index) and the first seed's t-SNE features (``features``, per run name: arrays by key); the
    claims' figure is :func:`claims_figure`."""
    names, files = display_names(planned), []
    title = _figure_title(preset, scale)
    if "curves" in preset.plots and (curves := curve_histories(preset, planned, histories, names)):
        files += plots.plot_learning_curves(curves, fig_dir / "learning_curves", title=f"Learning curves, {title}")
    if "plateau" in preset.plots and (panels := _plateau_panels(preset, planned, histories, names)):
        files += plots.plot_plateau(panels, fig_dir / "plateau",
                                    title=f"Validation PGD accuracy by epoch, every seed (last three shaded), {title}")
    if "tuning" in preset.plots and (panels := _tuning_panels(preset, histories, names)):
        files += plots.plot_plateau(panels, fig_dir / "tuning", last=0,
                                    title=f"Tuning trials: validation PGD accuracy by epoch (seed 0), {title}")
    if "eps" in preset.plots:
        paper = _paper_panels(preset, planned, "eps") if scale == "full" else None
        files += plots.plot_accuracy_vs_eps(_sweep_panels(planned, rows, "eps-sweep", "eps"),
                                            fig_dir / "accuracy_vs_eps", title=f"Robust accuracy vs ε, {title}",
                                            paper=paper)
    if "steps" in preset.plots:
        files += plots.plot_accuracy_vs_steps(_sweep_panels(planned, rows, "steps-sweep", "steps"),
                                              fig_dir / "accuracy_vs_steps",
                                              title=f"Robust accuracy vs PGD steps, {title}")
    if "label-sweep" in preset.plots:
        panels = study.sweep_panels(study.seed_summary(rows), names, LABEL_SWEEPS)
        files += plots.plot_accuracy_vs_eps(panels, fig_dir / "accuracy_vs_eps_label_protocols",
                                            title=f"Robust accuracy vs ε under two label protocols, {title}")
    if "beta" in preset.plots:
        lines: dict[str, list[tuple[float, float]]] = {}
        for p in planned:
            for r in rows:
                if r["run"] == p.run.name and r["accuracy"] is not None:
                    key = "clean" if r["metric"] == "clean" else f"{r['metric'].upper()}-{r['steps']}"
                    lines.setdefault(key, []).append((p.config.ot_weight, r["accuracy"]))
        files += plots.plot_accuracy_vs_beta({_panel(planned[0]): lines}, fig_dir / "accuracy_vs_beta",
                                             title=f"Accuracy vs OT weight β, {title}")
    if "tsne" in preset.plots:
        panels = {names[p.run.name]: features[p.run.name] for p in planned
                  if p.seed_index == 0 and p.run.name in features}
        spec = get_dataset_spec(planned[0].config.dataset)
        files += plots.plot_tsne(panels, fig_dir / "tsne", class_names=spec.class_names or None,
                                 title=f"t-SNE of penultimate features, clean (o) and PGD (x), {title}")
    return files


LABEL_SWEEPS = {"eps-sweep": "true labels, PGD-40, step 2.5·ε/40",
                "eps-sweep-fixed-step": "true labels, PGD-40, step 0.01 (paper's step)",
                "eps-sweep-predicted": "predicted labels, PGD-40, step 0.01 (paper's protocol)"}


def _figure_title(preset: Preset, scale: str) -> str:
    return f"{preset.reference}" + (" — smoke scale, not comparable" if scale == "smoke" else "")


def claims_figure(preset: Preset, scale: str, planned: list[PlannedRun], rows: list[dict[str, Any]],
                  correct: study.Correctness | None, fig_dir: Path) -> list[Path]:
    """The preset's ``claims`` figure: each of the paper's claims against our paired difference (intervals widened
    by the images' noise where ``correct`` has each image's correctness). No files when the preset does not draw it
    or no claim has a measurement yet."""
    found = _claim_estimates(preset, rows, correct, display_names(planned)) if "claims" in preset.plots else []
    if not found:
        return []
    title = f"The paper's claims against our paired differences, {_figure_title(preset, scale)}"
    return plots.plot_estimates(found, fig_dir / "claims", x_label="run − baseline (percentage points)",
                                target_label="the paper's claimed gain", title=title)


def _claim_estimates(preset: Preset, rows: list[dict[str, Any]], correct: study.Correctness | None,
                     names: dict[str, str]) -> list[plots.Estimate]:
    return [plots.Estimate(label=f"{pair_name(v.claim, names)}\n{v.claim.label}", mean=v.mean,
                           low=v.ci_low, high=v.ci_high, points=v.diffs, target=v.claim.gain,
                           note=f"{v.verdict}\n({len(v.seeds)} seeds, {100 * v.claim.level:g} %)")
            for v in judge(claims(preset), rows, correct) if v.mean is not None]


def with_study(markdown: str, preset: Preset, planned: list[PlannedRun], rows: list[dict[str, Any]],
               correct: study.Correctness | None = None) -> str:
    """results.md with the multi-seed summary and paired differences (experiments.study; ``correct`` widens their
    intervals by the images' noise) after its introduction."""
    paper = {(v.run, v.metric): v.value for v in preset.paper_results if v.eps is None and v.steps is None}
    text = study.study_markdown(study.seed_summary(rows),
                                study.paired_differences(rows, {r.name: r.baseline for r in preset.runs if r.baseline},
                                                         correct),
                                display_names(planned), paper)
    head, sep, rest = markdown.partition("\n## ")
    return f"{head}\n{text}\n## {rest}" if sep else f"{markdown}\n{text}"
