"""What RL changes, through the lenses of method.md 9: weights (sparsity, rank, spectrum), outputs (KL, pass@k)
and where the update meets the EAP circuit. Engines only: plain arguments in, arrays and dicts out."""

from .circuit import block_eap_mass, top_blocks, update_meets_circuit
from .outputs import answer_kls, crossover_k, pass_at_k, pass_at_k_curve, powers_of_two, token_kl
from .weights import (aggregate, basis_angles, block_of, changed_mask, effective_rank, jaccard, jaccard_chance,
                      mask_overlap, matrix_lenses, matrix_type, numerical_rank, principal_angles, singular_values,
                      top_singular, update_spectrum, update_sparsity, weight_rows)

__all__ = ["aggregate", "basis_angles", "answer_kls", "block_eap_mass", "block_of", "changed_mask", "crossover_k", "effective_rank",
           "jaccard", "jaccard_chance", "mask_overlap", "matrix_lenses", "matrix_type", "numerical_rank", "pass_at_k",
           "pass_at_k_curve", "powers_of_two", "principal_angles", "singular_values", "token_kl", "top_blocks", "top_singular", "update_spectrum",
           "update_meets_circuit", "update_sparsity", "weight_rows"]
