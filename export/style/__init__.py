"""Neural style transfer with the costs as the theory states them: optimise one image, or train a network.

Costs (Gatys et al. 2016; notation of the deeplearning.ai course), on activations a^[l] of the loss network:
    J_content(C, G)  = ½ ‖a^[l](C) − a^[l](G)‖²                          (a plain sum over n_H·n_W·n_C entries)
    G_kk'            = Σ_i Σ_j a_ijk a_ijk'                                (the style, or Gram, matrix)
    J_style^[l](S,G) = 1/(2 n_H n_W n_C)² Σ_k Σ_k' (G_kk'^(S) − G_kk'^(G))²
    J_style          = Σ_l λ_l J_style^[l]
    J                = α J_content + β J_style + γ J_tv,  J_tv = Σ (neighbour pixel differences)², pixels in [0, 1]

Modules, one job each:
    lossnet   the frozen, truncated MobileNetV2 whose activations the costs read (which layers, and why)
    costs     the formulas above, J(G) for one painting, and their settings
    images    image files ↔ tensors, PSNR, the contents × styles grid
    optimize  the one gradient-descent loop, and per-image optimisation of G's pixels (Gatys et al.)
    content   training content: the portraits, held-out identities, multi-scale crops
    train     feed-forward training of a StyleNet (Johnson et al.) with checkpoints and resume
    bundle    checkpoint → ONNX (fp16) + TFLite bundles with a parity report
    bench     feed-forward vs optimisation: speedup and style-loss ratio
"""

from __future__ import annotations

from edge.errors import FacegateError


class StyleError(FacegateError):
    """Bad style/optimisation/training input: a missing image, weights file or checkpoint."""
