"""lthdiff: lottery tickets (sparse, trainable subnetworks) in diffusion models.

Vocabulary, used everywhere: a *mask* is ``{parameter name: bool tensor}`` (True = kept); a
*ticket* is a mask plus the rewind weights it is trained from; a *round* is one
prune -> rewind -> retrain step of iterative magnitude pruning (round 0 trains the dense model).
"""
__version__ = "0.1.0"
