"""Every architecture on both backbones computes the same function as before the trunk contract
(``mtlutils.models.contract``): the same ``state_dict`` keys, the same initialisation from one seed, and
the same train-mode outputs, gradients and eval-mode outputs on a fixed input.

The fingerprints below were computed with the code before that refactoring (commit 2a18407) by running
this file: ``python tests/test_model_numbers.py``. Regenerate them only for an intended change of
numbers, and say so in the commit. Keys are compared exactly; values with a tolerance relative to their
magnitude, so that another CPU's summation order passes while any change of the function fails.
"""
from __future__ import annotations

import hashlib

import pytest
import torch

from mtlutils.models import create
from mtlutils.tasks import TASKS, Task, seg_task

VGG_TASKS = [Task("left", "class", 10), Task("right", "class", 10), Task("size", "regress", 1)]
SEG_TASKS = [seg_task(7), TASKS["depth"], TASKS["normal"]]
ARCH_NAMES = ["single", "split", "split_wide", "split_deep", "dense", "cross_stitch", "mtan", "stan", "sfg"]

# (case id, arch, backbone, options); "mtan_loop" = MTAN with the per-task reference loop (fast=False)
CASES = [(f"{arch}/{backbone}", arch, backbone, {"width": 0.5 if backbone == "vgg" else 0.125})
         for arch in ARCH_NAMES for backbone in ("vgg", "segnet") if (arch, backbone) != ("dense", "vgg")] + [
    ("cross_stitch/vgg/conv-layer", "cross_stitch", "vgg", {"width": 0.5, "stitch": "conv", "granularity": "layer"}),
    ("cross_stitch/segnet/conv", "cross_stitch", "segnet", {"width": 0.125, "stitch": "conv"}),
    ("split_wide/segnet/gray", "split_wide", "segnet", {"width": 0.125, "in_channels": 1}),
    ("sfg/segnet/fixed", "sfg", "segnet", {"width": 0.125, "fixed": [0.3, 0.3, 0.2, 0.2]}),
    ("sfg/vgg/masked-sample", "sfg", "vgg", {"width": 0.5, "impl": "masked", "inference": "sample", "passes": 2}),
    ("sfg/segnet/sample", "sfg", "segnet", {"width": 0.125, "inference": "sample", "passes": 2}),
    ("mtan_loop/segnet", "mtan_loop", "segnet", {"width": 0.125}),
    ("mtan_loop/vgg", "mtan_loop", "vgg", {"width": 0.5}),
    ("split/vgg/stages", "split", "vgg", {"width": 0.5, "stages": [(8, 2), (16, 1)], "hidden": 16}),
]


def _weighted_sum(tensors: list[torch.Tensor]) -> tuple[float, float]:
    """``(Σ_i (i+1) Σ_j t_ij cos j, Σ |t|)`` in float64: order- and position-sensitive, and its scale."""
    total, scale = 0.0, 0.0
    for i, t in enumerate(tensors):
        flat = t.detach().double().flatten()
        weights = torch.cos(torch.arange(flat.numel(), dtype=torch.float64))
        total += (i + 1) * float((flat * weights).sum())
        scale += (i + 1) * float(flat.abs().sum())
    return total, scale


def fingerprint(arch: str, backbone: str, options: dict) -> dict:
    """Build with seed 0, then one train-mode forward/backward and one eval forward on a fixed input."""
    tasks = VGG_TASKS if backbone == "vgg" else SEG_TASKS
    torch.manual_seed(0)
    model = create("mtan" if arch == "mtan_loop" else arch, tasks, backbone=backbone, **options)
    model.fast = arch != "mtan_loop"
    state = model.state_dict()
    keys = "\n".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in state.items())
    init = _weighted_sum([v for v in state.values() if v.is_floating_point()])
    gen = torch.Generator().manual_seed(1)
    shape = (2, model.in_channels, 32, 64) if backbone == "segnet" else (3, model.in_channels, 20, 28)
    x = torch.rand(*shape, generator=gen)
    torch.manual_seed(2)
    model.train()
    out = model(x)
    sum((o.float() ** 2).mean() * (i + 1) for i, o in enumerate(out.values())).backward()
    grads = _weighted_sum([p.grad for p in model.parameters() if p.grad is not None])
    model.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        evaluated = model(x)
    return {"keys": hashlib.sha256(keys.encode()).hexdigest()[:16], "init": init,
            "train": _weighted_sum(list(out.values())), "grads": grads,
            "eval": _weighted_sum(list(evaluated.values()))}


EXPECTED: dict[str, dict] = {  # computed with the code of commit 2a18407 (before the trunk contract)
    "single/vgg": {"keys": "b8d82d5039b37138",
        "init": (214.21605051169993, 175813.30575940554),
        "train": (0.3334836825289824, 19.942861180752516),
        "grads": (50.31092187809634, 112801.56468736724),
        "eval": (0.20278472283583807, 5.463950278237462)},
    "single/segnet": {"keys": "36b202258461f8f7",
        "init": (26778.37234884418, 11080324.83736785),
        "train": (112.43783958735612, 83972.74470580941),
        "grads": (2676.905761395802, 1795971.0054299424),
        "eval": (0.013986031407311916, 73347.5380955949)},
    "split/vgg": {"keys": "3595830e3a81f4bb",
        "init": (-25.05061935597518, 45192.438932351695),
        "train": (1.2874313660943737, 28.123951643705368),
        "grads": (-20.378698271546526, 22332.29699100012),
        "eval": (0.13559168045657188, 6.374411484459415)},
    "split/segnet": {"keys": "b3da5fbcb2f69b79",
        "init": (2162.0469703191116, 1179684.5286732358),
        "train": (42.97940263448045, 86368.60043724625),
        "grads": (203.8812634453217, 558428.5361224855),
        "eval": (-16.470928428935913, 76071.642062907)},
    "split_wide/vgg": {"keys": "70862084bf71d34b",
        "init": (169.97687022517783, 72666.17826951969),
        "train": (-3.5369204749786034, 27.268365655094385),
        "grads": (-1155.5948839281168, 130678.1111575326),
        "eval": (-0.12985888038340979, 5.96399458963424)},
    "split_wide/segnet": {"keys": "4277e9eba9d39eb5",
        "init": (3873.0114452367734, 1627513.2045254898),
        "train": (-87.05939787546166, 87453.6342108507),
        "grads": (-196.9656572532375, 660649.769229307),
        "eval": (4.453120632436362, 74111.42835009299)},
    "split_deep/vgg": {"keys": "aadf4baf34421936",
        "init": (360.6248704854365, 111252.57056220101),
        "train": (-2.6973947113982333, 24.27928388863802),
        "grads": (-647.3820695316058, 99066.80232332074),
        "eval": (-0.26141232084840754, 5.295727728866041)},
    "split_deep/segnet": {"keys": "1677d5594a0d7170",
        "init": (10614.051575650925, 4686153.919079185),
        "train": (79.69361563204055, 87611.40559455693),
        "grads": (-8328.402226189452, 90407240.90626201),
        "eval": (-22.858107064108033, 75620.3824995085)},
    "dense/segnet": {"keys": "006818d06127a624",
        "init": (63988.89991932878, 23313413.09858557),
        "train": (-159.04301534435922, 85873.74894213561),
        "grads": (3238.955874933412, 1557917.3682276546),
        "eval": (-11.294904144116376, 76101.84902608983)},
    "cross_stitch/vgg": {"keys": "442d194b282808bc",
        "init": (210.81877146159917, 207229.30505720322),
        "train": (0.9123791115748618, 17.8179176710546),
        "grads": (138.65734978287279, 88898.13179073826),
        "eval": (0.20335391264215016, 5.4760290533304214)},
    "cross_stitch/segnet": {"keys": "f6b513bedf39aa93",
        "init": (27841.2099372704, 11534404.82721837),
        "train": (-23.98393059678959, 82810.05123592523),
        "grads": (-773.1758775175866, 1834767.3055048047),
        "eval": (-0.4933355590768018, 73401.12203052462)},
    "mtan/vgg": {"keys": "e94eb2a3e3db664d",
        "init": (2724.0511178701295, 394675.04669955745),
        "train": (-0.13857833648353524, 14.992859655991197),
        "grads": (116.36308702304319, 34448.5268531028),
        "eval": (0.32328168455534306, 6.666293006390333)},
    "mtan/segnet": {"keys": "bb9b8243687dd132",
        "init": (52393.13812311476, 9818459.202311322),
        "train": (-233.95464084432012, 78927.65840705625),
        "grads": (1152.1268656028174, 304756.34487122815),
        "eval": (50.30649355160469, 74750.47430129844)},
    "stan/vgg": {"keys": "a96746ce8d57602b",
        "init": (5721.685996515207, 728802.3392454912),
        "train": (-0.6956610582007231, 13.628722216933966),
        "grads": (141.62679883749988, 19639.599262738684),
        "eval": (-0.49350808383649575, 5.926685524173081)},
    "stan/segnet": {"keys": "355b3450045fe140",
        "init": (128418.31741224919, 41586709.51906488),
        "train": (11.395095725621402, 77584.25475999518),
        "grads": (-123.34150041753668, 635482.5759554766),
        "eval": (4.932805119449016, 73827.17386452931)},
    "sfg/vgg": {"keys": "f704b95f48eae9bb",
        "init": (-23.639639099382542, 47578.68473209332),
        "train": (0.7020497010151725, 14.758068082854152),
        "grads": (-0.6018735402505335, 3972.243171397052),
        "eval": (0.14236347921563242, 6.386654315516353)},
    "sfg/segnet": {"keys": "3a3e864f9c3556a6",
        "init": (2200.0435020175437, 1200296.3746217687),
        "train": (62.51049060392069, 78382.72936803264),
        "grads": (-394.18389903735033, 74808.19455790272),
        "eval": (-2.826296927163889, 55793.611100792885)},
    "cross_stitch/vgg/conv-layer": {"keys": "98552f0fa3809605",
        "init": (296.34454527741, 176851.30573620443),
        "train": (0.5904812527388147, 18.236066043376923),
        "grads": (455.2720006300982, 93562.89306173229),
        "eval": (0.20606012996089024, 5.392176596447825)},
    "cross_stitch/segnet/conv": {"keys": "a54567d52b86136c",
        "init": (27952.60500316191, 12403996.807781475),
        "train": (-131.57196333065144, 82780.702860039),
        "grads": (3227.7974147713826, 1790583.6704351713),
        "eval": (2.587622395931065, 73541.17848754367)},
    "split_wide/segnet/gray": {"keys": "a949b8d28d879a3e",
        "init": (6554.588005653779, 1627709.850516453),
        "train": (-29.201163109252185, 89768.96169434689),
        "grads": (-800.8988598307585, 1338237.011646867),
        "eval": (22.035326773790455, 71429.7314443955)},
    "sfg/segnet/fixed": {"keys": "a7149972353c779c",
        "init": (3701.5709243558763, 1448619.6660083975),
        "train": (59.76579122940076, 80182.23820562229),
        "grads": (8.016798925737792, 106850.49401199433),
        "eval": (-3.6916967571383212, 73374.13576104236)},
    "sfg/vgg/masked-sample": {"keys": "f704b95f48eae9bb",
        "init": (-23.639639099382542, 47578.68473209332),
        "train": (0.70204948151164, 14.758068487048149),
        "grads": (-0.601875893006941, 3972.243199468279),
        "eval": (33.08878044848312, 1033.353278182447)},
    "sfg/segnet/sample": {"keys": "3a3e864f9c3556a6",
        "init": (2200.0435020175437, 1200296.3746217687),
        "train": (62.51049060392069, 78382.72936803264),
        "grads": (-394.18389903735033, 74808.19455790272),
        "eval": (238.4280039933866, 322933.89073335717)},
    "mtan_loop/segnet": {"keys": "bb9b8243687dd132",
        "init": (52393.13812311476, 9818459.202311322),
        "train": (-233.9545963043647, 78927.65842661573),
        "grads": (1152.1266730086616, 304756.3058021697),
        "eval": (50.306492844077134, 74750.47430895528)},
    "mtan_loop/vgg": {"keys": "e94eb2a3e3db664d",
        "init": (2724.0511178701295, 394675.04669955745),
        "train": (-0.13857835467125457, 14.992859908379614),
        "grads": (116.36301395458305, 34448.52227722302),
        "eval": (0.3232816923351201, 6.666293006390333)},
    "split/vgg/stages": {"keys": "d49f4fb47b9005af",
        "init": (49.8026245934705, 5048.406331097518),
        "train": (0.1484504352194883, 24.58471303060651),
        "grads": (15.605566092042665, 1266.2487070513241),
        "eval": (0.5348654557967504, 9.878142496570945)},
}


@pytest.mark.parametrize("case, arch, backbone, options", CASES, ids=[c[0] for c in CASES])
def test_the_function_is_unchanged(case, arch, backbone, options):
    got, expected = fingerprint(arch, backbone, options), EXPECTED[case]
    assert got["keys"] == expected["keys"], "state_dict keys, shapes or dtypes changed"
    for part, rtol in (("init", 1e-6), ("train", 1e-5), ("grads", 1e-4), ("eval", 1e-5)):
        value, scale = got[part]
        ref, ref_scale = expected[part]
        assert abs(value - ref) <= rtol * ref_scale, f"{part}: {value!r} != {ref!r} (scale {ref_scale:.4g})"
        assert abs(scale - ref_scale) <= rtol * ref_scale, f"{part} magnitude: {scale!r} != {ref_scale!r}"


def test_dense_needs_side_inputs():
    with pytest.raises(ValueError, match=r"dense architecture needs a backbone with side inputs \(backbone='segnet'\)"):
        create("dense", VGG_TASKS, backbone="vgg")


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    torch.use_deterministic_algorithms(True, warn_only=True)
    print("EXPECTED: dict[str, dict] = {")
    for case, arch, backbone, options in CASES:
        print(f"    {case!r}: {fingerprint(arch, backbone, options)!r},")
    print("}")
