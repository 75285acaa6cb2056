"""Published data sets, read once: one reader per published format, yielding typed records.

A reader knows a data set's files, schema and quirks (file names, split files, answer types, image
folders) and yields small records -- :class:`~medgpt_oss.data.published.vqa.VQAQuestion`,
:class:`~medgpt_oss.data.published.pmc_vqa.MCQuestion`, :class:`~medgpt_oss.data.published.reports.Study`
-- or a :class:`~medgpt_oss.data.published.layout.Skip` naming a record it cannot read. The training
sources (``data/sources``) and the evaluation benchmarks (``eval/benchmarks``) only turn those records into
conversations and evaluation items, so the two can never read the same file differently.
"""
