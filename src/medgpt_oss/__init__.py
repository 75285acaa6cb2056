"""medgpt-oss: a biomedical vision-language model in the MedGPT-oss recipe.

Exports of CLIP/SigLIP + ``mlp2x_gelu`` models are transformers' own LLaVA and load with
transformers alone; other exports use our model class, which ``import medgpt_oss.models.hf``
registers with transformers' Auto classes (see ``medgpt_oss.export``).
"""
