"""Pure maths behind "how many experts are worth merging" (no I/O, seeds passed in)."""

from evomerge.theory.general_variance import (
    Theorem1Fire,
    covariance_from,
    delta_for,
    general_merged_variance,
    general_variance_curve,
    reaches_delta,
    theorem1_rule,
    theorem1_stop,
)
from evomerge.theory.geometry import (
    lora_subspace_angles,
    n_components_for,
    pairwise_cosine,
    pca_cumulative_variance,
    principal_angles,
    random_subspace_mean_angle,
)
from evomerge.theory.moments import GramAccumulator, gram_of
from evomerge.theory.online_rule import LawPeak, OnlineFire, gain_scale, law_peak, online_stop
from evomerge.theory.scaling_law import ScalingFit, fit_fitness_scaling, fit_scaling_law
from evomerge.theory.tails import excess_kurtosis, hill_tail_index, lora_singular_values, singular_value_tail, spectrum_summary
from evomerge.theory.variance import (
    adaptive_delta,
    estimate_sigma_rho,
    merged_variance,
    n_max,
    sigma_rho_from_gram,
    stop_index,
    uniform_merged_variance,
    variance_curve,
    variance_drop,
)
from evomerge.theory.width import (
    ellipsoid_width,
    ellipsoid_width_mc,
    gaussian_width_mc,
    redundancy_rhs,
    redundancy_threshold,
    width_curve,
)

__all__ = [
    "LawPeak", "OnlineFire", "Theorem1Fire", "covariance_from", "delta_for", "gain_scale", "general_merged_variance",
    "general_variance_curve", "law_peak", "online_stop", "reaches_delta", "theorem1_rule", "theorem1_stop",
    "GramAccumulator", "ScalingFit", "adaptive_delta", "ellipsoid_width", "ellipsoid_width_mc",
    "estimate_sigma_rho", "excess_kurtosis", "fit_fitness_scaling", "fit_scaling_law", "gaussian_width_mc",
    "gram_of", "hill_tail_index", "lora_singular_values", "lora_subspace_angles", "merged_variance", "n_components_for", "n_max",
    "pairwise_cosine", "pca_cumulative_variance", "principal_angles", "random_subspace_mean_angle", "redundancy_rhs", "redundancy_threshold",
    "sigma_rho_from_gram", "singular_value_tail", "spectrum_summary", "stop_index", "uniform_merged_variance", "variance_curve", "variance_drop",
    "width_curve",
]
