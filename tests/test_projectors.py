import pytest
import torch

from medgpt_oss.models.projectors import LinearProjector, MLPProjector, PixelShuffleProjector


@pytest.mark.parametrize("cls", [LinearProjector, MLPProjector, PixelShuffleProjector])
def test_projector_maps_encoder_width_to_llm_width(cls):
    proj = cls(in_dim=32, out_dim=48)
    out = proj(torch.randn(3, 64, 32))
    assert out.shape == (3, proj.output_tokens(64), 48)


def test_pixel_shuffle_cuts_tokens_4x_and_folds_2x2_neighbours():
    proj = PixelShuffleProjector(in_dim=1, out_dim=4)
    assert proj.output_tokens(64) == 16
    # Token value = its (row, col) index on an 8x8 grid; each output token must see exactly one 2x2 block.
    grid = torch.arange(64, dtype=torch.float32).reshape(1, 64, 1)
    seen = {}
    proj.mlp = torch.nn.Identity()
    folded = proj(grid)[0]  # [16, 4]
    for out_index, values in enumerate(folded.tolist()):
        rows = {int(v) // 8 for v in values}
        cols = {int(v) % 8 for v in values}
        seen[out_index] = (rows, cols)
        assert len(rows) == 2 and len(cols) == 2 and max(rows) - min(rows) == 1 and max(cols) - min(cols) == 1
    # Output tokens are in raster order of the 4x4 coarse grid.
    assert [min(r) // 2 * 4 + min(c) // 2 for r, c in seen.values()] == list(range(16))


def test_pixel_shuffle_rejects_non_square_grids():
    with pytest.raises(ValueError, match="square patch grid"):
        PixelShuffleProjector(in_dim=8, out_dim=8).output_tokens(60)
