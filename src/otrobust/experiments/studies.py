"""Experiments of our own, beyond the paper's, run the same way: ``otrobust reproduce NAME``.

The MNIST study asks whether GOT beats its base method (docs/results-mnist.md).
"""

from __future__ import annotations

from otrobust.experiments.presets import (
    EVAL_NOTE,
    MNIST_EPS,
    MNIST_SETTINGS,
    NAT_PGD_AA,
    PAPER_WARMUP_EPOCHS,
    TABLE1_NUMBERS,
    TABLE6,
    paper_sweep,
    paper_values,
)
from otrobust.experiments.spec import Evaluation, Preset, Run, Tuning

# Table 1's setting on the 20,000 MNIST training images available offline, trained until the baselines plateau:
# 20 epochs with a 10-step training attack and the step schedule (lr x 0.1 after epochs 10 and 15, every arm
# alike), in float32 so that an arm means the same on every processor. The study runs unit by unit (one run's
# training, evaluations and audit), over several sittings; docs/results-mnist.md has the command and the cost.
STUDY_EPOCHS = 20
STUDY_FINETUNE_EPOCHS = 4
STUDY_PGD_N = None  # PGD-40 on all 10,000 test images, every model
STUDY_AA_N = 500  # standard AutoAttack on the first 500, every seed of every arm: each GOT arm gets an interval
STUDY_SWEEP_N = 1000  # test images per eps sweep (seed 0 of every arm)
STUDY_AUDIT_N = 200  # the full audit (not its CPU budget), seed 0 of every arm
STUDY = {"dataset": "mnist", "model": "cw-cnn", "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "eps": 0.3,
         "steps": 10, "epochs": STUDY_EPOCHS, "schedule": "step", "val_size": 1000, "val_steps": 10, "amp": "off"}
FINETUNE = {"epochs": STUDY_FINETUNE_EPOCHS, "eps_warmup_epochs": 0.0}
STUDY_MAIN = ("trades", "got-trades-lm", "pgd-at", "got-pgd-lm")
# Tuning on seed 0 and the validation split only: as many trials for the base method as for GOT (the defaults,
# trained as the main arms, are the third trial of each).
STUDY_TRIALS = (
    Run("tune/got-trades-lm-beta0.3", "GOT-TRADES-LM, beta 0.3 (trial)",
        {**STUDY, "method": "got-trades-lm", "ot_weight": 0.3}, seeds=(0,)),
    Run("tune/got-trades-lm-beta3", "GOT-TRADES-LM, beta 3 ramped over 5 epochs (trial)",
        {**STUDY, "method": "got-trades-lm", "ot_weight": 3.0, "ot_warmup_epochs": 5.0}, seeds=(0,)),
    Run("tune/trades-alpha3", "TRADES, alpha 3 (trial)", {**STUDY, "method": "trades", "adv_weight": 3.0},
        seeds=(0,)),
    Run("tune/trades-alpha9", "TRADES, alpha 9 (trial)", {**STUDY, "method": "trades", "adv_weight": 9.0},
        seeds=(0,)),
)
STUDY_RUNS = (
    Run("trades", "TRADES", {**STUDY, "method": "trades"}, seeds=(0, 1, 2)),
    Run("got-trades-lm", "GOT-TRADES-LM", {**STUDY, "method": "got-trades-lm"}, baseline="trades", seeds=(0, 1, 2)),
    # The PGD pair has a fourth seed: on three, GOT-PGD-LM led on every seed but neither of its claims was resolved,
    # with the seeds' spread keeping the PGD-40 interval open. The fourth seed is a second look at the comparison,
    # so its claims are judged at 97.5 % (looks=2), not 95 %.
    Run("pgd-at", "PGD-AT", {**STUDY, "method": "pgd-at"}, seeds=(0, 1, 2, 3)),
    Run("got-pgd-lm", "GOT-PGD-LM", {**STUDY, "method": "got-pgd-lm"}, baseline="pgd-at", seeds=(0, 1, 2, 3),
        looks=2),
    *STUDY_TRIALS,
    Run("paper/got-trades-lm", "GOT-TRADES-LM, beta = 10 (paper)",
        {**STUDY, "method": "got-trades-lm", "ot_weight": 10.0, "ot_warmup_epochs": PAPER_WARMUP_EPOCHS},
        baseline="trades", seeds=(0, 1, 2)),
    Run("ft/trades", f"TRADES + {STUDY_FINETUNE_EPOCHS} epochs TRADES", {**STUDY, **FINETUNE, "method": "trades"},
        init_from="trades", seeds=(0, 1, 2)),
    Run("ft/got-trades-lm-lr1e-6", f"TRADES + {STUDY_FINETUNE_EPOCHS} epochs GOT-TRADES-LM, beta 10, lr 1e-6",
        {**STUDY, **FINETUNE, "method": "got-trades-lm", "ot_weight": 10.0, "lr": 1e-6},
        baseline="ft/trades", init_from="trades", seeds=(0, 1, 2)),
    Run("ft/got-trades-lm", f"TRADES + {STUDY_FINETUNE_EPOCHS} epochs GOT-TRADES-LM, beta 10, lr 1e-3",
        {**STUDY, **FINETUNE, "method": "got-trades-lm", "ot_weight": 10.0},
        baseline="ft/trades", init_from="trades", seeds=(0, 1, 2)),
    # Each tuning's best trial on fresh seeds (1-3, never the tuning seed): GOT-TRADES-LM's default beta = 1 (tied
    # with beta 3, the tie going to the default) against TRADES at alpha 3. Seeds 1 and 2 of the GOT arm are the
    # main arm's runs, trained once.
    Run("tuned/trades", "TRADES, tuned (alpha 3)", {**STUDY, "method": "trades", "adv_weight": 3.0},
        seeds=(1, 2, 3)),
    Run("tuned/got-trades-lm", "GOT-TRADES-LM, tuned (beta 1)", {**STUDY, "method": "got-trades-lm"},
        baseline="tuned/trades", seeds=(1, 2, 3)),
)
STUDY_ARMS = tuple(r.name for r in STUDY_RUNS if r not in STUDY_TRIALS)
MNIST_STUDY = Preset(
    name="mnist-study",
    description="MNIST, CW CNN, eps = 0.3, trained to a plateau on several seeds: does GOT beat its base method? "
                "PGD-AT, TRADES, GOT-PGD-LM and GOT-TRADES-LM with otrobust's defaults, GOT and TRADES tuned with "
                "the same number of trials, the paper's beta = 10, and fine-tuning from TRADES; PGD-40 on the whole "
                "test set, AutoAttack stage by stage, the full audit, and eps sweeps under both label protocols",
    reference="Table 1 and Table 6, re-examined",
    runs=STUDY_RUNS,
    evaluations=(
        Evaluation("pgd", ("pgd",), steps=(40,), step_size=0.01, n=STUDY_PGD_N),
        Evaluation("autoattack", ("autoattack",), steps=(), n=STUDY_AA_N, runs=STUDY_ARMS),
        Evaluation("eps-sweep", ("pgd",), eps=MNIST_EPS, steps=(40,), n=STUDY_SWEEP_N, runs=STUDY_ARMS, seeds=(0,)),
        Evaluation("eps-sweep-fixed-step", ("pgd",), eps=MNIST_EPS, steps=(40,), n=STUDY_SWEEP_N, step_size=0.01,
                   runs=STUDY_ARMS, seeds=(0,)),
        Evaluation("eps-sweep-predicted", ("pgd",), eps=MNIST_EPS, steps=(40,), n=STUDY_SWEEP_N, step_size=0.01,
                   labels="predicted", runs=STUDY_ARMS, seeds=(0,)),
    ),
    paper_settings=MNIST_SETTINGS,
    paper_results=(*paper_values({k: TABLE1_NUMBERS[k] for k in STUDY_MAIN}, NAT_PGD_AA),
                   *paper_sweep({k: TABLE6[k] for k in STUDY_MAIN}, MNIST_EPS, 40)),
    notes=(EVAL_NOTE,
           "all 20,000 MNIST training images available here (the last 1,000 held out for validation), not 60,000; "
           f"{STUDY_EPOCHS} epochs with a {STUDY['steps']}-step training attack and lr x 0.1 after epochs "
           f"{STUDY_EPOCHS // 2} and {3 * STUDY_EPOCHS // 4} (the paper: 100 epochs, 40 steps), float32",
           "the four main arms use otrobust's defaults (beta = 1, an eps warm-up over the first 2 epochs); the "
           f"paper arm sets beta = 10, ramped in over {PAPER_WARMUP_EPOCHS:g} epochs (from the first step it "
           "collapses the model, docs/method.md §5)",
           "tuning on seed 0, selected by validation PGD accuracy only: GOT-TRADES-LM at beta 0.3, 1 (the default) "
           "and 3 (ramped over 5 epochs); TRADES at alpha 3, 6 (the default) and 9",
           f"fine-tuning: {STUDY_FINETUNE_EPOCHS} more epochs from each seed's final TRADES checkpoint, of TRADES "
           "(the control, same extra budget) and of GOT-TRADES-LM at beta = 10 with lr 1e-6 (the paper's) and "
           "1e-3, each with the step schedule; GOT is compared with the control, not with its starting checkpoint",
           "PGD-40 with the paper's step 0.01 against the true labels on all 10,000 test images, every model; "
           f"standard AutoAttack on the first {STUDY_AA_N} for every seed of every arm (not the tuning trials); "
           f"the eps sweeps on the first {STUDY_SWEEP_N} for seed 0, with the true labels (step "
           "2.5 * eps / 40, and the paper's fixed 0.01) and with the paper's predicted labels and step 0.01; the "
           f"full audit on the first {STUDY_AUDIT_N} for seed 0 of every arm",
           "Table 1's paper numbers are for 60,000 images and 100 epochs"),
    plots=("curves", "plateau", "tuning", "label-sweep", "claims"),
    audit_seeds=(0,),
    audit_runs=STUDY_ARMS,
    audit_n=STUDY_AUDIT_N,
    tunings=(Tuning("GOT-TRADES-LM", ("got-trades-lm", "tune/got-trades-lm-beta0.3", "tune/got-trades-lm-beta3"),
                    tuned="tuned/got-trades-lm"),
             Tuning("TRADES", ("trades", "tune/trades-alpha3", "tune/trades-alpha9"), tuned="tuned/trades")),
    plateau_points=1.0,
)

STUDIES: dict[str, Preset] = {p.name: p for p in (MNIST_STUDY,)}
