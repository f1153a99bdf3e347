"""``jbot anomaly``: every anomaly score of a frozen encoder pre-trained on background jets (JetNet's q, g by
default), as one MLflow run with an HTML report.

The encoder is fetched once, with the provenance of what was downloaded (a registry alias pinned to the version
it pointed at then), the preset's anomaly split (``qg``; for another preset its background classes against the
others) read with its model settings, the scores computed by the one scoring route
(``anomaly.detect.score_anomalies``), their metrics logged and the report written (beside the paper's Table 4 on
JetNet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jbot.anomaly.detect import AnomalyResult, contamination_study, embed_split, require_mass, score_anomalies
from jbot.anomaly.report import signal_exposure, signal_note, text_table, write_report
from jbot.commands.common import TrackedResult, data_tags, load_split, log_split, settings_used
from jbot.config import JbotConfig, flatten
from jbot.data.presets import QG_GROUPS, groups
from jbot.evaluate.bootstrap import ANOMALY_SCORES, jets_hash, save_anomaly_scores
from jbot.io import scratch_dir
from jbot.tracking.mlflow import tracked_run
from jbot.tracking.models import load_from_uri
from jbot.train.device import runtime_device


@dataclass
class AnomalyOutcome:
    result: AnomalyResult
    paths: dict[str, Path]  # the report's files: report (HTML), metrics (JSON), table (text)
    table: str  # the AUC table beside the paper's, as text


def tracked_anomaly(cfg: JbotConfig, source: str, *, out_dir: Path | None = None, experiment: str | None = None,
                    notes: list[str] | None = None, tuned: bool = False, parent_run_id: str | None = None,
                    on_note: Callable[[str], None] | None = None, preset: str = "qg"
                    ) -> TrackedResult[AnomalyOutcome]:
    """Every anomaly score of a frozen encoder on ``preset``'s anomaly split (``qg``: the paper's); report + metrics
    logged as artifacts.
    ``tuned``: the settings come from an anomaly sweep (the report marks ``anomaly.score`` as tuned). An encoder
    that saw signal jets in training (not the paper's setting) gets a note in the report, passed to ``on_note``
    too, and the tag ``jbot.encoder_saw_signal``."""
    loaded = load_from_uri(source, str(cfg.tracking.uri))
    cfg = settings_used(cfg, preset, loaded)
    split = load_split(cfg, anomaly=True)
    require_mass(split, "test", cfg.anomaly, str(cfg.data.dir))
    classes = groups(split.spec) if split.spec is not None else QG_GROUPS
    device = runtime_device(cfg.runtime)
    tags = {**data_tags(split, str(device)), **loaded.provenance}
    notes = list(notes or [])
    exposure = signal_exposure(loaded.state, classes)
    if exposure is not None:
        tags["jbot.encoder_saw_signal"] = str(exposure[0]).lower()
    if exposure is not None and exposure[0]:
        notes.append(signal_note(exposure[1], classes))
        if on_note is not None:
            on_note(notes[-1])
    with tracked_run(cfg, "anomaly", experiment=experiment, tags=tags, run_name=f"anomaly-{cfg.anomaly.score}",
                     description=f"anomaly scores of the frozen encoder {source} ({classes.background_label} "
                                 "background)",
                     parent_run_id=parent_run_id) as run:
        log_split(run, cfg, split)
        embedded = embed_split(loaded.encoder, split, "test", cfg.anomaly.reference_size, cfg.anomaly.seed, device)
        result = score_anomalies(embedded, cfg.anomaly, n_folds=cfg.evaluate.n_folds)
        contaminated = contamination_study(loaded.encoder, split, embedded, cfg.anomaly, device)
        result.metrics.update(contaminated.metrics)
        for text in contaminated.notes:
            notes.append(text)
            if on_note is not None:
                on_note(text)
        run.log_metrics({f"test/{k}": v for k, v in result.metrics.items()})
        prov = {"model": source, **{k.removeprefix("jbot."): v for k, v in tags.items()}, "mlflow_run": run.run_id}
        folder = out_dir or scratch_dir("anomaly-")
        settings = {k: v for k, v in flatten(cfg).items() if k.startswith("anomaly.")}
        paths = write_report(result, folder, prov, notes, settings, cfg.anomaly.score if tuned else None,
                             saw_signal=bool(exposure and exposure[0]))
        for path in paths.values():
            run.log_artifact(path, "report")
        # the per-jet test scores: what a bootstrap of the AUCs (the reproduction's anomaly claim) reads
        scores = save_anomaly_scores(folder / ANOMALY_SCORES, result.origin, result.scores, classes.background,
                                     classes.signals, fingerprint=split.fingerprint,
                                     jets=jets_hash(split.test.jet, split.test.origin))
        run.log_artifact(scores, str(Path(ANOMALY_SCORES).parent))
    return TrackedResult(run.run_id, None, AnomalyOutcome(result, paths, text_table(result)))
