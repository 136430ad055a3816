"""Sample-quality metrics for trained generators, and their names (one list for the whole project:
what the registry tags, what a search may rank by, what the quality curves draw)."""

MIXTURE_METRICS = ("modes", "high_quality", "reverse_kl")  # 2-D mixtures (metrics.mixture)
IMAGE_METRICS = ("precision", "recall", "density", "coverage")  # images, with fd_<net> and kid_<net> (metrics.image)
CLASS_METRICS = ("classes_covered", "class_kl")  # labeled images, when the feature network classifies


def is_quality(key: str) -> bool:
    """A quality metric (not a loss, a rate or a standard error)."""
    return key in MIXTURE_METRICS + IMAGE_METRICS + CLASS_METRICS or (
        key.startswith(("fd_", "kid_")) and not key.endswith("_se")
    )
