from .restormer import Restormer

__all__ = ["Restormer"]
