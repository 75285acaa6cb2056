"""Published data sets -> conversation records (one module per published format); see docs/data.md."""

from medgpt_oss.data.published.layout import Skip
from medgpt_oss.data.sources.base import Source, SourceLayoutError, SourceRecord

__all__ = ["Skip", "Source", "SourceLayoutError", "SourceRecord"]
