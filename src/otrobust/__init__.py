"""otrobust: adversarial training with an optimal-transport regulariser (GOT), evaluated honestly."""

__version__ = "0.1.0"

from otrobust.attacks.gradient import PGD, TradesAdversary, best_iterate, bn_mode, fgsm, last_iterate  # noqa: E402
from otrobust.attacks.norms import project  # noqa: E402
from otrobust.attacks.table import ATTACK_SPECS, AttackSpec, Budget  # noqa: E402
from otrobust.data import DATASETS, ImageData, load_dataset  # noqa: E402
from otrobust.errors import OtrobustError  # noqa: E402
from otrobust.evaluation.audit import audit_model  # noqa: E402
from otrobust.evaluation.audit_types import AuditReport, AuditSettings  # noqa: E402
from otrobust.evaluation.evaluate import EvalResult, build_attacks, evaluate_model  # noqa: E402
from otrobust.models import MODELS, LatentHook, LatentModel, create_model, latent_forward  # noqa: E402
from otrobust.ot import GOTRegularizer, ground_cost, label_mask, semidual_ot, sinkhorn_ot  # noqa: E402
from otrobust.store.checkpoint import load_model  # noqa: E402
from otrobust.training.config import TrainConfig  # noqa: E402
from otrobust.training.method_registry import METHOD_SPECS, MethodSpec  # noqa: E402
from otrobust.training.methods import METHODS  # noqa: E402

__all__ = [
    "ATTACK_SPECS",
    "AttackSpec",
    "AuditReport",
    "AuditSettings",
    "Budget",
    "DATASETS",
    "METHODS",
    "METHOD_SPECS",
    "MODELS",
    "EvalResult",
    "GOTRegularizer",
    "ImageData",
    "LatentHook",
    "LatentModel",
    "MethodSpec",
    "OtrobustError",
    "PGD",
    "TrainConfig",
    "TradesAdversary",
    "__version__",
    "audit_model",
    "best_iterate",
    "bn_mode",
    "build_attacks",
    "create_model",
    "evaluate_model",
    "fgsm",
    "ground_cost",
    "label_mask",
    "last_iterate",
    "latent_forward",
    "load_dataset",
    "load_model",
    "project",
    "semidual_ot",
    "sinkhorn_ot",
]
