"""From a run to a Kaggle submission: the offline kernel pack, its rehearsal, lineage and leaderboard scores.

``pack`` writes the kernel and dataset folders, ``kernel`` is what runs on
Kaggle (from the pack's embedded sources), ``rehearse`` runs the kernel
without the project installed and projects its time, ``lineage`` links packs,
submissions and leaderboard scores, ``cli`` adds ``fsat kaggle`` and ``fsat lb``.
"""
