from .restormer import Restormer
