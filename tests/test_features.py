import pytest
import torch

from data.features import (
    FEATURE_SPECS,
    build_inputs,
    edge_magnitude,
    luminance,
    needs_depth,
    num_input_channels,
    parse_feature_spec,
    proxy_depth,
    saturation,
)
from losses.depth_maps import normalize_depth

FEATURE_FUNCTIONS = (luminance, saturation, edge_magnitude, proxy_depth)


def solid(color, height=32, width=32):
    return torch.tensor(color, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, height, width).clone()


def window_on_dark_wall():
    """A dark, brown, noisy wall with a bright, near-white window in its upper middle."""
    generator = torch.Generator().manual_seed(0)
    texture = 0.7 + 0.6 * torch.rand(1, 1, 64, 64, generator=generator)
    image = torch.tensor([0.25, 0.17, 0.10]).view(1, 3, 1, 1) * texture
    image[:, :, 8:40, 16:48] = torch.tensor([0.97, 0.98, 1.0]).view(1, 3, 1, 1)
    return image


def test_luminance_uses_rec709_weights():
    assert luminance(solid((1.0, 0.0, 0.0))).flatten()[0].item() == pytest.approx(0.2126)
    assert luminance(solid((0.0, 1.0, 0.0))).flatten()[0].item() == pytest.approx(0.7152)
    assert luminance(solid((0.0, 0.0, 1.0))).flatten()[0].item() == pytest.approx(0.0722)
    assert torch.allclose(luminance(solid((0.5, 0.5, 0.5))), torch.full((1, 1, 32, 32), 0.5))


def test_saturation_known_values():
    assert torch.equal(saturation(solid((0.4, 0.4, 0.4))), torch.zeros(1, 1, 32, 32))
    assert torch.equal(saturation(solid((1.0, 0.0, 0.0))), torch.ones(1, 1, 32, 32))
    assert torch.allclose(saturation(solid((1.0, 0.5, 0.5))), torch.full((1, 1, 32, 32), 0.5))
    assert torch.equal(saturation(solid((0.0, 0.0, 0.0))), torch.zeros(1, 1, 32, 32))


def test_edges_peak_on_a_step_and_vanish_on_flat():
    step = torch.zeros(1, 3, 32, 32)
    step[..., 16:] = 1.0
    edges = edge_magnitude(step)
    assert torch.allclose(edges[..., 15:17], torch.ones(1, 1, 32, 2))  # full-range step reads 1
    assert edges[..., :14].abs().max() < 1e-6 and edges[..., 18:].abs().max() < 1e-6
    assert edge_magnitude(solid((0.3, 0.6, 0.2))).abs().max() < 1e-6  # flat; borders add no edges


def test_edge_scale_is_fixed_not_per_image():
    half_step = torch.zeros(1, 3, 32, 32)
    half_step[..., 16:] = 0.5
    assert edge_magnitude(half_step).max().item() == pytest.approx(0.5)


def test_proxy_depth_reads_bright_window_far_and_dark_wall_near():
    image = window_on_dark_wall()
    depth = proxy_depth(image)
    window = depth[..., 12:36, 20:44].mean()
    wall_beside = depth[..., 12:36, 0:8].mean()  # same rows: position cue is equal
    wall_below = depth[..., 48:, :].mean()
    assert window > wall_beside + 0.3
    assert window > wall_below + 0.3
    assert depth.min() >= 0.0 and depth.max() <= 1.0


def test_proxy_depth_position_prior_top_is_farther():
    depth = proxy_depth(solid((0.5, 0.5, 0.5)))
    assert depth[..., 0, :].mean() > depth[..., -1, :].mean() + 0.1


def test_normalize_depth_converts_disparity_to_far_is_one_per_image():
    disparity = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    batch = torch.cat([disparity, 100.0 * disparity])
    depth = normalize_depth(batch, from_disparity=True)
    expected = torch.tensor([[1.0, 0.75], [0.5, 0.0]]).view(1, 1, 2, 2)  # largest disparity is nearest
    assert torch.allclose(depth, expected.expand(2, 1, 2, 2))
    assert torch.allclose(normalize_depth(batch), 1.0 - depth)
    assert torch.equal(normalize_depth(torch.full((1, 1, 4, 4), 7.0)), torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("feature", FEATURE_FUNCTIONS, ids=lambda function: function.__name__)
@pytest.mark.parametrize("level", [0.0, 1.0], ids=["black", "white"])
def test_features_shape_range_and_finite_gradient_at_extremes(feature, level):
    rgb = torch.full((2, 3, 32, 32), level, requires_grad=True)
    output = feature(rgb)
    assert output.shape == (2, 1, 32, 32)
    assert output.min() >= 0.0 and output.max() <= 1.0
    output.sum().backward()
    assert torch.isfinite(rgb.grad).all()


def test_features_keep_dtype():
    rgb = window_on_dark_wall().double()
    for feature in FEATURE_FUNCTIONS:
        assert feature(rgb).dtype == torch.float64


def test_build_inputs_order_and_count():
    rgb = window_on_dark_wall().expand(2, 3, 64, 64).clone()
    inputs = build_inputs(rgb, FEATURE_SPECS["multi_feature"])
    assert inputs.shape == (2, 6, 64, 64)
    assert torch.equal(inputs[:, :3], rgb)
    assert torch.equal(inputs[:, 3:4], proxy_depth(rgb))
    assert torch.equal(inputs[:, 4:5], edge_magnitude(rgb))
    assert torch.equal(inputs[:, 5:6], saturation(rgb))
    reordered = build_inputs(rgb, ("saturation", "luminance"))
    assert torch.equal(reordered[:, 3:4], saturation(rgb))
    assert torch.equal(reordered[:, 4:5], luminance(rgb))


def test_build_inputs_places_given_depth():
    rgb = torch.rand(2, 3, 32, 48)
    depth = torch.rand(2, 1, 32, 48, dtype=torch.float64)
    inputs = build_inputs(rgb, FEATURE_SPECS["midas_depth"], depth=depth)
    assert inputs.shape == (2, 6, 32, 48) and inputs.dtype == torch.float32
    assert torch.equal(inputs[:, 3:4], depth.float())
    assert torch.equal(inputs[:, 4:5], edge_magnitude(rgb))
    assert torch.equal(build_inputs(rgb, FEATURE_SPECS["depth_aware"], depth=depth)[:, 3:], depth.float())


def test_build_inputs_same_for_spec_read_back_from_a_checkpoint():
    rgb = torch.rand(1, 3, 32, 32)
    spec = FEATURE_SPECS["multi_feature"]
    assert torch.equal(build_inputs(rgb, spec), build_inputs(rgb, list(spec)))


def test_build_inputs_requires_depth_for_depth_spec():
    with pytest.raises(ValueError, match="includes 'depth': pass the precomputed depth map"):
        build_inputs(torch.rand(1, 3, 32, 32), ("depth",))
    with pytest.raises(ValueError, match=r"depth must have shape \(1, 1, 32, 32\)"):
        build_inputs(torch.rand(1, 3, 32, 32), ("depth",), depth=torch.rand(1, 1, 16, 16))


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="accepted: depth, proxy_depth, edge, saturation, luminance"):
        parse_feature_spec(("depth", "normals"))
    with pytest.raises(ValueError, match="repeats"):
        parse_feature_spec(("edge", "edge"))
    with pytest.raises(ValueError, match="got the string 'depth'"):
        num_input_channels("depth")


def test_channel_counts_and_depth_needs_of_script_specs():
    assert num_input_channels(FEATURE_SPECS["midas_depth"]) == 6
    assert num_input_channels(FEATURE_SPECS["multi_feature"]) == 6
    assert num_input_channels(FEATURE_SPECS["depth_aware"]) == 4
    assert num_input_channels(()) == 3
    assert needs_depth(FEATURE_SPECS["midas_depth"]) and needs_depth(FEATURE_SPECS["depth_aware"])
    assert not needs_depth(FEATURE_SPECS["multi_feature"])


def test_build_inputs_gradient_and_autocast():
    rgb = window_on_dark_wall().requires_grad_()
    build_inputs(rgb, FEATURE_SPECS["multi_feature"]).sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    reference = build_inputs(rgb.detach(), FEATURE_SPECS["multi_feature"])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = build_inputs(rgb.detach(), FEATURE_SPECS["multi_feature"])
    assert torch.isfinite(mixed).all()
    assert torch.allclose(mixed.float(), reference, atol=0.02)
