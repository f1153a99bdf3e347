"""Exact k nearest neighbours by tiled matrix products (never the full query x reference matrix).

Per block of ``chunk_size`` queries: the first ``SEED_TILES * ref_chunk`` reference vectors give each query a
provisional top-k and a threshold (its k-th smallest value there). Every later tile of ``ref_chunk`` reference
vectors only contributes its entries below that threshold, found through the tile's minimum over ``POOL`` strided
slabs and a sparse gather (far cheaper than a top-k over the tile); a per-row sort of the few candidates gives the
exact top-k. The squared-norm term is folded into the product (``[q, 1] . [-2r, |r|^2]``, inner size padded to a
multiple of 8) so each tile is one GEMM with no broadcast copy. Memory: ``chunk_size x SEED_TILES x ref_chunk``
floats per thread plus the candidates, whatever the reference size.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

SEED_TILES = 8
POOL = 16


def _block_smallest_k(q: torch.Tensor, ra: torch.Tensor, k: int, ref_chunk: int, buf: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    n, n_ref = q.shape[0], ra.shape[0]
    seed = min(n_ref, SEED_TILES * ref_chunk)
    first = torch.mm(q, ra[:seed].T, out=buf[:n * seed].view(n, seed))
    v, i = torch.topk(first, k, dim=1, largest=False, sorted=seed == n_ref)
    if seed == n_ref:
        return v, i
    threshold = v.amax(1, keepdim=True)
    rows = [torch.arange(n, device=q.device).repeat_interleave(k)]
    vals, cols = [v.reshape(-1)], [i.reshape(-1)]
    for r0 in range(seed, n_ref, ref_chunk):
        m = min(ref_chunk, n_ref - r0)
        tile = torch.mm(q, ra[r0:r0 + m].T, out=buf[:n * m].view(n, m))
        if m % POOL:
            rr, cc = torch.nonzero(tile < threshold, as_tuple=True)
            vv = tile[rr, cc]
        else:  # minimum over POOL strided slabs first: only the pooled columns below threshold are opened
            width = m // POOL
            rr, jj = torch.nonzero(tile.view(n, POOL, width).amin(1) < threshold, as_tuple=True)
            cc = (jj[:, None] + width * torch.arange(POOL, device=q.device)).reshape(-1)
            rr = rr.repeat_interleave(POOL)
            vv = tile[rr, cc]
            keep = vv < threshold[rr, 0]
            rr, cc, vv = rr[keep], cc[keep], vv[keep]
        rows.append(rr)
        vals.append(vv)
        cols.append(cc + r0)
    row, val, col = torch.cat(rows), torch.cat(vals), torch.cat(cols)
    order = torch.argsort(val, stable=True)
    order = order[torch.argsort(row[order], stable=True)]  # by row, ascending value within a row
    counts = torch.bincount(row, minlength=n)  # every row has at least its k seed candidates
    pick = order[(torch.cumsum(counts, 0) - counts)[:, None] + torch.arange(k, device=q.device)]
    return val[pick], col[pick]


def _smallest_k(qa: torch.Tensor, ra: torch.Tensor, k: int, chunk_size: int, ref_chunk: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest entries of each row of ``qa @ ra.T`` (ascending) and their column indices. On the CPU the
    query blocks are spread over torch's threads, each running single-threaded ops (coarse-grained parallelism:
    no per-op synchronisation, much steadier than intra-op threads on small shared machines)."""
    pad = -qa.shape[1] % 8  # GEMM kernels are much slower on inner sizes that are not a multiple of 8
    qa, ra = torch.nn.functional.pad(qa, (0, pad)), torch.nn.functional.pad(ra, (0, pad))
    starts = range(0, qa.shape[0], chunk_size)
    size = min(chunk_size, qa.shape[0]) * min(ra.shape[0], SEED_TILES * ref_chunk)
    threads = torch.get_num_threads()
    if qa.device.type != "cpu" or threads == 1 or len(starts) == 1:
        buf = torch.empty(size, dtype=qa.dtype, device=qa.device)
        parts = [_block_smallest_k(qa[s:s + chunk_size], ra, k, ref_chunk, buf) for s in starts]
    else:
        local = threading.local()

        def work(s: int) -> tuple[torch.Tensor, torch.Tensor]:
            if not hasattr(local, "buf"):
                local.buf = torch.empty(size, dtype=qa.dtype)
            return _block_smallest_k(qa[s:s + chunk_size], ra, k, ref_chunk, local.buf)

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(work, starts))
        finally:
            torch.set_num_threads(threads)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def knn_search(query: torch.Tensor, reference: torch.Tensor, k: int, chunk_size: int = 256, ref_chunk: int = 4096
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (N, k) ascending and reference indices (N, k)."""
    k = min(k, reference.shape[0])
    query, reference = query.float(), reference.float()
    qa = torch.cat([query, torch.ones_like(query[:, :1])], 1)
    ra = torch.cat([-2.0 * reference, (reference * reference).sum(1, keepdim=True)], 1)
    part, idx = _smallest_k(qa, ra, k, chunk_size, ref_chunk)  # |r|^2 - 2 q.r
    return (part + (query * query).sum(1, keepdim=True)).clamp_min(0).sqrt(), idx


@torch.no_grad()
def top_cosine(query: torch.Tensor, reference: torch.Tensor, k: int, chunk_size: int = 256, ref_chunk: int = 4096
               ) -> torch.Tensor:
    """The k largest dot products of each query with the reference (descending); cosines for unit vectors."""
    k = min(k, reference.shape[0])
    neg, _ = _smallest_k(query.float(), -reference.float(), k, chunk_size, ref_chunk)
    return -neg


def knn_classify(ref_emb: np.ndarray, ref_labels: np.ndarray, query_emb: np.ndarray, k: int = 30,
                 chunk_size: int = 256) -> np.ndarray:
    """Uniform-vote k-NN prediction (ties go to the lowest class index, as scikit-learn)."""
    ref = torch.as_tensor(ref_emb, dtype=torch.float32)
    _, idx = knn_search(torch.as_tensor(query_emb, dtype=torch.float32), ref, k, chunk_size)
    labels = torch.as_tensor(ref_labels, dtype=torch.long)
    n_classes = int(labels.max()) + 1
    votes = torch.nn.functional.one_hot(labels[idx], n_classes).sum(1)  # (N, k) -> (N, C)
    return votes.argmax(1).numpy()
