"""Inputs shared by the tests of the rollout engine (imported by name: pytest puts tests/ on sys.path)."""
from contextlib import contextmanager

import numpy as np

QUERIES = ["the red circle", "the largest blue square left of the green triangle and the star"]


def random_images(n, seed=0):
    """n random uint8 RGB images of different sizes (50 + 9 i) x 64, deterministic from the seed."""
    rs = np.random.RandomState(seed)
    return [rs.randint(0, 256, (50 + 9 * i, 64, 3), dtype=np.uint8) for i in range(n)]


@contextmanager
def boosted_logit(model, token_id, amount, sizes=None):
    """Within the block, every forward adds ``amount`` to the logit of ``token_id`` (e.g. to make EOS
    likely so that rows stop at different steps) and, if ``sizes`` is a list, appends the number of
    rows it computed (the decode batch size)."""
    def hook(module, inputs, output):
        if sizes is not None:
            sizes.append(output.shape[0])
        output[..., token_id] += amount
        return output

    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
