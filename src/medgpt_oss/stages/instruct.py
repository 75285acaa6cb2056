"""Stage 3, instruction tuning: closed/open/multiple-choice VQA, reports, text QA, multi-turn
(see conf/stage/instruct.yaml for the data mix)."""

from medgpt_oss.stages.base import TunedStage


class InstructStage(TunedStage):
    pass
