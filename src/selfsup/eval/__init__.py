"""Evaluation protocols on frozen or fine-tuned encoders."""

from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_eval, knn_predict, knn_scores
from selfsup.eval.linear import linear_probe

__all__ = ["extract_features", "knn_eval", "knn_predict", "knn_scores", "linear_probe"]
