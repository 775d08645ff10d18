"""Every curation block, by the kind a curate spec names it with.

A new step is a module defining its block (see ``llm.data.block``) plus one entry here: the job
spec, the per-document pipeline and the funnel statistics all follow from this table. The order
is the order the spec's step choices are listed in.
"""

from llm.data.block import Block, DocumentBlock
from llm.data.c4 import C4BadWordsFilter, C4QualityFilter
from llm.data.decontam import DecontaminationFilter
from llm.data.dedup import ExactDedup
from llm.data.filters import GopherQualityFilter, LengthFilter
from llm.data.fineweb import FineWebQualityFilter
from llm.data.langid import LanguageFilter
from llm.data.minhash import MinHashDedup
from llm.data.normalize import Normalizer
from llm.data.pii import PIIRedactor
from llm.data.quality_filter import QualityClassifierFilter
from llm.data.repetition import GopherRepetitionFilter

BLOCKS: dict[str, type[Block]] = {
    block.kind: block
    for block in (
        Normalizer,
        LengthFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        C4QualityFilter,
        C4BadWordsFilter,
        FineWebQualityFilter,
        LanguageFilter,
        PIIRedactor,
        DecontaminationFilter,
        QualityClassifierFilter,
        ExactDedup,
        MinHashDedup,
    )
}


def document_block(kind: str, params: object) -> DocumentBlock:
    """The block that runs a per-document step of ``kind`` with ``params``."""
    block = BLOCKS[kind]
    if not issubclass(block, DocumentBlock) or block.on_corpus(params):
        raise ValueError(f"step {kind!r} is not a per-document step")
    return block.from_params(params)
