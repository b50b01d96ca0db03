"""Load 3-channel (RGB) pretrained weights into a model that takes extra input channels.

A multi-feature Restormer (RGB + depth / edge / saturation maps) differs from the published RGB
Restormer only in its first convolution, ``patch_embed.proj.weight`` of shape (dim, C_in, 3, 3).
Widening that tensor with zero weights for the extra channels gives a network whose output is
exactly the pretrained one whatever the extra channels hold, so fine-tuning starts from the
pretrained behaviour and learns how much to use each new channel. The weights come in as a state dict
(``utils.checkpoint.load_pretrained_expanding`` reads the file).
"""
import torch

# The first convolution of Restormer (and of every model of the library built on OverlapPatchEmbed).
INPUT_CONV_KEY = "patch_embed.proj.weight"


def expand_input_channels(state_dict: dict, new_in_channels: int, key: str = INPUT_CONV_KEY,
                          extra_weights: torch.Tensor = None) -> dict:
    """A copy of ``state_dict`` whose convolution weight ``key`` takes ``new_in_channels`` inputs.

    The weight (out, C_old, kh, kw) becomes (out, new_in_channels, kh, kw): input channels
    ``[:C_old]`` keep the pretrained weights, channels ``[C_old:]`` get ``extra_weights`` (shape
    (out, new_in_channels - C_old, kh, kw)), or zeros when it is None, so that the expanded model
    computes exactly what the pretrained one did. Other entries are shared, not copied.
    Raises ValueError if ``key`` is missing or the weight already has more input channels.
    """
    if key not in state_dict:
        raise ValueError(f"cannot expand input channels: the weights have no {key!r}")
    weight = state_dict[key]
    out_channels, old_in_channels, *kernel = weight.shape
    if new_in_channels < old_in_channels:
        raise ValueError(f"cannot expand {key} from {old_in_channels} to {new_in_channels} input channels")
    extra_shape = (out_channels, new_in_channels - old_in_channels, *kernel)
    if extra_weights is None:
        extra_weights = weight.new_zeros(extra_shape)
    elif tuple(extra_weights.shape) != extra_shape:
        raise ValueError(f"extra_weights must have shape {extra_shape}, got {tuple(extra_weights.shape)}")
    expanded = dict(state_dict)
    expanded[key] = torch.cat([weight, extra_weights.to(weight)], dim=1)
    return expanded


def expand_to_model(model: torch.nn.Module, state_dict: dict, zero_init_extra_channels: bool = True,
                    key: str = INPUT_CONV_KEY) -> dict:
    """``state_dict`` with its ``key`` weight widened to ``model``'s input channels, if it has fewer.

    The extra channels get zeros with ``zero_init_extra_channels`` (the model then computes exactly
    the pretrained output), else ``model``'s own current (fresh random) weights for them. A state dict
    that already fits, or that lacks ``key``, comes back unchanged, for strict loading to judge.
    ``utils.checkpoint.load_pretrained_expanding`` reads the file and loads the result.
    """
    own_weight = model.state_dict().get(key)
    pretrained_weight = state_dict.get(key)
    if own_weight is None or pretrained_weight is None or pretrained_weight.ndim != own_weight.ndim:
        return state_dict
    old_in, new_in = pretrained_weight.shape[1], own_weight.shape[1]
    if old_in >= new_in:
        return state_dict
    extra = None if zero_init_extra_channels else own_weight[:, old_in:].detach().clone()
    return expand_input_channels(state_dict, new_in, key, extra)
