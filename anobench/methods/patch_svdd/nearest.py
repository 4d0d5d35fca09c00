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

    def searched(self, on_cuda: bool) -> str:
        """The search that runs: a bank in GPU memory always gets the exact blocked torch search, whatever
        ``nn_search`` asked for (faiss-cpu cannot read GPU memory), so a record must not call it ivf/hnsw."""
        return "torch" if on_cuda else self.search

    def as_record(self, *, bank_rows: dict[str, int], on_cuda: bool,
                  bank_subsample: float | int | None = None) -> dict[str, Any]:
        """result.json ``evaluation.nearest_neighbour``: how the search was done over banks of `bank_rows` rows
        (what ran; ``requested_search`` keeps the configured search where another one ran)."""
        search = self.searched(on_cuda)
        info: dict[str, Any] = {
            "search": search,
            "library": self.library(on_cuda),
            "approximate": search in APPROXIMATE_SEARCHES or bank_subsample is not None,
            "centred": True,  # searched around the bank mean (module docstring); older results searched uncentred
            "bank_subsample": bank_subsample,
            "bank_rows": dict(bank_rows),
        }
        if search != self.search:
            info["requested_search"] = self.search
        if search == "ivf":
            info.update(nlist=self.nlist, nprobe=self.nprobe)
        elif search == "hnsw":
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
        self.certified: CertifiedExactSearch | None = None
        self._mean_cpu = self.mean.detach().to("cpu", torch.float32)
        if search == "torch" or bank.is_cuda:
            self.centred = bank - self.mean
            return
        import faiss  # faiss-cpu, a dependency; imported here so torch-only paths do not need it

        data = (bank.detach().to("cpu", torch.float32) - self._mean_cpu).contiguous().numpy()
        d = data.shape[1]
        if search == "exact" and data.shape[0] >= CERTIFIED_MIN_ROWS:
            self.certified = CertifiedExactSearch(data, settings.nlist, settings.nprobe, seed)
            return
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
        if self.certified is not None:
            q = (queries.detach().to("cpu", torch.float32) - self._mean_cpu).contiguous()
            index = torch.from_numpy(self.certified.search(q.numpy())).to(self.bank.device)
        elif self.index is None:
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


# --- exact search with certified inverted-file answers ---------------------------------------------
CERTIFIED_MIN_ROWS = 1 << 16  # smaller banks are searched flat (fast enough; the k-means would not pay)
RERANK = 8  # candidates per query re-ranked in float64


class CertifiedExactSearch:
    """Exact 1-NN that scans only a few k-means cells for most queries, and proves each such answer nearest.

    An inverted file (faiss IndexIVFFlat, `nlist` cells, `nprobe` probed per query) proposes a neighbour b
    at distance r. A bank row x stored in an unprobed cell j cannot be nearer than r if the query q is
    farther than r from the region where cell j's rows can lie: with c the query's nearest centroid,
    every x of cell j satisfies ||x − c_j||² ≤ ||x − c||² + s_j (s_j: the cell's assignment slack, how much
    nearer to some other centroid any of its rows is than to c_j, measured in float64: 0 for an exact
    assignment, float32 rounding otherwise), a half-space whose distance from q is
    (||q − c_j||² − ||q − c||² − s_j) / (2 ||c_j − c||). If r is below that for every unprobed cell, b is
    the nearest row; every other query is searched over the whole bank (faiss IndexFlatL2). So the answer
    is always the exact nearest neighbour (tested against float64 brute force), and `certified_share`
    says how many queries skipped the full scan (docs/performance.md: bottle's K = 32 bank).
    """

    def __init__(self, data: "np.ndarray", nlist: int, nprobe: int, seed: int = 0) -> None:
        import faiss

        n, d = data.shape
        nlist = max(1, min(nlist, n // 64))
        self.quantizer = faiss.IndexFlatL2(d)
        self.ivf = faiss.IndexIVFFlat(self.quantizer, d, nlist, faiss.METRIC_L2)
        self.ivf.cp.seed = seed
        train = data
        if n > 256 * nlist:  # faiss's own cap, drawn reproducibly here
            rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: 256 * nlist]
            train = data[rows.sort().values.numpy()]
        self.ivf.train(train)
        self.ivf.add(data)
        self.nprobe = min(nprobe, nlist)
        self.flat = faiss.IndexFlatL2(d)
        self.flat.add(data)
        self.data = torch.from_numpy(data)
        self.centroids = torch.from_numpy(self.quantizer.reconstruct_n(0, nlist)).double()
        self.centroid_gaps = torch.cdist(self.centroids, self.centroids)  # ||c_i − c_j||
        self.slack = self._assignment_slack(torch.from_numpy(data), self._cells(n))
        self.queries = self.proven = 0  # over every search: `certified_share`

    def _cells(self, n: int) -> torch.Tensor:
        """The cell each bank row was stored in, read from the inverted lists themselves."""
        import faiss

        cells = torch.full((n,), -1, dtype=torch.long)
        lists = self.ivf.invlists
        for j in range(self.ivf.nlist):
            size = lists.list_size(j)
            if size:
                ids = faiss.rev_swig_ptr(lists.get_ids(j), size).copy()
                cells[torch.from_numpy(ids).long()] = j
        return cells

    def _sq_distances(self, rows: torch.Tensor) -> torch.Tensor:
        """Squared float64 distances of `rows` to every centroid."""
        rows = rows.double()
        return ((rows * rows).sum(1, keepdim=True) - 2 * rows @ self.centroids.T
                + (self.centroids * self.centroids).sum(1)).clamp_min_(0)

    def _assignment_slack(self, data: torch.Tensor, cells: torch.Tensor, block: int = 8192) -> torch.Tensor:
        slack = torch.zeros(len(self.centroids), dtype=torch.float64)
        for start in range(0, len(data), block):
            d2 = self._sq_distances(data[start:start + block])
            own = cells[start:start + block]
            excess = d2.gather(1, own[:, None])[:, 0] - d2.min(1).values
            slack.scatter_reduce_(0, own, excess, reduce="amax")
        return slack

    def search(self, queries: "np.ndarray") -> "np.ndarray":
        """The index of each query's nearest bank row (queries: N×D float32, centred as the bank).

        Probes `nprobe` cells, then 8 × `nprobe` for the queries not yet proven, then scans the whole bank for
        the rest; each pass keeps its `RERANK` nearest candidates and picks among them in float64, so float32
        rounding in faiss's distances never picks a farther row."""
        import numpy as np

        found = np.full(len(queries), -1, dtype=np.int64)
        todo = np.arange(len(queries))
        for nprobe in (self.nprobe, min(8 * self.nprobe, self.ivf.nlist)):
            if not len(todo):
                break
            subset = np.ascontiguousarray(queries[todo])
            probe_d2, probe = self.quantizer.search(subset, nprobe)
            self.ivf.nprobe = nprobe
            _, candidates = self.ivf.search_preassigned(subset, RERANK, probe, probe_d2)
            found[todo], proven = self._prove(subset, candidates, probe)
            todo = todo[~proven]
        if len(todo):
            subset = np.ascontiguousarray(queries[todo])
            _, candidates = self.flat.search(subset, RERANK)
            found[todo] = self._closest(torch.from_numpy(subset).double(), torch.from_numpy(candidates))[0]
        self.queries += len(queries)
        self.proven += len(queries) - len(todo)
        return found

    @property
    def certified_share(self) -> float | None:
        """Share of the queries searched so far whose answer was proven without scanning the whole bank."""
        return self.proven / self.queries if self.queries else None

    def _closest(self, rows: torch.Tensor, candidates: torch.Tensor) -> tuple["np.ndarray", torch.Tensor]:
        """Per row, the candidate (−1 = none) nearest in float64, and its distance (inf when none)."""
        valid = candidates >= 0
        vectors = self.data[candidates.clamp_min(0)].double()
        distances = (vectors - rows[:, None]).norm(dim=2).masked_fill(~valid, float("inf"))
        best, which = distances.min(dim=1)
        chosen = candidates.gather(1, which[:, None])[:, 0]
        return chosen.numpy(), best

    def _prove(self, queries: "np.ndarray", candidates: "np.ndarray", probe: "np.ndarray", block: int = 4096
               ) -> tuple["np.ndarray", "np.ndarray"]:
        """The best candidate of each query, and whether no row of an unprobed cell can be nearer."""
        import numpy as np

        chosen = np.empty(len(queries), dtype=np.int64)
        proven = np.zeros(len(queries), dtype=bool)
        for start in range(0, len(queries), block):
            rows = torch.from_numpy(queries[start:start + block]).double()
            chosen[start:start + block], radius = self._closest(rows, torch.from_numpy(candidates[start:start + block]))
            d2 = self._sq_distances(rows)
            probed = torch.from_numpy(probe[start:start + block]).long()
            nearest = probed[:, 0]
            bound = (d2 - d2.gather(1, nearest[:, None]) - self.slack) / (2 * self.centroid_gaps[nearest])
            bound.scatter_(1, probed, float("inf"))
            tolerance = 1e-9 * (rows.norm(dim=1) + self.centroids.norm(dim=1).max())  # float64 rounding of the bound
            proven[start:start + block] = (radius + tolerance < bound.min(1).values).numpy()
        return chosen, proven
