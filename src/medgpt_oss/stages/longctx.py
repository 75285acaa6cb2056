"""Stage 2, long-context multimodal mid-training.

Multi-view (frontal + lateral) and longitudinal (prior images + prior report + current
images) studies mixed with single-image and text-only samples, at long sequence lengths
with packing (see conf/stage/longctx.yaml for the data mix).
"""

from medgpt_oss.stages.base import TunedStage


class LongContextStage(TunedStage):
    pass
