"""Hash of every family's weights, EMA and optimizer state after 4 train steps from a fixed seed, with
the logged losses. Run it before and after a change to the train step: identical lines mean the change
left every family's arithmetic (and RNG draws) exactly as it was.

    .venv/bin/python drills/step_fingerprint.py [ARCH ...] > before.txt   # then after, and diff
"""
import hashlib, sys
import torch
from gan_core.config import PipelineConfig
from gan_core.models import ARCHS
from gan_core.train import build_state, train

def batches(kind, n, res, ch, seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        b = {"images": torch.randint(0, 256, (8, ch, res, res), generator=g, dtype=torch.uint8),
             "labels": torch.randint(0, 3, (8,), generator=g)}
        if kind in ("paired", "unpaired"):
            b["images_b"] = torch.randint(0, 256, (8, ch, res, res), generator=g, dtype=torch.uint8)
        yield b

def digest(state):
    h = hashlib.sha256()
    for m in (state.G, state.D, state.G_ema):
        for k, v in m.state_dict().items():
            h.update(k.encode()); h.update(v.detach().float().contiguous().numpy().tobytes())
    for o in (state.opt_g, state.opt_d):
        for s in o.state_dict()["state"].values():
            for k, v in s.items():
                if torch.is_tensor(v): h.update(v.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

archs = sys.argv[1:] or list(ARCHS)
for arch in archs:
    fam = ARCHS[arch]
    d = {"model": {"arch": arch, "g_channels": 8, "d_channels": 8, "z_dim": 8},
         "data": {"resolution": 16, "channels": 1},
         "train": {"steps": 4, "batch_size": 8, "num_workers": 1, "ema_start": 1, "log_every": 2, "checkpoint_every": 100}}
    if arch == "srgan":
        d["family"] = {"srgan": {"warmup_steps": 2, "scale": 2}}
    if arch == "cyclegan":
        d["family"] = {"cyclegan": {"pool_size": 3}}
    cfg = PipelineConfig.from_dict(d)
    torch.manual_seed(0)
    st = build_state(cfg, n_classes=3)
    logs = []
    class L:
        def on_log(self, s, m): logs.append({k: round(v, 6) for k, v in sorted(m.items()) if k != "images_per_s"})
        def on_step(self, s): pass
        def on_checkpoint(self, s): pass
        def on_train_end(self, s): pass
    train(st, batches(fam.dataset_kind, 8, 16, 1, 1), cfg, [L()])
    print(arch, digest(st), logs)
