"""Edge attribution patching between an SFT and an RL model (method.md section 2).

select_samples -> cut_length / truncation_inputs / collate -> edge_scores -> metrics (summarize).
"""

from .graph import Graph, build_graph, make_graph
from .metrics import (
    activation_intensity,
    bootstrap_ci,
    distribution_kurtosis,
    information_complexity,
    output_edge_entropy,
    relative_change,
    sample_diversity,
    summarize,
)
from .scores import ARCHITECTURES, edge_scores, estimate_memory, sample_losses
from .selection import Selection, TruncatedInput, collate, cut_length, select_samples, truncation_inputs
