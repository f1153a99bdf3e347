"""The notebook API: the CLI's verbs as functions, tracked in MLflow exactly as the commands track them.

    import jbot

    cfg = jbot.make_config("jbot-s-cpu", "pretrain.epochs=10", data="data/jets")
    run = jbot.pretrain(cfg)                                   # one MLflow run; run.model_uri is the encoder
    probed = jbot.probe(run.model_uri, cfg)                    # k-NN and linear probes, clustering
    enc = jbot.load_encoder("models:/jbot-encoder@champion")   # or a run id, runs:/ URI or checkpoint path
    cls = enc.embed(jets)                                      # (N, D) numpy

Every function takes and returns what the commands use (``JbotConfig`` in, ``TrackedResult`` out: ``run_id``,
``model_uri`` and the typed ``payload`` the CLI prints from), and raises ``jbot.errors.JbotError`` subclasses with
the same one-line messages the CLI prints. docs/python-api.md is the guide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jbot.config import GenerateConfig, JbotConfig, with_overrides
from jbot.errors import JbotError

if TYPE_CHECKING:
    from jbot.commands.anomaly import AnomalyOutcome
    from jbot.commands.common import TrackedResult
    from jbot.data.splits import Split
    from jbot.evaluate.probe import ProbeResult
    from jbot.model.encoder import JetEncoder
    from jbot.tracking.registry import Registered
    from jbot.train.pretrain import PretrainResult

__all__ = ["Encoder", "detect_anomalies", "generate", "load_encoder", "load_split", "make_config", "pretrain",
           "probe", "register_best"]


def make_config(base: str | Path | None = None, *overrides: str, data: str | Path | None = None,
                tracking_uri: str | None = None, **fields: Any) -> JbotConfig:
    """A resolved config: a shipped name (``jbot-s-cpu``, ``jbot-b``, ...) or YAML path, ``a.b=c`` overrides as
    ``--set`` takes them, ``data`` for ``data.dir``, ``fields`` as ``{"pretrain.epochs": 10}``-style keys given
    with ``__`` for the dot (``pretrain__epochs=10``). The tracking store is resolved once, as a command does
    (``tracking_uri``, else the config's, else ``MLFLOW_TRACKING_URI``, else ``mlruns/`` in the working folder)."""
    from jbot.commands.inputs import with_store
    from jbot.config import load_config

    sets = [*overrides, *(f"{k.replace('__', '.')}={v}" for k, v in fields.items())]
    if data is not None:
        sets.append(f"data.dir={data}")
    return with_store(load_config(base, sets), tracking_uri)


def _cfg(cfg: JbotConfig | None, data: str | Path | None) -> JbotConfig:
    from jbot.config import JbotConfig

    if cfg is not None and not isinstance(cfg, JbotConfig):  # load_split("data/jets"): the folder is data=
        raise TypeError(f"cfg is a {type(cfg).__name__}, not a config from jbot.make_config(); "
                        "give a data folder as data=...")
    cfg = cfg if cfg is not None else make_config()
    if data is not None:
        cfg = with_overrides(cfg, {"data.dir": str(data)})
    if cfg.tracking.uri is None:
        from jbot.commands.inputs import with_store

        cfg = with_store(cfg, None)
    return cfg


def generate(out: str | Path, jets_per_class: int = 2000, *, workers: int = 1, seed: int = 1,
             classes: tuple[str, ...] | None = None, **fields: Any) -> dict[str, Path]:
    """``jbot data generate``: Pythia8 + FastJet jets, one ``{class}.hdf5`` per class in ``out`` (needs the
    ``generate`` extra). Returns class -> file."""
    from jbot.data.generate import generate as run

    if classes:
        fields["classes"] = tuple(classes)
    cfg = GenerateConfig(jets_per_class=jets_per_class, workers=workers, seed=seed, **fields)
    return run(cfg, out)


def pretrain(cfg: JbotConfig | None = None, data: str | Path | None = None, *, experiment: str | None = None,
             run_name: str | None = None, on_warning: Any = None) -> TrackedResult[PretrainResult]:
    """``jbot pretrain``: one MLflow run (experiment ``jbot-pretrain``), the encoder logged as its model
    (``result.model_uri``); ``result.payload``: the checkpoint path, the per-epoch history, the final k-NN."""
    from jbot.commands.inputs import require_data
    from jbot.commands.pretrain import tracked_pretrain

    cfg = _cfg(cfg, data)
    require_data(cfg)
    return tracked_pretrain(cfg, experiment=experiment, run_name=run_name, on_warning=on_warning)


def probe(source: str, cfg: JbotConfig | None = None, data: str | Path | None = None, *, preset: str = "5class",
          experiment: str | None = None, out: str | Path | None = None) -> TrackedResult[ProbeResult]:
    """``jbot probe``: k-NN and linear probes and clustering of the frozen encoder ``source`` (run id, ``runs:/``
    or ``models:/`` URI, checkpoint path); ``payload.metrics`` holds ``test/knn_acc``, ``test/nmi``, ...;
    ``payload.test_embedding`` the test jets' [CLS]."""
    from jbot.commands.inputs import require_data, require_model
    from jbot.commands.probe import tracked_probe

    cfg = _cfg(cfg, data)
    require_model(source)
    require_data(cfg, preset)
    return tracked_probe(cfg, source, preset, experiment=experiment, out_dir=Path(out) if out else None)


def detect_anomalies(source: str, cfg: JbotConfig | None = None, data: str | Path | None = None, *,
                     preset: str = "qg", experiment: str | None = None,
                     out: str | Path | None = None) -> TrackedResult[AnomalyOutcome]:
    """``jbot anomaly``: every anomaly score of the frozen encoder ``source`` on ``preset``'s anomaly split;
    ``payload.result.metrics`` holds ``{score}/{signal}/auc`` and the SIC and sculpting metrics,
    ``payload.paths["report"]`` the HTML report, ``payload.table`` the AUC table the CLI prints."""
    from jbot.commands.anomaly import tracked_anomaly
    from jbot.commands.inputs import require_data, require_model

    cfg = _cfg(cfg, data)
    require_model(source)
    require_data(cfg, preset, anomaly=True)
    return tracked_anomaly(cfg, source, preset=preset, experiment=experiment, out_dir=Path(out) if out else None)


def load_split(cfg: JbotConfig | None = None, data: str | Path | None = None, *, preset: str | None = None,
               anomaly: bool = False) -> Split:
    """The split a command would run on (``preset``, default ``data.preset``): ``.train``, ``.val``, ``.test`` with
    ``.x`` (N, P, F) and ``.y``, ``.class_names``, the data ``.fingerprint``; ``anomaly``: the preset's anomaly
    split."""
    from jbot.commands.common import load_split as read
    from jbot.commands.inputs import require_data

    cfg = _cfg(cfg, data)
    require_data(cfg, preset, anomaly=anomaly)
    return read(cfg, preset, anomaly=anomaly)


def register_best(metric: str = "test/acc", *, experiment: str = "jbot-finetune", name: str = "jbot-encoder",
                  alias: str | None = "champion", mode: str = "max", filter: str | None = None,
                  parent: str | None = None, tracking_uri: str | None = None) -> Registered:
    """``jbot register best``: register the best finished run's model of ``experiment`` by ``metric`` (among runs
    matching the MLflow ``filter``), with its model card, and point ``alias`` at it (idempotent per run)."""
    from jbot.paths import resolve_tracking_uri
    from jbot.tracking.mlflow import connect
    from jbot.tracking.registry import register_best as register

    client = connect(resolve_tracking_uri(tracking_uri, None))
    return register(client, experiment, metric, name, mode, alias, filter, parent)


@dataclass
class Encoder:
    """A frozen jBOT encoder (and classifier head, for a fine-tuned model): ``embed`` gives the [CLS] embedding,
    ``predict`` a classifier's probabilities; ``provenance`` names the run and registered version it came from."""

    module: JetEncoder
    head: Any = None
    class_names: tuple[str, ...] = ()
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def features(self) -> tuple[str, ...]:
        """The particle features the encoder takes, in column order (``valid`` last)."""
        from jbot.data.features import layout

        return layout(self.module.cfg.features)

    @property
    def n_particles(self) -> int:
        return int(self.module.cfg.n_particles)

    @property
    def dim(self) -> int:
        return int(self.module.cfg.d_model)

    def _jets(self, jets: Any) -> Any:
        import numpy as np

        from jbot.evaluate.embed import schema_mismatch

        if hasattr(jets, "fields") and not isinstance(jets, np.ndarray):  # awkward: JetClass branches
            from jbot.data.jetclass import FEATURE_BRANCHES, PARTICLE_BRANCHES, particle_features

            needed = (*PARTICLE_BRANCHES, "jet_pt", *(b for f in self.module.cfg.features
                                                     for b in FEATURE_BRANCHES.get(f, ())))
            lacks = [b for b in dict.fromkeys(needed) if b not in jets.fields]
            if lacks:
                raise JbotError(f"the awkward jets lack the branch{'es' if len(lacks) > 1 else ''} "
                                f"{', '.join(lacks)} (the encoder reads {', '.join(dict.fromkeys(needed))})")
            return particle_features(jets, self.n_particles, self.module.cfg.features)
        x = np.asarray(jets, dtype=np.float32)
        if x.ndim != 3:
            raise JbotError(f"expected jets (N, P, {len(self.features)}) with columns {', '.join(self.features)}; "
                            f"got shape {x.shape}")
        if (problem := schema_mismatch("jets", x, self.module.cfg.features)) is not None:
            raise JbotError(problem)
        return x

    def embed(self, jets: Any, batch_size: int = 4096, device: str | None = None) -> Any:
        """[CLS] (N, D) float32 of ``jets``: numpy (N, P, F) in ``features`` order, or an awkward array of JetClass
        branches (``part_px``, ``part_py``, ..., ``jet_pt``), converted as ``jbot data convert`` does."""
        from jbot.evaluate.embed import infer

        return infer(self.module, self._jets(jets), batch_size=batch_size, device=device).cls

    def predict(self, jets: Any, batch_size: int = 4096, device: str | None = None) -> Any:
        """A fine-tuned classifier's class probabilities (N, C), columns in ``class_names`` order."""
        from jbot.evaluate.embed import infer

        if self.head is None:
            raise JbotError("this model is an encoder without a classifier head: use embed()")
        out = infer(self.module, self._jets(jets), head=self.head, batch_size=batch_size, device=device)
        return out.probs


def load_encoder(source: str | Path, tracking_uri: str | None = None) -> Encoder:
    """The encoder of a ``models:/name@alias`` or ``models:/name/version`` URI, a run id, a ``runs:/`` URI or a
    checkpoint file, downloaded once from the tracking store (resolved as a command resolves it)."""
    from jbot.paths import resolve_tracking_uri
    from jbot.tracking.models import load_from_uri

    loaded = load_from_uri(str(source), resolve_tracking_uri(tracking_uri, None))
    return Encoder(loaded.encoder, loaded.classifier, loaded.class_names, dict(loaded.provenance))
