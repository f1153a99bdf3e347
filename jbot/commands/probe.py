"""``jbot probe``: k-NN and linear probes and clustering of a frozen encoder, as one MLflow run.

The encoder is fetched once (with its provenance), the split read with the encoder's own model settings, the
probes run (``evaluate.probe``), their metrics, JSON and the test embedding's map logged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jbot.commands.common import TrackedResult, data_tags, load_split, log_json_and_curves, log_split, settings_used
from jbot.config import JbotConfig
from jbot.evaluate.bootstrap import PREDICTIONS, jets_hash, save_predictions
from jbot.evaluate.probe import ProbeResult, run_probe
from jbot.io import scratch_dir
from jbot.plots import embedding_map, write_html, write_map_points
from jbot.tracking.mlflow import tracked_run
from jbot.tracking.models import load_from_uri
from jbot.train.device import runtime_device

MAP_POINTS = Path("plots/embedding_map.npz")  # the t-SNE map's points, per class (an ablation report reads them)


def tracked_probe(cfg: JbotConfig, source: str, preset: str, *, out_dir: Path | None = None,
                  experiment: str | None = None, parent_run_id: str | None = None,
                  run_name: str | None = None, on_phase: Callable[[str], None] | None = None
                  ) -> TrackedResult[ProbeResult]:
    """``on_phase`` hears each long phase as it starts (embedding, probes, clustering, the t-SNE map)."""
    loaded = load_from_uri(source, str(cfg.tracking.uri))
    cfg = settings_used(cfg, preset, loaded)
    split = load_split(cfg)
    device = runtime_device(cfg.runtime)
    with tracked_run(cfg, "probe", experiment=experiment, tags={**data_tags(split, str(device)), **loaded.provenance},
                     run_name=run_name or f"probe-{split.preset}", parent_run_id=parent_run_id,
                     description=f"k-NN and linear probes and clustering of the frozen encoder {source}") as run:
        log_split(run, cfg, split)
        result = run_probe(loaded.encoder, split, cfg.probe, device, n_folds=cfg.evaluate.n_folds, on_phase=on_phase)
        run.log_metrics(result.metrics)
        folder = out_dir or scratch_dir("probe-")
        log_json_and_curves(run, folder, "probe", result.metrics)
        if on_phase is not None:
            on_phase("t-SNE map of the test jets")
        fig = embedding_map(result.test_embedding, split.test.y, split.class_names, "frozen [CLS] (test jets)")
        run.log_artifact(write_html(fig, folder / "embedding_map.html"), "plots")
        run.log_artifact(write_map_points(fig, folder / MAP_POINTS.name), str(MAP_POINTS.parent))
        # the k-NN probe's per-jet test outputs (vote fractions, float32): what a paired bootstrap of two probes reads
        knn = save_predictions(folder / PREDICTIONS, split.test.y, result.knn_probs, fingerprint=split.fingerprint,
                               jets=jets_hash(split.test.jet, split.test.origin), kind="knn")
        run.log_artifact(knn, str(Path(PREDICTIONS).parent))
    return TrackedResult(run.run_id, None, result)
