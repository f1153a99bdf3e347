"""Jets in the JetNet layout from Pythia8 + FastJet (``jbot data generate``).

pp at 13 TeV with a hard-process pT window around 1 TeV:
  q, g  QCD 2->2, each jet labelled by the outgoing hard parton within dR < 0.4 (q = u, d, s)
  w, z  boson + jet, hadronic boson decays; the jet must contain both decay quarks (dR < 0.8)
  t     tt~ with hadronic W decays; the jet must contain b and both W-decay quarks (dR < 0.8)
Anti-kT R = 0.8 on visible final-state particles with |eta| < 2.5; jets in a pT window around 1 TeV; the
``n_particles`` (``--particles``, 30 by default) highest-pT constituents as (eta_rel, phi_rel, pt_rel, valid),
zero-padded when a jet has fewer; the jet features' multiplicity counts all constituents.

Work is cut into fixed chunks of jets per class, each with its own Pythia seed derived from (seed, class,
chunk): the output depends on the seed and chunk size only, not on the number of workers or their timing.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jbot.config import GenerateConfig
from jbot.data.classes import BACKGROUND, CLASSES
from jbot.data.jetnet import class_file, write_jetnet
from jbot.errors import JbotError

INSTALL_HINT = (
    "jet generation needs Pythia8 and FastJet: pip install 'jbot-hep[generate]' "
    "(pythia8mc 8.317.x has binary wheels; newer releases compile from source for an hour)"
)
LIGHT_QUARKS = {1, 2, 3}
BOSON_ID = {"w": 24, "z": 23}
MAX_EVENTS_PER_JET = 200

PROCESSES: dict[str, list[str]] = {
    "q": ["HardQCD:all = on"],
    "g": ["HardQCD:all = on"],
    "w": ["WeakBosonAndParton:qqbar2Wg = on", "WeakBosonAndParton:qg2Wq = on",
          "24:onMode = off", "24:onIfAny = 1 2 3 4 5"],
    "z": ["WeakBosonAndParton:qqbar2gmZg = on", "WeakBosonAndParton:qg2gmZq = on", "WeakZ0:gmZmode = 2",
          "23:onMode = off", "23:onIfAny = 1 2 3 4 5"],
    "t": ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "24:onMode = off", "24:onIfAny = 1 2 3 4 5"],
}


class GeneratorUnavailable(JbotError, RuntimeError):
    pass


def require_generator() -> None:
    try:
        import fastjet  # noqa: F401
        import pythia8mc  # noqa: F401
    except ImportError as exc:
        raise GeneratorUnavailable(f"{INSTALL_HINT} (import failed: {exc})") from None


@dataclass(frozen=True)
class Chunk:
    cls: str
    index: int
    n_jets: int
    seed: int


def plan_chunks(cfg: GenerateConfig) -> list[Chunk]:
    chunks = []
    for cls in cfg.classes:
        total = cfg.jets_for(cls)
        n_chunks = -(-total // cfg.chunk_size)
        for i in range(n_chunks):
            n = min(cfg.chunk_size, total - i * cfg.chunk_size)
            # Pythia accepts seeds in [1, 900_000_000]
            seed = 1 + (cfg.seed * 1_000_003 + CLASSES.index(cls) * 10_007 + i) % 899_999_999
            chunks.append(Chunk(cls, i, n, seed))
    return chunks


def _make_pythia(cfg: GenerateConfig, chunk: Chunk) -> Any:
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    settings = [
        f"Beams:eCM = {cfg.ecm}",
        f"PhaseSpace:pTHatMin = {cfg.pthat_min}",
        f"PhaseSpace:pTHatMax = {cfg.pthat_max}",
        "Next:numberCount = 0",
        "Print:quiet = on",
        "Random:setSeed = on",
        f"Random:seed = {chunk.seed}",
        *PROCESSES[chunk.cls],
    ]
    for line in settings:
        if not pythia.readString(line):
            raise RuntimeError(f"Pythia rejected setting {line!r}")
    if not pythia.init():
        raise RuntimeError(f"Pythia failed to initialise for class {chunk.cls}")
    return pythia


def _delta_r(eta1: float, phi1: float, eta2: float, phi2: float) -> float:
    dphi = (phi1 - phi2 + np.pi) % (2 * np.pi) - np.pi
    return float(np.hypot(eta1 - eta2, dphi))


def _decay_quarks(event: Any, i: int) -> list[Any]:
    """Quark daughters of the last copy of resonance ``i`` (following a top's W down to its quarks)."""
    last = event[event[i].iBotCopyId()]
    out = []
    for d in last.daughterList():
        p = event[d]
        if p.idAbs() == 24:
            out.extend(_decay_quarks(event, d))
        elif 1 <= p.idAbs() <= 5:
            out.append(p)
    return out


def _targets(event: Any, cls: str) -> list[tuple[str, list[Any]]]:
    """Objects a jet may be matched to: (kind, particles that must lie inside it)."""
    if cls in BACKGROUND:
        return [("parton", [p]) for p in event if p.status() == -23 and (p.idAbs() <= 5 or p.idAbs() == 21)]
    pid = 6 if cls == "t" else BOSON_ID[cls]
    out = []
    for i in range(event.size()):
        p = event[i]
        if p.idAbs() == pid and event[p.mother1()].idAbs() != pid:  # first copy of each resonance
            quarks = _decay_quarks(event, i)
            if len(quarks) == (3 if cls == "t" else 2):
                out.append(("decay", quarks))
    return out


def _matches(cls: str, jet: Any, target: tuple[str, list[Any]]) -> bool:
    kind, parts = target
    eta, phi = jet.eta(), jet.phi_std()
    if kind == "parton":
        p = parts[0]
        if _delta_r(eta, phi, p.eta(), p.phi()) >= 0.4:
            return False
        return p.idAbs() == 21 if cls == "g" else p.idAbs() in LIGHT_QUARKS
    return all(_delta_r(eta, phi, p.eta(), p.phi()) < 0.8 for p in parts)


def jet_arrays(jet: Any, n_particles: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, 4) constituents (eta_rel, phi_rel, pt_rel, valid) and (4,) jet features (pT, eta, mass, n)."""
    cons = jet.constituents()
    kin = np.array([(c.pt(), c.eta(), c.phi_std()) for c in cons], dtype=np.float64)  # (n, 3)
    kin = kin[np.argsort(-kin[:, 0], kind="stable")][:n_particles]
    pt_jet, eta_jet, phi_jet = jet.pt(), jet.eta(), jet.phi_std()
    out = np.zeros((n_particles, 4), dtype=np.float32)
    k = len(kin)
    out[:k, 0] = kin[:, 1] - eta_jet
    out[:k, 1] = (kin[:, 2] - phi_jet + np.pi) % (2 * np.pi) - np.pi
    out[:k, 2] = kin[:, 0] / pt_jet
    out[:k, 3] = 1.0
    feats = np.array([pt_jet, eta_jet, jet.m(), len(cons)], dtype=np.float32)
    return out, feats


def _event_jets(pythia: Any, cfg: GenerateConfig, cls: str, jet_def: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    import fastjet

    event = pythia.event
    inputs = [
        fastjet.PseudoJet(p.px(), p.py(), p.pz(), p.e())
        for p in event
        if p.isFinal() and p.isVisible() and abs(p.eta()) < cfg.max_eta
    ]
    if not inputs:
        return []
    seq = fastjet.ClusterSequence(inputs, jet_def)
    targets = _targets(event, cls)
    out = []
    for jet in fastjet.sorted_by_pt(seq.inclusive_jets(cfg.jet_pt_min)):
        if jet.pt() > cfg.jet_pt_max:
            continue
        if any(_matches(cls, jet, t) for t in targets):
            out.append(jet_arrays(jet, cfg.n_particles))
    return out


def generate_chunk(cfg: GenerateConfig, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    import fastjet

    pythia = _make_pythia(cfg, chunk)
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, cfg.jet_radius)
    particles: list[np.ndarray] = []
    jets: list[np.ndarray] = []
    max_events = MAX_EVENTS_PER_JET * chunk.n_jets + 1000
    for _ in range(max_events):
        if len(jets) >= chunk.n_jets:
            break
        if not pythia.next():
            continue
        for p, j in _event_jets(pythia, cfg, chunk.cls, jet_def)[: chunk.n_jets - len(jets)]:
            particles.append(p)
            jets.append(j)
    if len(jets) < chunk.n_jets:
        raise RuntimeError(
            f"class {chunk.cls}: only {len(jets)} of {chunk.n_jets} jets passed the selection in {max_events} "
            "events; widen the pT windows"
        )
    return np.stack(particles), np.stack(jets)


def worker_init() -> None:
    # Pythia and FastJet print banners on stdout; the parent owns the terminal (progress bar) and Ctrl-C: it ends
    # the pool (a worker's own KeyboardInterrupt would only print a traceback)
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)


def run_chunk(args: tuple[GenerateConfig, Chunk]) -> tuple[Chunk, np.ndarray, np.ndarray]:
    cfg, chunk = args
    p, j = generate_chunk(cfg, chunk)
    return chunk, p, j


def generate(
    cfg: GenerateConfig, out_dir: str | Path, on_chunk: Callable[[Chunk], None] | None = None
) -> dict[str, Path]:
    """Generate every class and write ``{class}.hdf5`` files atomically into ``out_dir``."""
    require_generator()
    chunks = plan_chunks(cfg)
    results: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=cfg.workers, initializer=worker_init) as pool:
        for chunk, p, j in pool.imap_unordered(run_chunk, [(cfg, c) for c in chunks]):
            results[(chunk.cls, chunk.index)] = (p, j)
            if on_chunk is not None:
                on_chunk(chunk)
    return write_classes(out_dir, chunks, results)


def write_classes(out_dir: str | Path, chunks: list[Chunk],
                  results: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]) -> dict[str, Path]:
    """``{class}.hdf5`` of the chunks done (``results`` by (class, chunk index)), each class's in chunk order (the
    output depends on the seed alone); a class with none done is not written."""
    written = {}
    for cls in dict.fromkeys(c.cls for c in chunks):
        parts = [results[(c.cls, c.index)] for c in chunks if c.cls == cls and (c.cls, c.index) in results]
        if parts:
            written[cls] = write_jetnet(class_file(out_dir, cls), np.concatenate([p for p, _ in parts]),
                                        np.concatenate([j for _, j in parts]))
    return written
