"""Inputs shared by the tests of the rollout engine (imported by name: pytest puts tests/ on sys.path)."""
import numpy as np

QUERIES = ["the red circle", "the largest blue square left of the green triangle and the star"]


def random_images(n, seed=0):
    """n random uint8 RGB images of different sizes (50 + 9 i) x 64, deterministic from the seed."""
    rs = np.random.RandomState(seed)
    return [rs.randint(0, 256, (50 + 9 * i, 64, 3), dtype=np.uint8) for i in range(n)]
