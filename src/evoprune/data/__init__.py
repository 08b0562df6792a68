"""Text for calibration, training and evaluation, as packed token blocks.

A source string names the text (`embedded`, a file, a folder, a `save_to_disk` dataset, a hub dataset);
`load_documents` reads it into documents, `split_documents` assigns each document to exactly one
of the `calibration` / `train` / `eval` splits by a hash of its text, and `token_blocks` returns
one split tokenized and packed into `[n, seq_len]` blocks, cached on disk.
"""

from .blocks import check_seq_len, data_blocks, pack_split, token_blocks
from .embedded import EMBEDDED_CORPORA, EMBEDDED_SOURCE
from .packing import PackedSplit
from .sources import load_documents
from .splits import DEFAULT_FRACTIONS, SPLITS, SplitFractions, document_digest, split_documents, split_of

__all__ = [
    "DEFAULT_FRACTIONS",
    "EMBEDDED_CORPORA",
    "EMBEDDED_SOURCE",
    "SPLITS",
    "PackedSplit",
    "SplitFractions",
    "check_seq_len",
    "data_blocks",
    "document_digest",
    "load_documents",
    "pack_split",
    "split_documents",
    "split_of",
    "token_blocks",
]
