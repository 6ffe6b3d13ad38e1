"""gla: Generalized Logit Adjustment for CLIP classifiers."""
__version__ = "0.1.0"
