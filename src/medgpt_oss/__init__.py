"""medgpt-oss: a biomedical vision-language model in the MedGPT-oss recipe."""
