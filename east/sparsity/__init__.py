"""Sparse training: budgets, masks, scores, schedules and the methods built from them.

``presets`` (torch-free) holds the method table; ``build_sparsifier`` (in ``methods``, which
imports torch) builds the object the training loop drives. Import the submodules directly.
"""
