"""The ``baseline`` job: per-clip features, then a one-vs-rest logistic regression per fold.

Two variants share everything after the features (folds, fits, records,
``oof.npy`` / ``test.npy``, submission):

- ``variant = "embedding"`` (default): CNN14 embeddings of a centre crop;
- ``variant = "mel_stats"``: the mean, std and max of each log-mel bin over the
  whole clip (``engine.features.melstats``, the spec's ``audio.sample_rate``
  and ``features`` settings), from the decoded-waveform cache. No pretrained
  weights; a cheap, different second opinion for blends.

The quick first run on a dataset. Every curated and test clip is embedded
once (``engine.embeddings``: the pretrained CNN14 on its own log-mel, batched,
cached under ``<dataset root>/.fsat-cache/embeddings/`` so later baseline runs
skip the network entirely). Then, for each stored fold, the embeddings of
the fold's training clips are standardised (``StandardScaler`` fitted on those
clips only) and one ``LogisticRegression(C=spec.C)`` per class is fitted; a
class with no positive (or no negative) clip in the fold's training rows
predicts its constant training rate instead. The fold's models score its
validation clips (out-of-fold) and the test clips; the test prediction is the
mean of the fold models' probabilities.

Records: per-fold LWLRAP (``best_epoch`` NULL: there are no epochs), per-class
LRAP per fold and out-of-fold (fold -1), the run's CV (out-of-fold) LWLRAP
and, when the dataset has ``test_ground_truth.csv``, its test LWLRAP.
Artifacts under ``runs/<run_id>/``: ``config.json``, ``embeddings.json``
(clips computed / reused and clips/s per split), ``oof.npy`` (float64, curated
CSV order), ``test.npy`` (float64, ``sample_submission.csv`` order),
``logreg.npz`` (each fold's scaler and classifier weights) and
``submission.csv``. Probabilities are kept in float64, as the infer job keeps
them: in float32 confident scores near 1 merge into ties, which changes
LWLRAP and a rank blend's order.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.atomic import save_npz
from engine.data.cache import build_cache, cache_dir_for
from engine.embeddings import EmbeddingResult, embed_table, load_embedder
from engine.errors import ConfigError
from engine.jobs.context import JobContext
from engine.runs.scores import record_fold_scores, record_oof_scores, score_test
from engine.specs import BaselineSpec, FeaturesSection, spec_hash, to_dict

MODEL_LABEL = "cnn14-emb+logreg"
MEL_STATS_LABEL = "mel-stats+logreg"
#: lbfgs iterations per class; weak regularisation on separable folds needs more than sklearn's 100.
MAX_ITER = 1000


@dataclass
class FoldModel:
    """One fold's standardisation and per-class logistic regressions, as plain arrays."""

    mean: np.ndarray          # [D] scaler mean (fold training rows)
    scale: np.ndarray         # [D] scaler scale
    coef: np.ndarray          # [C, D] zero for constant classes
    intercept: np.ndarray     # [C]
    constant: np.ndarray      # [C] predicted rate of a class that could not be fitted, NaN when fitted
    not_converged: int        # classes whose solver stopped at MAX_ITER


def fit_one_vs_rest(train_x: np.ndarray, train_y: np.ndarray, eval_x: Sequence[np.ndarray], *, C: float,
                    max_iter: int = MAX_ITER) -> tuple[list[np.ndarray], FoldModel]:
    """Fit a standardised one-vs-rest logistic regression and score ``eval_x``.

    ``train_x`` [n, D] embeddings, ``train_y`` [n, C] multi-hot labels. A
    ``StandardScaler`` is fitted on ``train_x``; each class with both
    positive and negative rows gets ``LogisticRegression(C=C)`` (lbfgs, L2);
    any other class predicts its training rate (0 without positives).
    Returns the probabilities ``[m, C]`` for every array of ``eval_x`` and the
    fitted FoldModel.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    train_x = np.asarray(train_x, dtype=np.float64)
    train_y = np.asarray(train_y)
    n_classes, dim = train_y.shape[1], train_x.shape[1]
    scaler = StandardScaler().fit(train_x)
    z_train = scaler.transform(train_x)
    z_eval = [scaler.transform(np.asarray(x, dtype=np.float64)) for x in eval_x]
    probs = [np.empty((len(x), n_classes), dtype=np.float64) for x in eval_x]
    coef = np.zeros((n_classes, dim), dtype=np.float32)
    intercept = np.zeros(n_classes, dtype=np.float32)
    constant = np.full(n_classes, np.nan, dtype=np.float32)
    not_converged = 0
    # These products are small: BLAS threads cost more in synchronisation than
    # they save (about 10x slower on two cores), so the fits run single-threaded.
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for k in range(n_classes):
            y = train_y[:, k] > 0
            if y.all() or not y.any():
                constant[k] = float(y.mean())
                for p in probs:
                    p[:, k] = constant[k]
                continue
            before = len(caught)
            clf = LogisticRegression(C=C, max_iter=max_iter).fit(z_train, y)
            not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught[before:])
            coef[k], intercept[k] = clf.coef_[0], clf.intercept_[0]
            for p, z in zip(probs, z_eval):
                p[:, k] = clf.predict_proba(z)[:, 1]
    model = FoldModel(mean=scaler.mean_.astype(np.float32), scale=scaler.scale_.astype(np.float32), coef=coef,
                      intercept=intercept, constant=constant, not_converged=int(not_converged))
    return probs, model


def _embed(ctx: JobContext, table, embedder, spec: BaselineSpec, cache_dir, *, start: float,
           span: float) -> EmbeddingResult:
    def progress(done: int, total: int, rate: float) -> None:
        speed = "" if np.isnan(rate) else f" ({rate:.1f} clips/s)"
        ctx.progress(start + span * done / max(total, 1), f"embedding {table.split} {done}/{total}{speed}")

    result = embed_table(table, embedder, crop_seconds=spec.audio.crop_seconds, batch_size=spec.batch_size,
                         cache_dir=cache_dir, progress=progress)
    speed = "" if np.isnan(result.clips_per_sec) else f" at {result.clips_per_sec:.1f} clips/s"
    ctx.log(f"{table.split}: {result.computed} clips embedded{speed}, {result.reused} reused from the cache "
            f"({result.cache_file})")
    return result


def _mel_stats(ctx: JobContext, spec: BaselineSpec, layout, cache_dir) -> tuple[np.ndarray, np.ndarray, dict]:
    """Log-mel statistics of every curated and test clip (decoded once into the waveform cache)."""
    from engine.features.frontend import LogMelFrontend
    from engine.features.melstats import mel_statistics

    f = spec.features
    frontend = LogMelFrontend(sample_rate=spec.audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
                              win_length=f.win_length, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax)
    out, summary = [], {}
    for table, start in ((layout.curated, 0.02), (layout.test, 0.42)):
        cache = build_cache(table, sample_rate=spec.audio.sample_rate, cache_dir=cache_dir, progress=ctx.progress,
                            start=start, span=0.2)
        t0 = time.perf_counter()

        def progress(done: int, total: int, split: str = table.split, start: float = start) -> None:
            ctx.progress(start + 0.2 + 0.2 * done / max(total, 1), f"mel statistics {split} {done}/{total}")

        out.append(mel_statistics(frontend, [cache.get(i) for i in range(len(cache))], progress=progress))
        seconds = time.perf_counter() - t0
        summary[table.split] = {"clips": len(cache), "seconds": round(seconds, 3)}
        ctx.log(f"{table.split}: mel statistics of {len(cache)} clips in {seconds:.1f}s")
    return out[0], out[1], summary


def run(ctx: JobContext) -> str:
    """Embed, fit per fold, record scores and write artifacts; returns a summary message."""
    spec: BaselineSpec = ctx.load_spec()
    store, run_id = ctx.store, ctx.run_id
    opened = ctx.open_run(device=spec.device, device_field="device", data_root=spec.data.root, n_folds=spec.n_folds,
                          fold_seed=spec.fold_seed, folds_field="n_folds", group_column=spec.data.group_column)
    folder, device, data = opened.folder, opened.device, opened.data
    layout, classes = data.layout, data.classes
    Y = layout.curated.Y
    mel_stats = spec.variant == "mel_stats"
    embedder = None if mel_stats else load_embedder(spec.checkpoint, spec.encoder_run_id, store=store,
                                                    device=device)
    if embedder is not None and spec.audio.sample_rate != embedder.sample_rate:
        raise ConfigError(f"the CNN14 encoder takes {embedder.sample_rate} Hz audio; set audio.sample_rate = "
                          f"{embedder.sample_rate}", field="audio.sample_rate")
    config = to_dict(spec)
    from_run = embedder is not None and embedder.identity.get("kind") == "run-encoder"
    identity = ({"kind": "mel-stats", "features": to_dict(spec.features), "sample_rate": spec.audio.sample_rate}
                if embedder is None else embedder.identity)
    new = opened.record(name=spec.name or run_id, model=MEL_STATS_LABEL if mel_stats else MODEL_LABEL, config=config,
                        config_hash=spec_hash(spec), parent_run_id=spec.encoder_run_id if from_run else None,
                        extra={"embedder": identity,
                               "precision": "float32" if embedder is None else embedder.precision})
    ctx.log(f"{'new run' if new else 'resuming run'} {run_id} on {device}; {len(Y)} curated and "
            f"{len(layout.test)} test clips, {len(classes)} classes; "
            + (f"mel statistics of {spec.features.n_mels} bins" if mel_stats else f"embedder {identity}"))
    if embedder is not None and not from_run and spec.features != FeaturesSection():
        ctx.log("note: the features settings are not used; a PANNs checkpoint embeds from its own log-mel")

    t_run = time.perf_counter()
    cache_dir = cache_dir_for(spec.data.root, spec.data.cache_dir)
    if embedder is None:
        X, X_test, summary = _mel_stats(ctx, spec, layout, cache_dir)
        folder.save_json("features.json", {"kind": "mel-stats", **summary, "dim": int(X.shape[1])})
    else:
        curated = _embed(ctx, layout.curated, embedder, spec, cache_dir, start=0.02, span=0.6)
        test = _embed(ctx, layout.test, embedder, spec, cache_dir, start=0.62, span=0.2)
        folder.save_json("embeddings.json", {"curated": curated.summary(), "test": test.summary(),
                                             "embedder": embedder.identity, "precision": embedder.precision,
                                             "crop_seconds": spec.audio.crop_seconds})
        del embedder
        X, X_test = curated.embeddings, test.embeddings

    n, n_classes = Y.shape
    oof = np.full((n, n_classes), np.nan, dtype=np.float64)
    test_sum = np.zeros((len(X_test), n_classes), dtype=np.float64)
    models: list[FoldModel] = []
    for fold in range(spec.n_folds):
        ctx.progress(0.82 + 0.16 * fold / spec.n_folds, f"fold {fold}: fitting {n_classes} classifiers")
        val_idx = np.flatnonzero(data.folds == fold)
        train_idx = np.flatnonzero(data.folds != fold)
        (val_pred, test_pred), model = fit_one_vs_rest(X[train_idx], Y[train_idx], [X[val_idx], X_test],
                                                       C=spec.C)
        models.append(model)
        oof[val_idx] = val_pred
        test_sum += test_pred
        # Scored on the values that are saved, so the records match oof.npy exactly.
        score = record_fold_scores(store, run_id, fold, Y[val_idx], oof[val_idx], classes)
        constant = int(np.isfinite(model.constant).sum())
        ctx.log(f"fold {fold}: lwlrap {score:.4f} on {len(val_idx)} clips"
                + (f"; {constant} classes without positives predict a constant" if constant else "")
                + (f"; {model.not_converged} fits stopped at {MAX_ITER} iterations" if model.not_converged else ""))

    folder.save_array(folder.oof, oof)
    test_pred = test_sum / spec.n_folds
    folder.save_array(folder.test, test_pred)
    save_npz(folder.path / "logreg.npz", **{name: np.stack([getattr(m, name) for m in models])
                                            for name in ("mean", "scale", "coef", "intercept", "constant")})

    cv, covered = record_oof_scores(store, run_id, Y, oof, classes)
    test_score, _ = score_test(layout, test_pred, submission=folder.submission if spec.write_submission else None,
                               log=ctx.log)
    if test_score is not None:
        ctx.log(f"test lwlrap {test_score:.4f} on {len(layout.test_truth.fnames)} clips with ground truth")
    store.finish_run(run_id, status="done", cv_lwlrap=cv, test_lwlrap=test_score)
    ctx.log(f"out-of-fold lwlrap {cv:.4f} over {covered} clips ({time.perf_counter() - t_run:.0f}s)")
    return f"CV lwlrap {cv:.4f}" + (f", test {test_score:.4f}" if test_score is not None else "")
