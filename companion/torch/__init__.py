"""The PyTorch back end: the same names and numbers as :mod:`companion.tensorflow`."""

from ..core.clipping import Clip
from ..core.training import History, NonFiniteError
from ..core.runtime import share_cpu_between_frameworks
from ..core.pruning import CompressedSize
from .clipping import (adaptive_clip, clip_by_global_norm, clip_by_norm, clip_by_value,
                       clip_function, clip_grads_)
from .curvature import (hessian, hessian_diagonal, hutchinson_trace, hvp, obd_scores,
                        top_eigenvalue)
from .obs import obs_prune
from .layerwise import layerwise_obs_prune, wanda_scores
from .structured import prune_units, structured_scores
from .patterns import nm_masks
from .diagonals import ggn_diagonal
from .diagnostics import (GradientMonitor, global_norm, layer_norms, parameter_norms,
                          total_norm)
from .distributed import (DATA_PARALLEL_CLIPS, DataParallelPruning, DataParallelStep,
                          compare_data_parallel_clipping, data_parallel_pruning,
                          data_parallel_step, single_process_step)
from .mask_io import export_masks, import_masks, load_masks, save_masks
from .layout import (from_canonical, get_weights, parameter_names, set_weights, to_canonical,
                     trainable_parameters)
from .models import RecurrentLayer, ResidualMLP, mlp, rnn
from .pruning import (MovementScores, apply_masks, compressed_size, gradient_scores,
                      keep_masks_after_step,
                      magnitude_scores, masks_from_scores, prune, random_scores, snip_scores,
                      sparsity_report, taylor_scores)
from .runtime import as_tensor, device, seed_everything
from .schedules import (GradualPruningResult, constant_sparsity, polynomial_decay,
                        prune_gradually, pruning_steps)
from .schedules import warmup_schedule
from .attention import Transformer, causal_attention, transformer
from .training import evaluate, gradients, input_gradients, loss_value, predict, train

__all__ = [
    "seed_everything", "device", "as_tensor",
    "mlp", "rnn", "RecurrentLayer", "ResidualMLP", "trainable_parameters", "parameter_names",
    "get_weights", "set_weights", "to_canonical", "from_canonical",
    "loss_value", "gradients", "input_gradients", "predict", "evaluate", "train",
    "History", "NonFiniteError",
    "Clip", "clip_by_value", "clip_by_norm", "clip_by_global_norm", "adaptive_clip",
    "clip_function", "clip_grads_",
    "total_norm", "global_norm", "parameter_norms", "layer_norms", "GradientMonitor",
    "magnitude_scores", "random_scores", "gradient_scores", "snip_scores", "taylor_scores",
    "MovementScores",
    "masks_from_scores", "apply_masks", "prune", "keep_masks_after_step", "sparsity_report",
    "constant_sparsity", "polynomial_decay", "pruning_steps", "prune_gradually",
    "GradualPruningResult", "compressed_size", "CompressedSize",
    "hvp", "hessian", "hessian_diagonal", "hutchinson_trace", "top_eigenvalue",
    "obd_scores", "obs_prune", "wanda_scores", "nm_masks", "layerwise_obs_prune",
    "structured_scores",
    "prune_units", "ggn_diagonal",
    "save_masks", "load_masks", "export_masks", "import_masks",
    "data_parallel_step", "compare_data_parallel_clipping", "single_process_step",
    "DataParallelStep", "DATA_PARALLEL_CLIPS", "data_parallel_pruning", "DataParallelPruning",
    "warmup_schedule", "transformer", "Transformer", "causal_attention",
]

share_cpu_between_frameworks()
