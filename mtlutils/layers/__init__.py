"""The papers' building blocks as reusable layers.

Each chapter derives its block from the equations and builds it from scratch, then switches to the version
kept here: the cross-stitch unit (Misra et al. 2016), the MTAN attention module (Liu et al. 2019) and the
stochastic filter-group convolution with its Gumbel-Softmax sampler (Bragman et al. 2019).
"""
from __future__ import annotations

from .attention import AttentionModule
from .cross_stitch import CrossStitch, CrossStitchFunction
from .filter_groups import FilterGroupConv
from .gumbel import gumbel_softmax

__all__: list[str] = ["CrossStitch", "CrossStitchFunction", "AttentionModule", "FilterGroupConv", "gumbel_softmax"]
