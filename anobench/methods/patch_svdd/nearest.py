"""1-nearest-neighbour L2 distances from query embeddings to a bank: plain torch, or faiss-cpu indexes.

Both sides are first centred on the bank's mean (a translation leaves every distance unchanged). Why:
embeddings can sit in a tiny region far from the origin — a trained Patch SVDD encoder's bank on MVTec
bottle has every norm ≈ 0.297 and nearest-neighbour distances ≈ 3e-4 — and there the expanded form
below loses most of its float32 digits to cancellation (||q||² ≈ 0.09 against squared distances
≈ 1e-7): uncentred, faiss's flat search picked a farther neighbour than the true one for 69 % of
bottle's test patches (distances 11 % too large on average). Centred, the norms are of the order of
the spread and the search is exact to float32 rounding.

Exact by default: squared distances ||q||² − 2 q·b + ||b||² in memory-bounded blocks (one matrix
multiply per block of `chunk_size` query rows × as many bank rows as keep the block at
`block_elements` floats — 16 MiB on CPU, cache-sized (docs/performance.md#patch-svdd-nearest-neighbour-search),
256 MiB on GPU), a running minimum over the bank blocks, then the winning
neighbour's distance recomputed directly as ||q − b*||, so the returned distance carries no
cancellation error at all; centring is what makes the *choice* of neighbour exact.

The official code uses a kd-tree (K = 64) and NGT approximate search (K = 32) instead; on GPU, or
with the bank sizes of MVTec AD (≈680k K = 32 vectors per category), the blocked exact search is
fast enough that we do not approximate by default.

Approximate mode (`subsample_bank`): keep a random subset of the bank (fixed seed). Search time and
bank memory shrink proportionally; every distance can only grow (the nearest neighbour in a subset is
never nearer than in the full bank), so scores are biased upward, most for normal patches whose
near-duplicates were dropped — which lowers the contrast between normal and anomalous patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from anobench.errors import ConfigError


def subsample_bank(bank: torch.Tensor, subsample: float | int | None, seed: int = 0) -> torch.Tensor:
    """Random subset of the bank rows: None = all; float in (0, 1] = fraction; int ≥ 1 = count.

    The subset is drawn with its own generator seeded by `seed`, so it does not touch (or depend
    on) the global RNG state.
    """
    if subsample is None:
        return bank
    n = bank.shape[0]
    if isinstance(subsample, bool):
        raise ValueError(f"bank_subsample must be a fraction in (0, 1] or a count >= 1, got {subsample!r}")
    if isinstance(subsample, float):
        if not 0.0 < subsample <= 1.0:
            raise ValueError(f"bank_subsample as a fraction must be in (0, 1], got {subsample}")
        keep = max(1, round(subsample * n))
    elif isinstance(subsample, int):
        if subsample < 1:
            raise ValueError(f"bank_subsample as a count must be >= 1, got {subsample}")
        keep = min(subsample, n)
    else:
        raise ValueError(f"bank_subsample must be a float, an int or None, got {type(subsample).__name__}")
    if keep >= n:
        return bank
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=generator)[:keep].sort().values
    return bank[index.to(bank.device)]


def bank_mean(bank: torch.Tensor) -> torch.Tensor:
    """Mean bank row, accumulated in float64 and returned in the bank's dtype (the centring offset)."""
    return bank.mean(dim=0, dtype=torch.float64).to(bank.dtype)


@torch.no_grad()
def nearest_distances(
    queries: torch.Tensor,
    bank: torch.Tensor,
    chunk_size: int = 4096,
    return_index: bool = False,
    block_elements: int | None = None,
    center: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """L2 distance from each query row (N×D) to its nearest bank row (M×D); returns N (and the index).

    `chunk_size` query rows are processed at a time; each distance block holds at most
    `block_elements` floats (default 2²² on CPU, 2²⁶ on GPU) but always at least one bank row.
    `center=False` skips centring on the bank mean (for callers whose inputs are already centred).
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected N×D queries and M×D bank, got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if bank.shape[0] == 0:
        raise ValueError("the nearest-neighbour bank is empty")
    if chunk_size < 1:
        raise ValueError(f"nn chunk_size must be >= 1, got {chunk_size}")
    queries = queries.to(bank.dtype)
    if center:
        mean = bank_mean(bank)
        queries, bank = queries - mean, bank - mean
    if block_elements is None:
        block_elements = 2**26 if bank.is_cuda else 2**22
    bank_rows = max(1, block_elements // min(chunk_size, max(1, queries.shape[0])))
    bank_sq = (bank * bank).sum(dim=1)
    n = queries.shape[0]
    best_index = torch.empty(n, dtype=torch.long, device=queries.device)
    for q0 in range(0, n, chunk_size):
        q = queries[q0 : q0 + chunk_size]
        best = torch.full((q.shape[0],), float("inf"), dtype=bank.dtype, device=q.device)
        best_i = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        for b0 in range(0, bank.shape[0], bank_rows):
            b = bank[b0 : b0 + bank_rows]
            # ||b||² − 2 q·b (||q||² is constant per row, so it does not change the argmin)
            partial = torch.addmm(bank_sq[b0 : b0 + bank_rows], q, b.T, beta=1.0, alpha=-2.0)
            value, index = partial.min(dim=1)
            better = value < best
            best = torch.where(better, value, best)
            best_i = torch.where(better, index + b0, best_i)
        best_index[q0 : q0 + chunk_size] = best_i
    distances = (queries - bank[best_index]).norm(dim=1)
    return (distances, best_index) if return_index else distances


# --- the search settings ---------------------------------------------------------------------------
NN_SEARCHES = ("exact", "ivf", "hnsw", "torch")
APPROXIMATE_SEARCHES = ("ivf", "hnsw")


@dataclass(frozen=True)
class NearestNeighbourSettings:
    """How the 1-NN search is done: the ``nn_*`` keys of conf/method/patch_svdd.yaml as one validated object.

    Built once by the Lightning module from its constructor arguments (the config keys are unchanged, so
    are config hashes) and handed, as is, to the torch model and to every `NearestNeighbourIndex`.
    ``search``: ``exact`` / ``ivf`` / ``hnsw`` through faiss-cpu, ``torch`` the blocked torch search (also
    what any CUDA bank uses); ``chunk_size``: query rows per block of the torch search; ``nlist`` /
    ``nprobe``: ivf's k-means cells and the cells searched per query; ``hnsw_m`` / ``ef_construction`` /
    ``ef_search``: hnsw's links per node and candidates kept while building and per query.
    """

    search: str = "exact"
    chunk_size: int = 4096
    nlist: int = 1024
    nprobe: int = 8
    hnsw_m: int = 16
    ef_construction: int = 40
    ef_search: int = 64

    # config key (method.module.<key>) and smallest valid value of each integer field
    _INTEGERS = {"chunk_size": ("nn_chunk_size", 1), "nlist": ("nn_nlist", 1), "nprobe": ("nn_nprobe", 1),
                 "hnsw_m": ("nn_hnsw_m", 2), "ef_construction": ("nn_ef_construction", 1),
                 "ef_search": ("nn_ef_search", 1)}

    def __post_init__(self) -> None:
        if self.search not in NN_SEARCHES:
            raise ConfigError(f"method.module.nn_search={self.search!r} is invalid; expected one of "
                              f"{', '.join(NN_SEARCHES)}")
        for name, (key, low) in self._INTEGERS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"method.module.{key}={value!r} is invalid; expected an integer >= {low}")

    @property
    def approximate(self) -> bool:
        """Whether the search itself may return a farther neighbour than the nearest (ivf, hnsw)."""
        return self.search in APPROXIMATE_SEARCHES

    def library(self, on_cuda: bool) -> str:
        """What searches: torch (``search: torch``, or a bank in GPU memory, which faiss-cpu cannot read) or faiss-cpu."""
        return "torch" if self.search == "torch" or on_cuda else "faiss-cpu"

    def as_record(self, *, bank_rows: dict[str, int], on_cuda: bool,
                  bank_subsample: float | int | None = None) -> dict[str, Any]:
        """result.json ``evaluation.nearest_neighbour``: how the search was done over banks of `bank_rows` rows."""
        info: dict[str, Any] = {
            "search": self.search,
            "library": self.library(on_cuda),
            "approximate": self.approximate or bank_subsample is not None,
            "centred": True,  # searched around the bank mean (module docstring); older results searched uncentred
            "bank_subsample": bank_subsample,
            "bank_rows": dict(bank_rows),
        }
        if self.search == "ivf":
            info.update(nlist=self.nlist, nprobe=self.nprobe)
        elif self.search == "hnsw":
            info.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, ef_search=self.ef_search)
        return info


# --- faiss (CPU) ---------------------------------------------------------------------------------


class NearestNeighbourIndex:
    """1-NN index over a bank, searched as `NearestNeighbourSettings` say: through faiss-cpu ``exact``
    (IndexFlatL2), ``ivf`` (IndexIVFFlat) or ``hnsw`` (IndexHNSWFlat).

    ``exact`` returns the same neighbour as brute force (faiss's BLAS search, multithreaded);
    ``ivf`` clusters the bank into `nlist` k-means cells (trained on at most 256 × nlist bank rows,
    fixed seed) and searches only the `nprobe` cells nearest to each query; ``hnsw`` walks a
    hierarchical small-world graph (`hnsw_m` links per node, built with `ef_construction`, searched
    with `ef_search` candidates). Both approximate searches return distances ≥ the exact ones, like
    the official code's NGT for K = 32. The HNSW graph is built in parallel, so the neighbours it finds
    (not the exact ones) can differ slightly from run to run; ivf is deterministic.
    ``torch`` keeps the plain blocked torch search above (also what a CUDA bank uses, since
    faiss-cpu cannot search GPU memory). Every mode searches the bank centred on its mean (see the
    module docstring), and the returned distance is recomputed directly as ||q − b*|| from the
    chosen neighbour, so no float32 cancellation reaches the scores.
    """

    def __init__(self, bank: torch.Tensor, settings: NearestNeighbourSettings | None = None, seed: int = 0) -> None:
        settings = settings or NearestNeighbourSettings()
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"expected a non-empty M×D bank, got {tuple(bank.shape)}")
        search = settings.search
        self.bank = bank
        self.settings = settings
        self.mean = bank_mean(bank)
        self.index = None
        self._mean_cpu = self.mean.detach().to("cpu", torch.float32)
        if search == "torch" or bank.is_cuda:
            self.centred = bank - self.mean
            return
        import faiss  # faiss-cpu, a dependency; imported here so torch-only paths do not need it

        data = (bank.detach().to("cpu", torch.float32) - self._mean_cpu).contiguous().numpy()
        d = data.shape[1]
        if search == "exact":
            self.index = faiss.IndexFlatL2(d)
        elif search == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, settings.hnsw_m)
            self.index.hnsw.efConstruction = settings.ef_construction
            self.index.hnsw.efSearch = settings.ef_search
        else:
            nlist = min(settings.nlist, data.shape[0])
            self.quantizer = faiss.IndexFlatL2(d)
            self.index = faiss.IndexIVFFlat(self.quantizer, d, nlist, faiss.METRIC_L2)
            self.index.cp.seed = seed
            train = data
            if data.shape[0] > 256 * nlist:  # faiss's own cap, drawn reproducibly here
                rows = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))[: 256 * nlist]
                train = data[rows.sort().values.numpy()]
            self.index.train(train)
            self.index.nprobe = min(settings.nprobe, nlist)
        self.index.add(data)

    @torch.no_grad()
    def query(self, queries: torch.Tensor, return_index: bool = False):
        """L2 distance from each query row to its nearest bank row (and the row index)."""
        if queries.ndim != 2 or queries.shape[1] != self.bank.shape[1]:
            raise ValueError(f"expected N×{self.bank.shape[1]} queries, got {tuple(queries.shape)}")
        if self.index is None:
            centred = queries.to(self.bank.dtype) - self.mean
            _, index = nearest_distances(centred, self.centred, chunk_size=self.settings.chunk_size, return_index=True,
                                         center=False)
        else:
            q = (queries.detach().to("cpu", torch.float32) - self._mean_cpu).contiguous()
            _, found = self.index.search(q.numpy(), 1)
            index = torch.from_numpy(found[:, 0]).to(torch.long)
            # ivf / hnsw: a query whose probed cells are empty gets -1; fall back to the exact search for those
            missing = index < 0
            if missing.any():
                index[missing] = nearest_distances(q[missing] + self._mean_cpu, self.bank.to("cpu", torch.float32),
                                                   return_index=True)[1]
            index = index.to(self.bank.device)
        distances = (queries.to(self.bank.dtype) - self.bank[index]).norm(dim=1)
        return (distances, index) if return_index else distances
