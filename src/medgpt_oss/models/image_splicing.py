"""Images into the text: projected patch features overwrite the image-token positions, in order.

Images enter the text as runs of the image token (``tokens_per_image`` copies per image, laid out by
:mod:`medgpt_oss.data.conversation`). Any number of images per sample (multi-view, longitudinal) and samples
without images are handled the same way. The training model (:class:`medgpt_oss.models.vlm.MedVLM`) and the
exported one (:class:`medgpt_oss.models.export_model.MedVLMForConditionalGeneration`) both mix this in, so an
export splices images exactly as training did.
"""

from __future__ import annotations

import torch


class ImageSplicing:
    """Mixin for an ``nn.Module`` with ``encoder``, ``projector``, ``llm`` (with ``embed(input_ids)``),
    ``tokens_per_image`` and ``image_token_id``."""

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, tokens_per_image, llm_hidden]."""
        encoder_dtype = next(self.encoder.parameters()).dtype
        return self.projector(self.encoder(pixel_values.to(encoder_dtype)))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.llm.embed(input_ids)
        is_image = input_ids == self.image_token_id
        num_slots = int(is_image.sum())
        num_images = 0 if pixel_values is None else pixel_values.shape[0]
        if num_slots != num_images * self.tokens_per_image:
            raise ValueError(
                f"batch has {num_slots} image-token slots but {num_images} images x "
                f"{self.tokens_per_image} tokens each; the data was tokenized for a different encoder/projector"
            )
        if num_images == 0:
            if self.training and torch.distributed.is_available() and torch.distributed.is_initialized():
                # Every rank must run the same modules: a rank whose batch is text-only would skip the vision
                # tower, so DDP would wait for the projector's gradients and FSDP's vision all-gathers would go
                # unmatched (a hang). A blank image through encoder + projector, added times zero, changes nothing.
                size = self.encoder.image_size
                blank = torch.zeros(1, 3, size, size, device=embeds.device)
                embeds = embeds + self.encode_images(blank).sum().to(embeds.dtype) * 0.0
            return embeds
        features = self.encode_images(pixel_values).to(embeds.dtype)
        return embeds.masked_scatter(is_image.unsqueeze(-1), features.reshape(-1, features.shape[-1]))
