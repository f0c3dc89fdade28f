"""Evaluation as the numbers are published (issue 17, item 3): generated images rounded to 8 bits before
the backbone exactly as saving them to PNG would, KID over 100 subsets of min(1000, n) as in its paper,
and the device evaluation runs on chosen like training's (a GPU when training asked for one and there is one)."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from gan_core.data import to_float, to_uint8
from gan_core.metrics import backbone as domain
from gan_core.metrics.evaluator import DOMAIN, IMAGE_RANGE, Backbone, folder_evaluator
from gan_core.metrics.fid import eval_device, quantised
from gan_core.metrics.kid import kernel_inception_distance


def png_round_trip(images: torch.Tensor) -> torch.Tensor:
    """Each grey image through an 8-bit PNG file and back to [-1, 1]."""
    out = []
    for im in to_uint8(images)[:, 0].numpy():
        buf = io.BytesIO()
        Image.fromarray(im, mode="L").save(buf, format="PNG")
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
    return to_float(torch.from_numpy(np.stack(out))[:, None])


def test_quantised_images_are_what_a_png_holds():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # out of range too
    q = quantised(x)
    assert torch.equal(q, png_round_trip(x))
    by_formula = torch.round(((x + 1) / 2).clamp(0, 1) * 255) / 255 * 2 - 1  # the definition
    assert torch.allclose(q, by_formula, atol=1e-6) and torch.equal(quantised(q), q)
    assert not torch.equal(q, x.clamp(-1, 1))


def _evaluator():
    torch.manual_seed(0)
    model = domain.DomainClassifier(1, 10).eval()
    bb = Backbone(DOMAIN, domain.BACKBONE_ID, domain.weights_sha256(model), "none",
                  lambda x, b: domain.extract(model, x, b), model)
    real = to_float(torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)))
    return folder_evaluator(real, bb, 32)


def test_the_backbone_scores_the_8_bit_images_and_the_fingerprint_says_so():
    ev = _evaluator()
    fake = torch.rand(48, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    scores, fp = ev.score_images(fake, 16, seed=0)
    same, _ = ev.score_images(quantised(fake), 16, seed=0)
    assert scores == same  # the backbone never sees the sub-8-bit part
    feats, _ = ev.backbone.extract(fake, 16)
    unrounded = ev.backbone.extract(quantised(fake), 16)[0]
    assert not np.array_equal(feats, unrounded)  # ... which would have moved the features
    assert fp.image_range == IMAGE_RANGE == "[-1,1] 8-bit"


def test_kid_defaults_to_100_subsets_of_at_most_1000():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 0.2
    assert kernel_inception_distance(x, y) == kernel_inception_distance(x, y, subsets=100, subset_size=1000)
    assert kernel_inception_distance(x, y) != kernel_inception_distance(x, y, subsets=50)


def test_evaluation_runs_on_the_training_device_when_there_is_one():
    assert eval_device(False) == torch.device("cpu")
    assert eval_device(True).type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_evaluation_gives_the_cpu_numbers():
    ev = _evaluator()
    fake = torch.rand(48, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cpu, _ = ev.score_images(fake, 16, seed=0)
    ev.backbone.module.to("cuda")
    gpu, _ = ev.score_images(fake, 16, seed=0)
    assert gpu.keys() == cpu.keys() and all(abs(gpu[k] - cpu[k]) <= 1e-3 * max(1.0, abs(cpu[k])) for k in cpu)
