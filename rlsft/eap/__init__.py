"""Edge attribution patching between an SFT and an RL model (method.md section 2).

select_samples -> cut_length / truncation_inputs (or answer_span / span_inputs) / collate -> edge_scores -> metrics
(METRICS, compare, loss_adjusted); patched_losses and faithfulness for the causal checks (2.7),
calibrate_temperature for matched loss (2.6).
"""

from .graph import Graph, build_graph, make_graph
from .metrics import (
    METRICS,
    activation_intensity,
    compare,
    compare_values,
    distribution_kurtosis,
    information_complexity,
    information_complexity_pooled,
    loss_adjusted,
    output_edge_entropy,
    per_sample,
    relative_change,
    sample_diversity,
)
from .calibration import calibrate_temperature, mean_self_entropy
from .patching import patched_losses
from .scores import (ARCHITECTURES, edge_scores, estimate_memory, mean_source_outputs, sample_losses,
                     source_outputs)
from .selection import (Selection, TruncatedInput, collate, cut_length, samples_hash, scored_inputs, select_samples,
                        select_shared, span_inputs, summed_positions, truncation_inputs)
from .span import answer_span
