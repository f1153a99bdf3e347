"""Typed configuration: one frozen pydantic model per section, YAML files, ``--set a.b=c`` overrides.

Every field is documented by its name and the section of docs/method.md it comes from. Unknown keys and wrong
types are errors that name the field. No torch import here: the config is read before anything heavy is loaded.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from jbot.data.classes import BACKGROUND, CLASSES
from jbot.data.features import PAPER_FEATURES, check_features
from jbot.errors import JbotError
from jbot.paths import DEFAULT_CONFIG, Traversable, find_yaml

# Upper bounds of the integer fields: far above any real run, low enough that torch, numpy and Optuna take them
MAX_SEED = 2**32 - 1  # numpy's and Optuna's samplers take seeds in [0, 2**32)
MAX_EPOCHS = 1_000_000
MAX_BATCH = 2**24
MAX_JETS = 10**9
MAX_K = 100_000  # neighbours of a k-NN
MAX_STEPS = 10**9


class ConfigError(JbotError, ValueError):
    """A configuration that cannot be used; the message names every offending field."""


class Section(BaseModel):
    """Frozen, unknown keys rejected, numbers finite, and a boolean is never taken for a number."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            kinds = _number_kinds(cls.model_fields[info.field_name].annotation)
            if kinds and bool not in kinds:
                raise ValueError(f"expected a number, got the boolean {value}")
        return value


def _number_kinds(annotation: Any) -> set[type]:
    """The scalar types a field accepts when it accepts int or float (empty otherwise)."""
    args = set(get_args(annotation)) if get_args(annotation) else {annotation}
    return args if args & {int, float} else set()


class DataConfig(Section):
    """docs/method.md §1. Sizes left as ``None`` take the published sizes, scaled down to the data on disk."""

    dir: str = "data/jets"
    # a preset of jbot.data.presets.PRESETS, or a preset YAML file (a user's classes and labels)
    preset: str = "5class"
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    n_train: int | None = Field(default=None, gt=0, le=MAX_JETS)
    n_val: int | None = Field(default=None, ge=0, le=MAX_JETS)
    n_test: int | None = Field(default=None, gt=0, le=MAX_JETS)
    # Pre-training only: stream the training jets from the files of `dir` (HDF5 or JetClass ROOT) through a host
    # buffer of `window` jets instead of loading them; `val_dir` (same kind of files) feeds the k-NN monitor.
    stream: bool = False
    window: int = Field(default=200_000, gt=0, le=MAX_JETS)
    val_dir: str | None = None

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        return preset_name(value)


class AugmentConfig(Section):
    """docs/method.md §2: rotation, smearing, collinear splitting (two independent views per jet)."""

    rotation: bool = True
    smear: bool = True
    smear_scale: float = Field(default=1e-4, ge=0.0)
    smear_padded: bool = False  # published code: True (pads get eta/phi of order +-300)
    split: bool = True
    split_mode: Literal["conserve", "truncate"] = "conserve"  # truncate = published code's behaviour
    split_min: float = Field(default=0.3, ge=0.0, le=1.0)
    split_max: float = Field(default=0.7, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _split_range(self) -> AugmentConfig:
        if self.split_min > self.split_max:
            raise ValueError(f"split_min ({self.split_min}) must be <= split_max ({self.split_max})")
        return self


class MaskConfig(Section):
    """docs/method.md §3: pT-aware masking of student views."""

    enabled: bool = True
    ratio_min: float = Field(default=0.0, ge=0.0, le=1.0)
    ratio_max: float = Field(default=0.5, ge=0.0, le=1.0)
    prob: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ratio_range(self) -> MaskConfig:
        if self.ratio_min > self.ratio_max:
            raise ValueError(f"ratio_min ({self.ratio_min}) must be <= ratio_max ({self.ratio_max})")
        return self


def registered(value: str, registry: Iterable[str], what: str) -> str:
    """``value`` if it names an entry of ``registry`` (a validator's check), else the error listing the names."""
    names = list(registry)
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(names)}")
    return value


def preset_name(value: str, classify: bool = False) -> str:
    """A preset of the registry (``classify``: one that trains on every class) or a preset file's path, whose
    contents are read where the split is made."""
    from jbot.data.presets import PRESETS, is_preset_file

    if is_preset_file(value):
        return value
    names = [n for n, p in PRESETS.items() if not classify or p.split == "balanced"]
    return registered(value, names, "classification preset" if classify else "preset")


class ModelConfig(Section):
    """docs/method.md §4. ``d_proj`` = K, the projection dimension (D/2 in the paper)."""

    # the encoder, a key of jbot.model.registry.ENCODERS; "transformer" = the paper's particle transformer
    arch: str = "transformer"
    d_model: int = Field(default=32, gt=0, le=2**14)
    n_heads: int = Field(default=4, gt=0, le=1024)
    n_layers: int = Field(default=2, ge=0, le=1024)
    d_proj: int = Field(default=16, gt=0, le=2**20)
    ffn_mult: int = Field(default=4, gt=0, le=64)
    head_hidden_mult: int = Field(default=8, gt=0, le=64)
    # the input schema (jbot.data.features): particle features by name, the paper's three first; every checkpoint
    # carries it, and a jet array has n_features = len(features) + 1 columns (the `valid` flag after the three)
    features: tuple[str, ...] = PAPER_FEATURES
    n_features: int = Field(default=4, gt=0, le=1024)
    n_particles: int = Field(default=30, gt=0, le=2**14)
    mask_padding: bool = True  # published models attend to pads: false for imported weights
    # Fixed per-feature scale of (eta_rel, phi_rel, pt_rel, valid) before the token embedding. Raw JetNet features
    # differ between jets by ~0.1 while `valid` is 1, so a freshly initialised encoder maps all jets to almost the
    # same [CLS] and self-distillation collapses to the uniform distribution; (1, 1, 1, 1) = published models.
    # Columns past the list's length (declared features beyond the paper's) are scaled by 1.
    feature_scale: tuple[float, ...] = (10.0, 10.0, 10.0, 1.0)
    ln_eps: float = Field(default=1e-6, gt=0.0)

    @field_validator("arch")
    @classmethod
    def _registered(cls, value: str) -> str:
        from jbot.model.registry import ENCODERS  # no torch: names -> where each encoder lives

        return registered(value, ENCODERS, "architecture")

    @field_validator("features")
    @classmethod
    def _schema(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_features(value)

    @model_validator(mode="before")
    @classmethod
    def _width_from_schema(cls, data: Any) -> Any:
        """``n_features`` follows ``features`` unless given (a checkpoint's saved config gives both)."""
        if isinstance(data, Mapping) and "features" in data and "n_features" not in data:
            features = data["features"]
            if isinstance(features, (list, tuple)):
                data = {**data, "n_features": len(features) + 1}
        return data

    @model_validator(mode="after")
    def _heads_fit(self) -> ModelConfig:
        if self.n_features != len(self.features) + 1:
            raise ValueError(f"n_features ({self.n_features}) must be len(features) + 1 = {len(self.features) + 1} "
                             f"(the features {', '.join(self.features)} and the valid flag)")
        if not 1 <= len(self.feature_scale) <= self.n_features:
            raise ValueError(f"feature_scale has {len(self.feature_scale)} entries, at most n_features "
                             f"({self.n_features})")
        if self.d_model < self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be >= n_heads ({self.n_heads})")
        return self


class PretrainConfig(Section):
    """docs/method.md §5-6. ``lr`` = ``base_lr`` x batch_size / 256."""

    epochs: int = Field(default=100, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(default=1024, gt=1, le=MAX_BATCH)
    base_lr: float = Field(default=5e-4, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    warmup_epochs: float = Field(default=10, ge=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = Field(default=1e-6, ge=0.0)
    teacher_temp: float = Field(default=0.04, gt=0.0)
    student_temp: float = Field(default=0.1, gt=0.0)
    center_momentum: float = Field(default=0.9, ge=0.0, le=1.0)
    teacher_momentum: float = Field(default=0.996, ge=0.0, le=1.0)
    teacher_momentum_final: float = Field(default=1.0, ge=0.0, le=1.0)
    koleo_weight: float = Field(default=0.01, ge=0.0)
    use_cls_loss: bool = True
    use_part_loss: bool = True
    part_norm: Literal["jet", "batch"] = "jet"  # batch = published code (one mean over masked tokens)
    dropout: float = Field(default=0.0, ge=0.0, le=1.0)
    grad_clip: float | None = Field(default=None, gt=0.0)
    # steps between mid-epoch checkpoints; 0: at epoch ends only
    checkpoint_every: int = Field(default=0, ge=0, le=MAX_STEPS)
    knn_every: int = Field(default=5, ge=0, le=MAX_EPOCHS)
    knn_val_size: int = Field(default=5000, gt=0, le=MAX_JETS)
    knn_k: int = Field(default=30, gt=0, le=MAX_K)
    # representation health each epoch on this many fixed training jets (docs/method.md §5.7); a collapse is
    # the [CLS] effective rank below collapse_rank, or the teacher sending the jets to collapse_dims of its K
    # projection dimensions or fewer, for collapse_patience epochs in a row (a warning; a sweep prunes the trial)
    health_jets: int = Field(default=512, ge=2, le=MAX_JETS)
    collapse_rank: float = Field(default=1.5, ge=0.0)
    collapse_dims: int = Field(default=1, ge=0)
    collapse_patience: int = Field(default=3, ge=1, le=MAX_EPOCHS)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    out_dir: str = "runs/pretrain"

    @model_validator(mode="after")
    def _schedule(self) -> PretrainConfig:
        if self.teacher_momentum > self.teacher_momentum_final:
            raise ValueError("teacher_momentum must be <= teacher_momentum_final")
        if not (self.use_cls_loss or self.use_part_loss):
            raise ValueError("at least one of use_cls_loss and use_part_loss must be true")
        return self


class FinetuneConfig(Section):
    """docs/method.md §7: fine-tuning with layer-wise LR decay (BEiT convention)."""

    task: str = "5class"  # a classification preset (jbot.data.presets) or a preset YAML file
    epochs: int = Field(default=100, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(default=1024, gt=1, le=MAX_BATCH)
    lr: float = Field(default=2e-4, gt=0.0)
    llrd_decay: float = Field(default=0.7, gt=0.0, le=1.0)
    dropout: float = Field(default=0.2, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    patience: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        return preset_name(value, classify=True)


class ProbeConfig(Section):
    """docs/method.md §7: k-NN and linear probes on the frozen [CLS], clustering metrics."""

    knn_k: int = Field(default=30, gt=0, le=MAX_K)
    linear_c: float = Field(default=1.0, gt=0.0)
    linear_max_iter: int = Field(default=1000, gt=0, le=MAX_STEPS)
    silhouette_samples: int = Field(default=5000, gt=1, le=MAX_JETS)


class AnomalyConfig(Section):
    """docs/method.md §8: anomaly scores on l2-normalised [CLS] embeddings."""

    score: str = "knn"  # the one `jbot sweep anomaly` tunes: a key of jbot.anomaly.scores.SCORES
    reference_size: int = Field(default=20000, gt=0, le=MAX_JETS)
    knn_k: int = Field(default=30, gt=0, le=MAX_K)
    cosine_k: int = Field(default=30, gt=0, le=MAX_K)
    cosine_temp: float = Field(default=0.05, gt=0.0)
    mahalanobis_cov: Literal["within", "total"] = "within"
    mahalanobis_reg: float = Field(default=1e-8, ge=0.0)
    gmm_components: int = Field(default=4, ge=1, le=10_000)
    gmm_covariance: Literal["full", "tied", "diag", "spherical"] = "full"
    gmm_reg: float = Field(default=1e-5, ge=0.0)
    chunk_size: int = Field(default=256, gt=0, le=MAX_BATCH)  # queries per k-NN block (memory ~ 32768 x this floats)
    # draws the reference set and initialises the GMM, in `jbot anomaly` and its sweep alike
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    # `jbot anomaly` re-runs every score with this fraction of the reference set replaced by signal jets (from the
    # validation split): each signal alone and all mixed (docs/method.md §8.5); [] turns it off
    contamination: tuple[float, ...] = (0.001, 0.01, 0.05)
    # lambda of the decorrelated objective combined/auc_decorrelated = combined AUC - lambda * max |rho(score, mass)|
    decorrelation: float = Field(default=1.0, ge=0.0)
    # the mass-sculpting metrics need the jets' mass (jet_features column 2): data whose mass is missing, all zero
    # or not finite is refused (exit 2) unless this is false, which scores without them
    sculpting: bool = True

    @field_validator("contamination")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in value if not 0.0 < f < 0.5]
        if bad:
            raise ValueError(f"each fraction must lie in (0, 0.5): {bad[0]:g} does not")
        return value

    @field_validator("score")
    @classmethod
    def _registered(cls, value: str) -> str:
        from jbot.anomaly.scores import SCORES  # numpy only: the registry of scores

        return registered(value, SCORES, "score")


class SweepConfig(Section):
    """Optuna studies: storage, sampler, pruner."""

    storage: str | None = None  # None: sweeps/optuna.db under the working folder (jbot.paths)
    study_name: str | None = None
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = Field(default=5, ge=0, le=MAX_STEPS)  # trials that run to the end before pruning
    pruner_warmup_steps: int = Field(default=2, ge=0, le=MAX_EPOCHS)  # epochs (or probe reports) never pruned
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class RuntimeConfig(Section):
    """Where and how every command computes: pre-training, probes, fine-tuning, embedding, anomaly scores."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: Literal["auto", "on", "off"] = "auto"  # auto: torch.compile on CUDA only (pre-training)
    # the whole pre-training step recorded once as a CUDA graph and replayed; auto: on CUDA in one process
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    threads: int | None = Field(default=None, gt=0, le=4096)  # CPU threads for torch; None: torch's default

    @field_validator("compile", "cuda_graphs", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        # YAML (and so `--set runtime.compile=off`) reads on/off as booleans
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


# the ablation study's variants (commands.studies.VARIANTS: a test keeps the two lists equal)
AblationVariant = Literal["full", "part-only", "cls-only", "no-koleo", "no-mask"]
ABLATION_VARIANTS: tuple[AblationVariant, ...] = ("full", "part-only", "cls-only", "no-koleo", "no-mask")


class EvaluateConfig(Section):
    """Settings shared by every evaluation (probes, fine-tuned taggers, anomaly scores)."""

    n_folds: int = Field(default=10, ge=2, le=1000)  # stratified folds behind every metric's ± (its std over folds)
    # the fractions of the labels `jbot reproduce --study label-fraction` fine-tunes with (pre-trained and scratch)
    label_fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0)
    # the variants `jbot reproduce --study ablation` pre-trains beside the full method (the names of
    # commands.studies.VARIANTS), and whether each is pre-trained again on q+g for its anomaly AUC
    ablation_variants: tuple[AblationVariant, ...] = ABLATION_VARIANTS
    ablation_anomaly: bool = True

    @field_validator("ablation_variants")
    @classmethod
    def _ablation_variants(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "full" not in value:
            raise ValueError("the full method is what every variant is compared with: keep 'full' in the list")
        if len(value) < 2:
            raise ValueError("give at least one variant beside 'full'")
        return tuple(v for v in ABLATION_VARIANTS if v in value)  # the study's order, each once

    @field_validator("label_fractions")
    @classmethod
    def _label_fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        bad = [f for f in value if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"each fraction must lie in (0, 1]: {bad[0]:g} does not")
        if not value:
            raise ValueError("give at least one fraction")
        return tuple(sorted(set(value)))


class TrackingConfig(Section):
    """MLflow target. ``uri`` None: env MLFLOW_TRACKING_URI, else the embedded store (mlruns/ under the working
    folder); commands replace it by the one resolved URI (``jbot.paths.resolve_tracking_uri``)."""

    uri: str | None = None
    experiment: str | None = None
    log_system_metrics: bool = True


class JbotConfig(Section):
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    mask: MaskConfig = MaskConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    probe: ProbeConfig = ProbeConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    sweep: SweepConfig = SweepConfig()
    tracking: TrackingConfig = TrackingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


class GenerateConfig(Section):
    """Pythia8 + FastJet jet generation (``jbot data generate``)."""

    jets_per_class: int = Field(default=2000, gt=0, le=MAX_JETS)
    # q and g jets per class when more background than signal is wanted (the q+g anomaly steps train on, take
    # their reference from and test on background alone); None: jets_per_class
    background_per_class: int | None = Field(default=None, gt=0, le=MAX_JETS)
    classes: tuple[str, ...] = CLASSES
    workers: int = Field(default=1, gt=0, le=1024)
    seed: int = Field(default=1, ge=0, le=MAX_SEED)
    chunk_size: int = Field(default=250, gt=0, le=MAX_JETS)
    ecm: float = Field(default=13000.0, gt=0.0)
    pthat_min: float = Field(default=900.0, gt=0.0)
    pthat_max: float = Field(default=1100.0, gt=0.0)
    jet_pt_min: float = Field(default=800.0, gt=0.0)
    jet_pt_max: float = Field(default=1200.0, gt=0.0)
    jet_radius: float = Field(default=0.8, gt=0.0)
    max_eta: float = Field(default=2.5, gt=0.0)
    n_particles: int = Field(default=30, gt=0, le=2**14)

    @model_validator(mode="after")
    def _windows(self) -> GenerateConfig:
        unknown = sorted(set(self.classes) - set(CLASSES))
        if unknown:
            raise ValueError(f"unknown classes {unknown}; choose from {', '.join(CLASSES)}")
        if not self.classes:
            raise ValueError("at least one class is needed")
        if self.pthat_min >= self.pthat_max or self.jet_pt_min >= self.jet_pt_max:
            raise ValueError("pT windows need min < max")
        return self

    def jets_for(self, cls: str) -> int:
        """Jets to generate for one class."""
        if cls in BACKGROUND and self.background_per_class is not None:
            return self.background_per_class
        return self.jets_per_class

    @property
    def total_jets(self) -> int:
        return sum(self.jets_for(c) for c in self.classes)


# --------------------------------------------------------------------------------------------------------
# Loading, overrides, flattening


def _annotation_at(model: type[BaseModel], loc: Iterable[Any]) -> str | None:
    """The declared type of the field at ``loc`` (for error messages), or None."""
    current: Any = model
    annotation = None
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        current = annotation
    if annotation is None:
        return None
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


_EXCERPT = reprlib.Repr()
_EXCERPT.maxlist = _EXCERPT.maxtuple = _EXCERPT.maxdict = _EXCERPT.maxset = 10
_EXCERPT.maxstring = _EXCERPT.maxlong = _EXCERPT.maxother = EXCERPT_CHARS = 120


def excerpt(value: Any) -> str:
    """A bounded repr of a (possibly huge) value: at most ``EXCERPT_CHARS`` characters, cut with "…"."""
    text = _EXCERPT.repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 1] + "…"


def format_validation_error(err: ValidationError, model: type[BaseModel] = JbotConfig,
                            title: str = "invalid configuration") -> str:
    lines = []
    for item in err.errors():
        loc = tuple(p for p in item["loc"])
        name = ".".join(str(p) for p in loc) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"{name}: unknown field")
            continue
        expected = _annotation_at(model, loc)
        got = item.get("input")
        msg = item["msg"].removeprefix("Value error, ")
        # a validator's own message (value_error) already says what is wrong; a type error gets the hint
        typed = item["type"] != "value_error" and expected and not isinstance(got, dict)
        hint = f" (expected {expected}, got {excerpt(got)})" if typed else ""
        lines.append(f"{msg}{hint}" if name == "<root>" else f"{name}: {msg}{hint}")
    return f"{title}:\n  " + "\n  ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.d_model=64"`` -> (["model", "d_model"], 64). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.field=value, got {text!r}")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"--set key {key!r} must be section.field (e.g. model.d_model)")
    try:
        value = load_yaml_text(raw, f"--set {key.strip()}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def _apply(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


# Nodes of a YAML document with every alias expanded: a config has a few hundred; an "anchor bomb" (a list of
# aliases of a list of aliases ...) has billions and would hang whatever reads it.
MAX_YAML_NODES = 100_000


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` where a key given twice in one mapping is an error (not the last one winning)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be given again
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class names it
                continue
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, budget: int, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes under ``node`` with aliases expanded, counted up to ``budget + 1`` (each shared node counted once per
    use without walking it again; a node that contains itself counts as too many)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        return budget + 1
    open_.add(id(node))
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, budget, sizes, open_)
        if total > budget:
            total = budget + 1
            break
    open_.discard(id(node))
    sizes[id(node)] = total
    return total


def load_yaml_text(text: str, where: str) -> Any:
    """One YAML document, as ``yaml.safe_load`` reads it, or a ConfigError naming ``where`` for a key given twice
    in one mapping, a document that expands past ``MAX_YAML_NODES`` nodes or one nested too deeply. Invalid YAML
    raises ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_NODES, {}, set()) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: the YAML expands to more than {MAX_YAML_NODES:,} values once its aliases "
                              "(*name) are filled in: not a configuration")
        return loader.construct_document(node)
    except _DuplicateKey as exc:
        raise ConfigError(f"{where}: duplicate key {exc.key!r} in one mapping (line {exc.line})") from None
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply to be a configuration") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path | Traversable) -> dict[str, Any]:
    if isinstance(path, str):
        path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text YAML file (byte {exc.start} is not UTF-8 text: binary data?)") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{path}: not a text YAML file (byte {nul} is NUL: binary data?)")
    try:
        loaded = load_yaml_text(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return loaded


# Fields that moved to another section or went away. A config saved in a checkpoint before then is read with each
# value moved (or dropped); a user's YAML or --set naming an old field is an error that names the new one.
MOVED: dict[tuple[str, str], tuple[str, str]] = {
    ("pretrain", "device"): ("runtime", "device"), ("pretrain", "precision"): ("runtime", "precision"),
    ("pretrain", "compile"): ("runtime", "compile"), ("probe", "n_folds"): ("evaluate", "n_folds"),
    ("anomaly", "n_folds"): ("evaluate", "n_folds")}
REMOVED: tuple[tuple[str, str], ...] = (("model", "jet_conditioning"), ("model", "n_jet_features"),
                                        ("tracking", "registry_name"), ("sweep", "n_trials"))


def _upgrade(tree: Mapping[str, Any], saved: bool) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
    stale = []
    for old in (*MOVED, *REMOVED):
        section = out.get(old[0])
        if not isinstance(section, dict) or old[1] not in section:
            continue
        value = section.pop(old[1])
        new = MOVED.get(old)
        if not saved:
            stale.append(f"{'.'.join(old)}: " + (f"now {'.'.join(new)}" if new else "no longer exists"))
        elif new:
            out.setdefault(new[0], {}).setdefault(new[1], value)
    if stale:
        raise ConfigError("renamed or removed fields:\n  " + "\n  ".join(stale))
    return out


def build_config(tree: Mapping[str, Any], saved: bool = False) -> JbotConfig:
    """Validate a config tree; ``saved``: one stored in a checkpoint or run, whose older field names are upgraded."""
    try:
        return JbotConfig.model_validate(_upgrade(tree, saved))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> JbotConfig:
    """YAML file merged with ``--set`` overrides, validated. ``path``: a file, or the name of a shipped config
    (``jbot-s``, ``jbot-b``); None = the shipped ``jbot-s.yaml``."""
    tree = read_yaml(find_yaml(path if path is not None else DEFAULT_CONFIG))
    for text in overrides:
        keys, value = parse_override(text)
        _apply(tree, keys, value)
    return build_config(tree)


def with_overrides(cfg: JbotConfig, overrides: Mapping[str, Any]) -> JbotConfig:
    """A copy of ``cfg`` with dotted-name overrides, validated again (used by sweeps and tests)."""
    tree = cfg.model_dump(mode="json")
    for key, value in overrides.items():
        _apply(tree, key.split("."), value)
    return build_config(tree)


# What a resumed pre-training may change: how long, where, on what hardware, monitoring and tracking, and the
# sections it does not use. The model, augmentations, masking, optimiser and split must stay as trained.
RESUMABLE = ("pretrain.epochs", "pretrain.out_dir", "pretrain.knn_every", "pretrain.knn_val_size",
             "pretrain.checkpoint_every", "data.dir", "data.val_dir", "runtime.", "tracking.", "finetune.", "probe.",
             "anomaly.", "sweep.", "evaluate.")


def resume_config(saved: Mapping[str, Any], overrides: Iterable[str]) -> JbotConfig:
    """A checkpoint's config with ``--set`` overrides on top; changing a field a resumed run cannot change is an
    error naming it."""
    original = build_config(saved, saved=True)
    tree = original.model_dump(mode="json")
    for text in overrides:
        keys, value = parse_override(text)
        _apply(tree, keys, value)
    cfg = build_config(tree)
    before, after = flatten(original), flatten(cfg)
    fixed = sorted(k for k in after if after[k] != before.get(k) and not k.startswith(RESUMABLE))
    if fixed:
        raise ConfigError(
            "a resumed pre-training keeps the checkpoint's " + ", ".join(
                f"{k} ({before.get(k)!r}, asked {after[k]!r})" for k in fixed)
            + "; only " + ", ".join(p.rstrip(".") for p in RESUMABLE[:8]) + " and the tracking settings may change"
            " (start a new run for the rest)")
    return cfg


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted names -> values, for MLflow params (identical names across commands)."""
    out: dict[str, Any] = {}
    for name, value in cfg.model_dump(mode="json").items():
        _flatten_into(out, f"{prefix}{name}", value)
    return out


def _flatten_into(out: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = value


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
