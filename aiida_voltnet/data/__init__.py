"""AiiDA data plugins: the electrode dataset node and the trained voltage-model node."""
from .dataset import ElectrodeDataset
from .model import VoltageModelData

__all__ = ('ElectrodeDataset', 'VoltageModelData')
