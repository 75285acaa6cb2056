"""InternVL-style dynamic tiling: a high-resolution image -> a grid of encoder-size tiles + a thumbnail.

The released MedGPT-oss feeds CLIP-L/336 up to 12 tiles plus a thumbnail per image. The grid
(columns x rows) is the one whose aspect ratio is closest to the image's, among all grids with
``min_tiles <= columns * rows <= max_tiles``; the image is resized to exactly that grid and cut
into tiles in row-major order; when there is more than one tile, a thumbnail of the whole
image follows them, so the model always sees the global view too. This reproduces InternVL's
``dynamic_preprocess`` / ``find_closest_aspect_ratio`` (OpenGVLab/InternVL), tie-break included.
"""

from __future__ import annotations

from PIL import Image

RESAMPLE = Image.Resampling.BICUBIC


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (columns, rows) with min_tiles <= columns * rows <= max_tiles, fewest tiles first."""
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    grids = {(i, j) for i in range(1, max_tiles + 1) for j in range(1, max_tiles + 1)
             if min_tiles <= i * j <= max_tiles}
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def choose_grid(width: int, height: int, tile_size: int, min_tiles: int = 1, max_tiles: int = 12) -> tuple[int, int]:
    """The (columns, rows) grid for a ``width x height`` image (InternVL's ``find_closest_aspect_ratio``).

    Ties in aspect-ratio distance (e.g. 1x1, 2x2, 3x3 for a square image) go to the larger grid
    only while the image has more than half the pixels that grid would show: a small image is not
    blown up into many tiles.
    """
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for columns, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


def tile_image(image: Image.Image, tile_size: int, max_tiles: int = 12, min_tiles: int = 1,
               thumbnail: bool = True) -> list[Image.Image]:
    """Tiles of ``tile_size`` squared in row-major order, then a thumbnail when there are several."""
    columns, rows = choose_grid(image.width, image.height, tile_size, min_tiles, max_tiles)
    resized = image.resize((columns * tile_size, rows * tile_size), RESAMPLE)
    tiles = [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(rows)
        for c in range(columns)
    ]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), RESAMPLE))
    return tiles
