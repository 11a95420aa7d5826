"""`facegate train triplet`: metric learning with the triplet loss, on a CPU.

L(A, P, N) = max(‖f(A) − f(P)‖² − ‖f(A) − f(N)‖² + α, 0) on L2-normalised embeddings. Batches hold P identities
× K samples; triplets are mined online inside each batch:
- batch-hard: for every anchor, its farthest positive and its closest negative;
- semi-hard (FaceNet): for every anchor–positive pair, the closest negative that is still farther than the
  positive; when none is, the farthest of the negatives (all closer than the positive) — the least hard.
The fraction of active triplets (loss > 0) is reported per epoch: it falls as the embedding learns the batch.

Two modes. "net": a small CNN (export/nets/small_embed.py) from scratch on aligned crops cut by the device's
own detector and alignment, with augmentation. "head": a linear projection of a frozen backbone's embeddings
(e.g. SFace 128 → 64); the backbone embeddings are computed once and cached (export/train/data.py), so an
epoch is a few milliseconds of matrix work.

Each epoch writes a checkpoint (model, optimiser, RNG states, history) atomically; `resume` continues from
it and reproduces the uninterrupted run, since all randomness flows from the seed through saved states.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edge.errors import FacegateError
from edge.eval.lfw import pair_identities
from export.train.checkpoint import load_checkpoint, save_checkpoint

MINING = ("batch-hard", "semi-hard")
MODES = ("net", "head")


# -- the loss and the miners ---------------------------------------------------------------------------------------
def triplet_loss(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-triplet max(‖a − p‖² − ‖a − n‖² + α, 0); inputs are (T, D) L2-normalised embeddings."""
    return torch.clamp(((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + margin, min=0.0)


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """(N, N) squared Euclidean distances, computed directly (no 2 − 2·cos rounding below zero)."""
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def mine_batch_hard(d: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) indices: per anchor, the hardest positive and the hardest negative.

    Anchors without a positive in the batch are skipped.
    """
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye
    has_pos = pos_mask.any(1) & (~same).any(1)
    pos = torch.where(pos_mask, d, torch.full_like(d, -float("inf"))).argmax(1)
    neg = torch.where(~same, d, torch.full_like(d, float("inf"))).argmin(1)
    anchors = torch.nonzero(has_pos).flatten()
    return anchors, pos[anchors], neg[anchors]


def mine_semi_hard(d: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) indices: every anchor–positive pair, with its semi-hard negative.

    The negative is the closest one farther from the anchor than the positive; if every negative is closer
    than the positive, the farthest of them.
    """
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    a_idx, p_idx = torch.nonzero(same & ~eye, as_tuple=True)
    neg_mask = ~same[a_idx]  # (T, N)
    keep = neg_mask.any(1)
    a_idx, p_idx, neg_mask = a_idx[keep], p_idx[keep], neg_mask[keep]
    dan = d[a_idx]  # (T, N)
    dap = d[a_idx, p_idx][:, None]
    outside = neg_mask & (dan > dap)
    inf = torch.full_like(dan, float("inf"))
    closest_outside = torch.where(outside, dan, inf).argmin(1)
    farthest_inside = torch.where(neg_mask, dan, -inf).argmax(1)
    neg = torch.where(outside.any(1), closest_outside, farthest_inside)
    return a_idx, p_idx, neg


def mine(d: torch.Tensor, labels: torch.Tensor, mining: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if mining == "batch-hard":
        return mine_batch_hard(d, labels)
    if mining == "semi-hard":
        return mine_semi_hard(d, labels)
    raise FacegateError(f"mining must be one of {', '.join(MINING)}, not {mining!r}")


def batch_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float, mining: str
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean triplet loss over the mined triplets of one batch, and the batch's statistics."""
    with torch.no_grad():  # mining picks indices only; the loss is recomputed with gradients below
        a, p, n = mine(squared_distances(emb.detach()), labels, mining)
    losses = triplet_loss(emb[a], emb[p], emb[n], margin)
    with torch.no_grad():
        dap = ((emb[a] - emb[p]) ** 2).sum(1)
        dan = ((emb[a] - emb[n]) ** 2).sum(1)
    stats = {"triplets": len(a), "active": int((losses > 0).sum()), "loss_sum": float(losses.detach().sum()),
             "d_ap": float(dap.mean()) if len(a) else 0.0, "d_an": float(dan.mean()) if len(a) else 0.0}
    return (losses.mean() if len(a) else emb.sum() * 0.0), stats


# -- settings and state --------------------------------------------------------------------------------------------
@dataclass
class TripletSettings:
    mode: str = "net"
    epochs: int = 10
    p: int = 32  # identities per batch
    k: int = 4  # samples per identity
    margin: float = 0.2
    mining: str = "semi-hard"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    seed: int = 0
    augment: bool = True
    size: tuple[int, int] = (64, 64)  # net mode: the crop size (W, H)
    dim: int = 128  # net mode: embedding size; head mode: the head's output size
    backbone: str = "sface"  # head mode
    init: str = "pca"  # head mode: see INITS
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FacegateError(f"mode must be one of {', '.join(MODES)}")
        if self.mining not in MINING:
            raise FacegateError(f"mining must be one of {', '.join(MINING)}")
        if self.init not in INITS:
            raise FacegateError(f"init must be one of {', '.join(INITS)}")
        if self.p < 2 or self.k < 2:
            raise FacegateError("a batch needs P ≥ 2 identities and K ≥ 2 samples each")
        self.size = (int(self.size[0]), int(self.size[1]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TripletSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: (tuple(v) if k == "size" else v) for k, v in d.items() if k in known})


INITS = ("pca", "lda", "orthogonal")  # head mode starts: principal directions, discriminant directions, random


def checkpoint_path(out: Path) -> Path:
    return Path(out) / "checkpoint.pt"


# -- the loop ------------------------------------------------------------------------------------------------------
# A batch maker turns row indices (and the epoch's RNG, for augmentation) into the model's input tensor.
BatchMaker = Callable[[np.ndarray, np.random.Generator], torch.Tensor]


def train(model: nn.Module, labels: np.ndarray, make_batch: BatchMaker, settings: TripletSettings, out: Path,
          resume: bool = False, progress: bool = True,
          on_epoch: Callable[[int, nn.Module], dict[str, float]] | None = None,
          stop_after: int | None = None) -> list[dict[str, Any]]:
    """Train `model` on the rows of `labels`; writes out/checkpoint.pt, out/log.csv, out/settings.json.

    Returns the history: one row per epoch (loss, active fraction, mean distances, seconds, and whatever
    `on_epoch` measures). Epoch 0 is the untrained model, measured before the first step. `stop_after` ends
    the run after that epoch, as an interruption would (the schedule still spans `settings.epochs`).
    """
    from tqdm import tqdm

    from export.train.data import pk_batches

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, settings.threads))
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, settings.epochs))
    history: list[dict[str, Any]] = []
    start = 1
    ckpt = checkpoint_path(out)
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt)
        if state["settings"] != settings.to_dict():
            raise FacegateError(f"{ckpt}: was trained with other settings; use another --out or the same ones")
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        start = state["epoch"] + 1
    else:
        (out / "settings.json").write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
        row: dict[str, Any] = {"epoch": 0}
        if on_epoch:
            model.eval()
            row.update(on_epoch(0, model))
        history.append(row)
    labels_t = torch.from_numpy(np.asarray(labels, np.int64))
    for epoch in range(start, settings.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        batches = list(pk_batches(labels, settings.p, settings.k, rng))
        totals = {"triplets": 0, "active": 0, "loss_sum": 0.0, "d_ap": 0.0, "d_an": 0.0}
        bar = tqdm(batches, desc=f"epoch {epoch}/{settings.epochs}", unit="batch", file=sys.stderr,
                   disable=not progress or None, leave=False, dynamic_ncols=True)
        for rows in bar:
            x = make_batch(rows, rng)
            loss, st = batch_loss(model(x), labels_t[torch.from_numpy(rows)], settings.margin, settings.mining)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for key in totals:
                totals[key] += st[key] * (st["triplets"] if key.startswith("d_") else 1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", active=f"{st['active'] / max(1, st['triplets']):.2f}")
        sched.step()
        n = max(1, totals["triplets"])
        row = {"epoch": epoch, "loss": totals["loss_sum"] / n, "active_fraction": totals["active"] / n,
               "triplets": int(totals["triplets"]), "d_ap": totals["d_ap"] / n, "d_an": totals["d_an"] / n,
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2)}
        if on_epoch:
            model.eval()
            row.update(on_epoch(epoch, model))
        history.append(row)
        if progress:
            print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  file=sys.stderr, flush=True)
        save_checkpoint(ckpt, {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "numpy_rng": rng.bit_generator.state,
                               "torch_rng": torch.get_rng_state(), "epoch": epoch, "history": history,
                               "settings": settings.to_dict()})
        write_log(out / "log.csv", history)
        if stop_after is not None and epoch >= stop_after:
            break
    return history


def write_log(path: Path, history: Sequence[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


# -- embedding with a trained model --------------------------------------------------------------------------------
def embed_tensor(model: nn.Module, x: torch.Tensor | np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            chunk = x[s:s + batch]
            t = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk, np.float32))
            outs.append(model(t).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


# -- evaluation under the LFW protocols ---------------------------------------------------------------------------
def dev_accuracy(vectors: dict[str, np.ndarray], dev_train: Sequence[Any], dev_test: Sequence[Any]) -> dict[str, float]:
    """View 1: cosine threshold chosen on DevTrain, accuracy on DevTest (and on DevTrain, for reference)."""
    from edge.eval.lfw import accuracy_at, best_threshold, pair_scores

    s_tr = pair_scores(list(dev_train), vectors)
    s_te = pair_scores(list(dev_test), vectors)
    y_tr = np.array([p.same for p in dev_train])
    t = best_threshold(s_tr, y_tr)
    return {"dev_train_accuracy": accuracy_at(s_tr, y_tr, t),
            "dev_test_accuracy": accuracy_at(s_te, np.array([p.same for p in dev_test]), t), "dev_threshold": t}


# -- mode "net": a small CNN from scratch on aligned crops ----------------------------------------------------------
@dataclass
class NetData:
    crops: np.ndarray  # (N, H, W, 3) BGR uint8, aligned by the device's detector and alignment
    rels: list[str]
    train_rows: np.ndarray  # rows used for training (identities disjoint from the held-out pairs)
    labels: np.ndarray  # identity label per training row


def net_preprocessing(settings: TripletSettings):
    """The manifest the export will carry, as far as edge.embed.to_input reads it: one preprocessing path."""
    from edge.models.manifest import InputSpec, Manifest, Normalisation
    from export.nets.small_embed import SMALL_MEAN, SMALL_STD

    return Manifest(name="small-embed", task="embed", file="", sha256="", source={}, licence="proprietary",
                    runtime="onnxruntime", input=InputSpec(size=settings.size, layout="NCHW", colour="RGB"),
                    normalisation=Normalisation(mean=SMALL_MEAN, std=SMALL_STD))


def run_net(images: Path, out: Path, settings: TripletSettings, holdout: Sequence[Any], dev_train: Sequence[Any],
            dev_test: Sequence[Any], cache_dir: Path | None = None, resume: bool = False, progress: bool = True,
            max_identities: int | None = None) -> dict[str, Any]:
    """Train SmallEmbed from scratch on every identity the `holdout` pairs do not name; View 1 each epoch."""
    from edge.embed import to_input
    from export.nets.small_embed import SmallEmbed
    from export.train.data import Labelled, aligned_crops, augment, list_people

    held = pair_identities(holdout)
    people = list_people(images, exclude=held)
    if max_identities:
        multi = [(n, r) for n, r in people if len(r) >= 2][:max_identities]
        people = multi
    train_rels = [r for _, rs in people for r in rs]
    eval_rels = sorted({r for p in [*dev_train, *dev_test] for r in (p.a, p.b)})
    all_rels = sorted(set(train_rels) | set(eval_rels))
    crops, kept = aligned_crops(images, all_rels, settings.size, cache_dir=cache_dir)
    index = {r: k for k, r in enumerate(kept)}
    rows = np.array([index[r] for r in train_rels if r in index], np.int64)
    lab = Labelled.from_rels([kept[k] for k in rows])
    pre = net_preprocessing(settings)
    eval_rows = np.array([index[r] for r in eval_rels if r in index], np.int64)
    eval_x = to_input(crops[eval_rows], pre)

    def make_batch(batch_rows: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        x = crops[rows[batch_rows]]
        x = augment(x, rng) if settings.augment else x
        return torch.from_numpy(to_input(x, pre))

    def on_epoch(epoch: int, model: nn.Module) -> dict[str, float]:
        vecs = embed_tensor(model, eval_x)
        return dev_accuracy({kept[k]: v for k, v in zip(eval_rows, vecs, strict=True)}, dev_train, dev_test)

    torch.manual_seed(settings.seed)  # the same seed gives the same initial weights: epoch 0 is that net
    model = SmallEmbed(dim=settings.dim)
    history = train(model, lab.labels, make_batch, settings, out, resume=resume, progress=progress, on_epoch=on_epoch)
    torch.save(model.state_dict(), Path(out) / "weights.pt")
    return {"mode": "net", "history": history, "weights": str(Path(out) / "weights.pt"),
            "train_images": len(rows), "train_identities": len(lab.names),
            "held_out_identities": len(held), "random_init": history[0], "final": history[-1],
            "gain_pp": round((history[-1]["dev_test_accuracy"] - history[0]["dev_test_accuracy"]) * 100, 2)}


# -- mode "head": a projection of a frozen backbone's cached embeddings --------------------------------------------
def train_projection(vectors: np.ndarray, labels: np.ndarray, settings: TripletSettings, out: Path,
                     resume: bool = False, progress: bool = True,
                     on_epoch: Callable[[int, nn.Module], dict[str, float]] | None = None,
                     stop_after: int | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    from export.nets.small_embed import ProjectionHead

    torch.manual_seed(settings.seed)
    head = ProjectionHead(vectors.shape[1], settings.dim)
    if settings.init == "lda":
        weight, bias = lda_projection(vectors, labels, settings.dim)
        with torch.no_grad():
            head.linear.weight.copy_(torch.from_numpy(weight))
            head.linear.bias.copy_(torch.from_numpy(bias))
    elif settings.init == "pca":
        # Start from the subspace that best keeps the backbone's inner products (eigenvectors of XᵀX, uncentred:
        # cosine similarity is what the device compares), so training only has to refine a good projection.
        _, vecs = np.linalg.eigh(vectors.T.astype(np.float64) @ vectors)
        with torch.no_grad():
            head.linear.weight.copy_(torch.from_numpy(vecs[:, ::-1][:, :settings.dim].T.copy()))
    x = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))

    def make_batch(rows: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return x[torch.from_numpy(rows)]

    history = train(head, labels, make_batch, settings, out, resume=resume, progress=progress, on_epoch=on_epoch,
                    stop_after=stop_after)
    return head, history


def lda_projection(vectors: np.ndarray, labels: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear discriminant start for a head: the `dim` directions with the most spread between people per unit
    of spread within a person, as (weight (dim, D), bias (dim,)) applied to the raw vectors (bias centres them).

    Solves Sb v = λ Sw v with Sb the total covariance and Sw the pooled within-identity covariance (identities
    with ≥ 2 samples), through Sw's Cholesky factor; a tiny ridge keeps Sw invertible. The map is scaled as a
    whole (one factor, so the geometry is unchanged) to unit mean row norm, the scale the optimiser expects.
    """
    x = np.asarray(vectors, np.float64)
    labels = np.asarray(labels)
    mean = x.mean(axis=0)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    multi = counts[inverse] >= 2
    if multi.sum() <= x.shape[1]:
        raise FacegateError(f"LDA start needs more than {x.shape[1]} samples of identities with ≥ 2 images")
    centroids = np.zeros((len(counts), x.shape[1]))
    np.add.at(centroids, inverse, x)
    centroids /= counts[:, None]
    within = x[multi] - centroids[inverse[multi]]
    sw = within.T @ within / len(within)
    sw += 1e-6 * np.trace(sw) / len(sw) * np.eye(len(sw))
    total = np.cov((x - mean).T)
    inv_l = np.linalg.inv(np.linalg.cholesky(sw))
    _, q = np.linalg.eigh(inv_l @ total @ inv_l.T)
    p = inv_l.T @ q[:, ::-1][:, :dim]  # (D, dim)
    weight = p.T / np.linalg.norm(p, axis=0).mean()
    return weight.astype(np.float32), (-weight @ mean).astype(np.float32)


def project(head: nn.Module, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rels = sorted(vectors)
    if not rels:
        return {}
    out = embed_tensor(head, np.stack([vectors[r] for r in rels]))
    return dict(zip(rels, out, strict=True))


def run_head(images: Path, out: Path, settings: TripletSettings, holdout: Sequence[Any], dev_train: Sequence[Any],
             dev_test: Sequence[Any], cache_dir: Path | None = None, resume: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Train one projection head on every identity the `holdout` pairs do not name; View 1 each epoch."""
    from export.train.data import Labelled, embeddings, list_people

    held = pair_identities(holdout)
    rels = [r for _, rs in list_people(images) for r in rs]
    vecs = embeddings(images, rels, settings.backbone, cache_dir=cache_dir)
    train_rels = [r for r in rels if r in vecs and r.split("/")[0] not in held]
    lab = Labelled.from_rels(train_rels)
    eval_vecs = {r: vecs[r] for p in [*dev_train, *dev_test] for r in (p.a, p.b) if r in vecs}
    baseline = dev_accuracy(eval_vecs, dev_train, dev_test)

    def on_epoch(epoch: int, model: nn.Module) -> dict[str, float]:
        return dev_accuracy(project(model, eval_vecs), dev_train, dev_test)

    head, history = train_projection(np.stack([vecs[r] for r in train_rels]), lab.labels, settings, out,
                                     resume=resume, progress=progress, on_epoch=on_epoch)
    torch.save(head.state_dict(), Path(out) / "head.pt")
    return {"mode": "head", "backbone": settings.backbone, "history": history, "head": str(Path(out) / "head.pt"),
            "train_images": len(train_rels), "train_identities": len(lab.names), "held_out_identities": len(held),
            "backbone_dev": baseline, "final": history[-1]}


def cross_validate_projection(pairs: Sequence[Any], vectors: dict[str, np.ndarray], settings: TripletSettings,
                              out: Path, progress: bool = False) -> dict[str, Any]:
    """LFW View 2 for a projection head against its backbone's cosine.

    Per fold f, the head is trained on the images of every identity that fold f does not name (View 2's folds
    share no identity). Its threshold must come from the other nine folds, but those are its training
    identities, where a head fits genuine pairs closer than it will fit new people: a threshold chosen there
    is biased. So each of the nine folds g is scored by a head trained without f and g (nested), and the
    threshold is chosen on those out-of-sample scores; fold f is then scored by the head trained without f.
    """
    from edge.eval.lfw import accuracy_at, best_threshold, pair_scores
    from export.train.data import Labelled

    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    fold_ids = {int(f): pair_identities([p for p, g in zip(pairs, folds, strict=True) if g == f])
                for f in np.unique(folds)}
    base = pair_scores(list(pairs), vectors)

    def head_without(excluded: set[str], where: Path) -> nn.Module:
        rels = sorted(r for r in vectors if r.split("/")[0] not in excluded)
        lab = Labelled.from_rels(rels)
        head, _ = train_projection(np.stack([vectors[r] for r in rels]), lab.labels, settings, where,
                                   progress=progress)
        return head

    accs, base_accs = [], []
    for f, ids_f in fold_ids.items():
        inner = np.full(len(pairs), np.nan)
        for g, ids_g in fold_ids.items():
            if g != f:
                s = pair_scores(list(pairs), project(head_without(ids_f | ids_g, Path(out) / f"fold{f}-{g}"), vectors))
                inner[folds == g] = s[folds == g]
        scores = pair_scores(list(pairs), project(head_without(ids_f, Path(out) / f"fold{f}"), vectors))
        tr, te = folds != f, folds == f
        accs.append(accuracy_at(scores[te], same[te], best_threshold(inner[tr], same[tr])))
        base_accs.append(accuracy_at(base[te], same[te], best_threshold(base[tr], same[tr])))
    from export.train.verifier import summary

    head_s, base_s = summary(accs), summary(base_accs)
    return {"head": head_s | {"fold_accuracy": [round(a, 4) for a in accs]},
            "backbone": base_s | {"fold_accuracy": [round(a, 4) for a in base_accs]},
            "delta_pp": round((head_s["accuracy"] - base_s["accuracy"]) * 100, 3)}
