#!/usr/bin/env python3
"""Zoo producer "sklearn": classical models converted by skl2onnx and onnxmltools.

Deployment pipelines hand a compiler these too: scikit-learn pipelines (scalers, PCA, linear models, SVMs,
tree ensembles, k-nearest neighbours, MLPs) and LightGBM boosters, trained here on the datasets that
scikit-learn ships (iris, digits, breast cancer, diabetes: nothing downloaded). They mix the standard
domain with ``ai.onnx.ml`` ops (``Scaler``, ``LinearClassifier``, ``TreeEnsembleClassifier``,
``SVMClassifier``, ``ZipMap``, ...) that only onnxruntime runs, so they test the compiled/onnxruntime
partition: which nodes compile, which stay in onnxruntime, and models with nothing to compile at all.
Classifiers are converted with ``zipmap=False`` (the ``_nozipmap`` models): skl2onnx's default ``ZipMap``
output is a sequence of maps, which lepton-opt refuses in one line naming that option
(``tests/test_real_exports.py``).

Usage: python benchmarks/zoo/export_sklearn.py --out DIR [--only a,b] [--list] [--force]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn import datasets

from _exporter_cli import dims_note, run

OPSET = {"": 15, "ai.onnx.ml": 3}


def _data(name: str):
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return x.astype(np.float32), y


def _skl(build: Callable, dataset: str, zipmap: bool = True, options: dict | None = None):
    """A scikit-learn estimator fitted on a bundled dataset, converted by skl2onnx."""

    def export():
        x, y = _data(dataset)
        model = build().fit(x, y)
        opts = dict(options or {})
        if not zipmap and hasattr(model, "predict_proba"):
            opts = {id(model): {"zipmap": False, **opts.get(id(model), {})}}
        proto = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
                                target_opset=OPSET, options=opts or None)
        return proto, x, f"scikit-learn {sklearn.__version__}, skl2onnx {skl2onnx.__version__}"

    return export


def _lightgbm(dataset: str, objective: str):
    def export():
        import lightgbm
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat

        x, y = _data(dataset)
        cls = lightgbm.LGBMClassifier if objective != "regression" else lightgbm.LGBMRegressor
        model = cls(n_estimators=30, num_leaves=15, random_state=0, verbose=-1).fit(x, y)
        proto = onnxmltools.convert_lightgbm(model, initial_types=[("input", MLFloat([None, x.shape[1]]))],
                                             target_opset=OPSET[""], zipmap=False)
        return proto, x, f"lightgbm {lightgbm.__version__}, onnxmltools {onnxmltools.__version__}"

    return export


def _mlp():
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0)


def _pipe_logreg():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))


def _pca_svc():
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import SVC

    return make_pipeline(PCA(n_components=16, random_state=0), SVC(probability=True, random_state=0))


def _forest():
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0)


def _gbr():
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=40, max_depth=3, random_state=0)


def _knn():
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=5)


def _ridge_poly():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, PolynomialFeatures

    return make_pipeline(MinMaxScaler(), PolynomialFeatures(2), Ridge(alpha=1.0))


def _kmeans():
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=8, n_init=3, random_state=0)


MODELS: dict[str, tuple[Callable, str]] = {
    "skl_mlp_digits_nozipmap": (_skl(_mlp, "digits", zipmap=False), "MLPClassifier (64, 32) on digits"),
    "skl_logreg_iris_nozipmap": (_skl(_pipe_logreg, "iris", zipmap=False),
                                 "StandardScaler + LogisticRegression on iris"),
    "skl_pca_svc_digits_nozipmap": (_skl(_pca_svc, "digits", zipmap=False), "PCA(16) + SVC(rbf) on digits"),
    "skl_forest_digits_nozipmap": (_skl(_forest, "digits", zipmap=False),
                                   "RandomForestClassifier (20 trees, depth 8) on digits"),
    "skl_gbr_diabetes": (_skl(_gbr, "diabetes"), "GradientBoostingRegressor (40 trees) on diabetes"),
    "skl_knn_iris_nozipmap": (_skl(_knn, "iris", zipmap=False), "KNeighborsClassifier (k=5) on iris"),
    "skl_ridge_poly_diabetes": (_skl(_ridge_poly, "diabetes"),
                                "MinMaxScaler + PolynomialFeatures(2) + Ridge on diabetes"),
    "skl_kmeans_digits": (_skl(_kmeans, "digits"), "KMeans (8 clusters) on digits: labels and distances"),
    "lgbm_breast_cancer": (_lightgbm("breast_cancer", "binary"), "LightGBM classifier (30 trees) on breast cancer"),
}


def export_one(name: str, out: Path, force: bool) -> bool:
    dst, side = out / f"{name}.onnx", out / f"{name}.json"
    if dst.exists() and side.exists() and not force:
        return False
    build, architecture = MODELS[name]
    proto, x, versions = build()
    onnx.checker.check_model(proto)
    tmp = dst.with_suffix(".onnx.tmp")
    onnx.save(proto, tmp)
    tmp.replace(dst)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    ml_ops = sorted({n.op_type for n in proto.graph.node if n.domain == "ai.onnx.ml"})
    # eight rows of the training data's range, as the zoo driver draws uniform inputs
    low, high = float(np.percentile(x, 5)), float(np.percentile(x, 95))
    meta = {"name": name, "producer": "sklearn", "producer_version": versions, "architecture": architecture,
            "task": "classical ML", "opset": opset,
            "inputs": {"input": {"shape": [8, int(x.shape[1])], "dtype": "float32", "low": low, "high": high}},
            "notes": "; ".join(filter(None, [f"ai.onnx.ml ops: {', '.join(ml_ops)}" if ml_ops else "",
                                             dims_note(proto), f"{len(proto.graph.node)} nodes"]))}
    side.write_text(json.dumps(meta, indent=1) + "\n")
    return True


if __name__ == "__main__":
    sys.exit(run(__doc__.splitlines()[0], MODELS, export_one))
