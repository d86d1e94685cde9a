"""Sources: a dataset loaded through Hugging Face `datasets` into the sample table."""

from pipelines.sources.dataset import LoadedDataset, Modality, SourceError
from pipelines.sources.hashes import FileHashCache
from pipelines.sources.load import load_source

__all__ = ["FileHashCache", "LoadedDataset", "Modality", "SourceError", "load_source"]
