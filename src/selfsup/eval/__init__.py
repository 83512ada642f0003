"""Evaluation protocols on frozen or fine-tuned encoders, collapse indicators and the report's data."""

from selfsup.eval.clustering import cluster_eval, clustering_scores
from selfsup.eval.collapse import effective_rank, embedding_std
from selfsup.eval.embed import save_embeddings
from selfsup.eval.features import extract_features
from selfsup.eval.finetune import balanced_subset, finetune, load_or_make_subset
from selfsup.eval.knn import knn_eval, knn_predict, knn_scores
from selfsup.eval.linear import linear_probe
from selfsup.eval.linear_aug import linear_eval_augmented
from selfsup.eval.summary import standard_metrics

__all__ = ["balanced_subset", "cluster_eval", "clustering_scores", "effective_rank", "embedding_std",
           "extract_features", "finetune", "knn_eval", "knn_predict", "knn_scores", "linear_eval_augmented",
           "linear_probe", "load_or_make_subset", "save_embeddings", "standard_metrics"]
