"""Sample-quality metrics for trained generators."""
