"""The training loop on dense tasks: losses, metrics and History keys end to end (random data)."""
import torch

import mtlutils as mu
from mtlutils.tasks import TASKS, seg_task

from conftest import ListLoader


def test_fit_and_evaluate_on_dense_tasks():
    gen = torch.Generator().manual_seed(0)
    normal = torch.nn.functional.normalize(torch.randn(4, 3, 32, 32, generator=gen), dim=1)
    seg = torch.randint(0, 4, (4, 32, 32), generator=gen)
    seg[:, :4] = -1  # void rows
    batch = {"image": torch.rand(4, 3, 32, 32, generator=gen), "seg": seg,
             "depth": torch.rand(4, 1, 32, 32, generator=gen) + 0.5, "normal": normal}
    tasks = [seg_task(4), TASKS["depth"], TASKS["normal"]]
    mu.seed_everything(0)
    model = mu.models.create("split", tasks, width=0.125)
    history = mu.fit(model, ListLoader([batch, batch]), tasks, epochs=3, lr=5e-3, val_data=ListLoader([batch]),
                     progress=False, device="cpu")
    row = history.last()
    for key in ("val/seg/miou", "val/seg/pixacc", "val/depth/abs_err", "val/depth/rel_err", "val/normal/mean",
                "val/normal/median", "val/normal/within_30"):
        assert key in row
    for t in ("seg", "depth", "normal"):
        losses = history.series(f"train/{t}/loss")
        assert losses[-1] < losses[0], (t, losses)
