"""Expectigrad as optax ``GradientTransformation`` pieces, plus ablation pieces.

The Expectigrad chain is ``scale_by_arithmetic_rms -> outer_momentum -> scale_by_lr``.
Swapping ``scale_by_arithmetic_rms`` for ``scale_by_ema_rms`` (EMA denominator) or
the first two pieces for ``inner_momentum(...)`` (Adam's momentum placement)
gives the paper's ablation variants; see :func:`inner_momentum`.
"""

from expectigrad.transforms.arithmetic_rms import (
    ArithmeticRmsState,
    arithmetic_rms,
    scale_by_arithmetic_rms,
)
from expectigrad.transforms.ema_rms import EmaRmsState, ema_rms, scale_by_ema_rms
from expectigrad.transforms.momentum import (
    InnerMomentumState,
    MomentumState,
    inner_momentum,
    outer_momentum,
)
from expectigrad.transforms.preconditioner import Preconditioner, scale_by_preconditioner
from expectigrad.transforms.scale_by_lr import ScaleByLrState, scale_by_lr

__all__ = [
    'ArithmeticRmsState',
    'EmaRmsState',
    'InnerMomentumState',
    'MomentumState',
    'Preconditioner',
    'ScaleByLrState',
    'arithmetic_rms',
    'ema_rms',
    'inner_momentum',
    'outer_momentum',
    'scale_by_arithmetic_rms',
    'scale_by_ema_rms',
    'scale_by_lr',
    'scale_by_preconditioner',
]
