"""Instance masks <-> the spec's normalised polygons (§2.3, §15: ``[[x1, y1, x2, y2, ...], ...]``).

An instance is a list of polygon parts, each a flat list of x, y pairs normalised to [0, 1] by the
image's width and height. Masks become polygons by tracing the contours of the thresholded mask
(scikit-image's marching squares) and simplifying each part (Douglas-Peucker) with a growing tolerance
until it has at most ``max_points`` vertices (§9.5 ``max_number_of_polygon_points``).
"""

from __future__ import annotations

import numpy as np


def mask_to_polygons(mask: np.ndarray, threshold: float = 0.5, max_points: int = 100,
                     min_points: int = 3) -> list[list[float]]:
    """Polygon parts (normalised, flat x/y lists) of the pixels of ``mask`` (H x W) at or above ``threshold``."""
    from skimage.measure import approximate_polygon, find_contours

    if max_points < 3:
        raise ValueError(f"max_number_of_polygon_points must be at least 3, got {max_points}")
    h, w = mask.shape
    binary = np.pad((mask >= threshold).astype(np.float32), 1)  # closed contours at the image border
    parts = []
    for contour in find_contours(binary, 0.5):
        contour = contour - 1.0  # undo the padding
        if len(contour) < min_points + 1:
            continue
        # a quarter pixel drops the collinear points of straight edges without moving the outline;
        # the contour is closed (last point == first): the repeated point is not a vertex
        tol = 0.25
        poly = approximate_polygon(contour, tolerance=tol)
        while len(poly) - 1 > max_points:
            tol *= 2
            poly = approximate_polygon(contour, tolerance=tol)
        vertices = poly[:-1] if len(poly) > 1 and np.allclose(poly[0], poly[-1]) else poly
        if len(vertices) < min_points:
            continue
        xs = np.clip((vertices[:, 1] + 0.5) / w, 0.0, 1.0)
        ys = np.clip((vertices[:, 0] + 0.5) / h, 0.0, 1.0)
        parts.append([round(float(v), 6) for xy in zip(xs, ys) for v in xy])
    return parts


def polygons_to_mask(parts: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise normalised polygon parts into a boolean H x W mask (for training targets and tests)."""
    from skimage.draw import polygon as fill

    mask = np.zeros((height, width), dtype=bool)
    for part in parts:
        xy = np.asarray(part, dtype=np.float64).reshape(-1, 2)
        rr, cc = fill(xy[:, 1] * height - 0.5, xy[:, 0] * width - 0.5, shape=(height, width))
        mask[rr, cc] = True
    return mask
