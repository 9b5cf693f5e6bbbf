"""How good a network is: sampling, FID/KID and efficiency metrics, the verdict over seeds, ticket analyses across runs."""

from . import sampling
from .sampling import SAMPLERS, image_grid, pipeline, sample, scheduler, show_grid
from . import metrics
from .metrics import (EXTRACTORS, METRICS, QualityResult, compress, efficiency, evaluate, extractor, fid,
                      inception_available, kid, load_compressed, paired, reference_key, resolve_extractor,
                      save_compressed)
from . import verdict
from .verdict import (METRIC_LABELS, aggregate, headline, headline_text, matching_sparsity, quality_metric,
                      rows_from_runs, sparsities, summarize, ticket_vs_control)
from . import analysis
from .analysis import (allocation_block_sparsity, chance_jaccard, cka, cka_table, evaluate_accuracy, heatmap,
                       imp_accuracy, load_runs, mask_similarity, pivot, similarity_table, sparsity_table,
                       supermask_losses, weight_cka, with_dense_rows)

__all__ = ["sampling", "SAMPLERS", "image_grid", "pipeline", "sample", "scheduler", "show_grid", "metrics",
           "EXTRACTORS", "METRICS", "QualityResult", "compress", "efficiency", "evaluate", "extractor", "fid",
           "inception_available", "kid", "load_compressed", "paired", "reference_key", "resolve_extractor",
           "save_compressed", "verdict", "METRIC_LABELS", "aggregate", "headline", "headline_text",
           "matching_sparsity", "quality_metric", "rows_from_runs", "sparsities", "summarize",
           "ticket_vs_control", "analysis", "allocation_block_sparsity", "chance_jaccard", "cka", "cka_table",
           "evaluate_accuracy", "heatmap", "imp_accuracy", "load_runs", "mask_similarity", "pivot",
           "similarity_table", "sparsity_table", "supermask_losses", "weight_cka", "with_dense_rows"]
