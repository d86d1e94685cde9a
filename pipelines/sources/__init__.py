"""Sources: a dataset loaded through Hugging Face `datasets` into the sample table."""

from leanset.pipelines.sources.dataset import LoadedDataset, Modality, SourceError
from leanset.pipelines.sources.hashes import FileHashCache
from leanset.pipelines.sources.load import load_source

__all__ = ["FileHashCache", "LoadedDataset", "Modality", "SourceError", "load_source"]
