"""The shared core of the zoo: buffers, stochastic approximation, networks, the trainer.

Nothing in ``rl`` knows a particular agent.
"""

__version__ = "0.1.0"
