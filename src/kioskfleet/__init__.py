"""kioskfleet: fleet manager for self-service kiosks.

Layers (imports point down): ``cli``/``fleetsim`` compose ``agent`` and ``controller``;
``agent`` and ``controller`` never import each other; ``drivers`` import neither;
``protocol`` imports none of them.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
