"""Robustness: threat models, attacks on a victim's observations and actions
(random, FGSM, PGD, critic and MAD attacks, the learned adversary's step),
their evaluation, and randomised-smoothing certificates. Built on `src` only,
so the learners (SA-PPO's inner maximisation) and the environment wrappers
can use it; the learned adversary and ATLA, which train agents, are in
`meta/adversary.py`."""
