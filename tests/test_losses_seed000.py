"""Seed-000 image/latent losses, cropped attentions, Grad-CAM, the torchvision VGG16 converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ganinv_jax.losses as L

try:
    from tests import _losses_fixtures as F
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import _losses_fixtures as F

try:
    from tests import _ci
except ImportError:
    import _ci

# test extras: skip where missing, FAIL under CI=true (tests/_ci.py)
torch = _ci.importorskip("torch")
pytorch_msssim = _ci.importorskip("pytorch_msssim")


def _np_pool(x, f):
    n, h, w, c = x.shape
    return x.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))


def test_image_loss_equals_weighted_independent_terms():
    x = F.photos(32)
    y = F.noisy(x, 0.2)
    cfg = L.ImageLossConfig(max_size=16)  # forces 2x pooling for SSIM and LPIPS
    ours = np.asarray(L.image_loss(jnp.asarray(x), jnp.asarray(y), cfg=cfg))
    xf, yf = x.reshape(3, -1).astype(np.float64), y.reshape(3, -1).astype(np.float64)
    mse = np.mean((xf - yf) ** 2, axis=1)
    cos = np.sum(xf * yf, 1) / np.linalg.norm(xf, axis=1) / np.linalg.norm(yf, axis=1)
    xp, yp = _np_pool(x, 2), _np_pool(y, 2)
    lp = np.asarray(L.lpips(jnp.asarray(xp), jnp.asarray(yp)))
    t = lambda a: torch.from_numpy(np.ascontiguousarray((a + 1) / 2)).permute(0, 3, 1, 2)
    ss = pytorch_msssim.ssim(t(xp), t(yp), data_range=1.0, size_average=False).numpy()
    np.testing.assert_allclose(ours, 5 * mse + 3 * (1 - cos) + 2 * lp + (1 - ss), rtol=1e-4)
    terms = L.image_loss_terms(jnp.asarray(x), jnp.asarray(y), cfg=cfg)
    np.testing.assert_allclose(terms["lpips"], lp, atol=1e-6)


def test_image_loss_zero_for_identical_images():
    x = jnp.asarray(F.photos(32))
    np.testing.assert_allclose(L.image_loss(x, x), 0.0, atol=1e-5)


def test_cos_modes():
    x = F.photos(32)
    y = np.concatenate([F.noisy(x[:1], 0.5), x[1:]], axis=0)
    per = np.asarray(L.cosine_similarity(jnp.asarray(x), jnp.asarray(y), "per_sample"))
    bat = np.asarray(L.cosine_similarity(jnp.asarray(x), jnp.asarray(y), "batch"))
    xf, yf = x.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)
    np.testing.assert_allclose(
        bat, np.full(3, xf @ yf / np.linalg.norm(xf) / np.linalg.norm(yf)), rtol=1e-5
    )
    np.testing.assert_allclose(per[1:], 1.0, atol=1e-6)
    assert per[0] < bat[0] < 1.0
    with pytest.raises(ValueError, match="per_sample' or 'batch'"):
        L.cosine_similarity(jnp.asarray(x), jnp.asarray(y), "global")


def test_aligned_boxes_follow_the_spec():
    assert L.aligned_boxes(256, 256) == ((0, 32, 256, 224), (40, 40, 216, 216))
    assert L.aligned_boxes(1024, 1024) == ((0, 128, 1024, 896), (160, 160, 864, 864))
    assert L.MU_PRESETS == {
        "paper": (0.375, 0.625),
        "strategy1": (1.0, 1.0),
        "strategy2": (5.0, 9.0),
    }


def test_aligned_attention_crops():
    x = jnp.asarray(F.photos(32))  # AT1 columns [4, 28); AT2 rows and columns [5, 27)
    cfg = L.ImageLossConfig()
    att = L.AttentionConfig(mode="aligned", mu=L.MU_PRESETS["strategy2"])
    # A change only in the left margin (outside both crops) leaves only the full-image term.
    margin = x.at[:, :, :4, :].set(0.0)
    np.testing.assert_allclose(
        L.attention_image_loss(x, margin, cfg=cfg, att=att),
        L.image_loss(x, margin, cfg=cfg),
        rtol=1e-5,
    )
    # A change in the centre is counted by both crops, each resized back to full size.
    centre = x.at[:, 12:20, 12:20, :].set(0.0)
    full = L.image_loss(x, centre, cfg=cfg)
    c1 = L.image_loss(
        jax.image.resize(x[:, :, 4:28], x.shape, "bilinear"),
        jax.image.resize(centre[:, :, 4:28], x.shape, "bilinear"),
        cfg=cfg,
    )
    c2 = L.image_loss(
        jax.image.resize(x[:, 5:27, 5:27], x.shape, "bilinear"),
        jax.image.resize(centre[:, 5:27, 5:27], x.shape, "bilinear"),
        cfg=cfg,
    )
    np.testing.assert_allclose(
        L.attention_image_loss(x, centre, cfg=cfg, att=att), full + 5 * c1 + 9 * c2, rtol=1e-5
    )
    none = L.attention_image_loss(x, centre, cfg=cfg, att=L.AttentionConfig(mode="none"))
    np.testing.assert_allclose(none, full, rtol=1e-6)


def test_latent_losses_closed_form():
    rng = np.random.default_rng(0)
    w, w2 = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    z, z2 = rng.standard_normal((2, 3, 16)).astype(np.float32)

    def lat(a, b):
        a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        return 5 * np.mean((a - b) ** 2, 1) + 3 * (1 - cos)

    np.testing.assert_allclose(
        L.latent_loss(jnp.asarray(w), jnp.asarray(w2)), lat(w, w2), rtol=1e-5
    )
    np.testing.assert_allclose(
        L.latent_cycle_loss(jnp.asarray(w), jnp.asarray(w2), jnp.asarray(z), jnp.asarray(z2)),
        lat(w, w2) + lat(z, z2),
        rtol=1e-5,
    )
    x = jnp.asarray(F.photos(32))
    y = jnp.asarray(F.noisy(F.photos(32), 0.1))
    np.testing.assert_allclose(
        L.finetune_loss(x, y, jnp.asarray(w), jnp.asarray(w2), jnp.asarray(z), jnp.asarray(z2)),
        np.asarray(L.image_loss(x, y)) + 0.01 * (lat(w, w2) + lat(z, z2)),
        rtol=1e-5,
    )
    att = L.AttentionConfig(mode="none")
    np.testing.assert_allclose(
        L.pretrain_loss(x, y, jnp.asarray(w), jnp.asarray(w2), att=att),
        np.asarray(L.image_loss(x, y)) + 0.01 * lat(w, w2),
        rtol=1e-5,
    )


# ----------------------------------------------------------------------------- Grad-CAM


def test_heatmap_box():
    heat = np.zeros((2, 10, 12), np.float32)
    heat[0, 2:5, 3:9] = 0.9
    heat[0, 7, 1] = 0.3  # below threshold
    box = np.asarray(L.heatmap_box(jnp.asarray(heat), 0.5))
    np.testing.assert_array_equal(box, [[2, 3, 5, 9], [0, 0, 10, 12]])  # empty map -> whole image


def _np_bilinear_crop(img, box, out):
    """Independent reference: sample the continuous image at the crop's pixel centres
    (half-pixel convention), bilinear, clamped at the image border."""
    t, l, b, r = box

    def axis_weights(start, stop, n_out, n_in):
        c = start + (np.arange(n_out) + 0.5) * (stop - start) / n_out - 0.5
        i0 = np.floor(c).astype(int)
        f = c - i0
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            for idx, wgt in ((i0[o], 1 - f[o]), (i0[o] + 1, f[o])):
                m[o, np.clip(idx, 0, n_in - 1)] += wgt
        return m

    mh = axis_weights(t, b, out[0], img.shape[0])
    mw = axis_weights(l, r, out[1], img.shape[1])
    return np.einsum("oh,pw,hwc->opc", mh, mw, img.astype(np.float64))


def test_crop_and_resize_matches_bilinear_reference():
    x = F.photos(32)
    boxes = np.array([[0, 0, 32, 32], [4, 8, 20, 24], [10, 0, 26, 16]])
    out = np.asarray(L.crop_and_resize(jnp.asarray(x), jnp.asarray(boxes), (32, 32)))
    np.testing.assert_allclose(out[0], x[0], atol=1e-5)
    for i in range(3):
        np.testing.assert_allclose(out[i], _np_bilinear_crop(x[i], boxes[i], (32, 32)), atol=1e-5)
    # Traced boxes: one compiled function serves any box.
    f = jax.jit(lambda im, bx: L.crop_and_resize(im, bx, (16, 16)))
    np.testing.assert_allclose(
        f(jnp.asarray(x), jnp.asarray(boxes))[1],
        _np_bilinear_crop(x[1], boxes[1], (16, 16)),
        atol=1e-5,
    )


@pytest.mark.slow
@pytest.mark.parametrize("target", ["loss_energy", "feature_energy"])
def test_gradcam_localizes_an_object(target):
    # A photo pasted on a flat background; the reconstruction missed it (flat everywhere).
    p = F.photos(48)
    for t, l in ((8, 8), (70, 60), (40, 76)):
        x = np.zeros((3, 128, 128, 3), np.float32)
        x[:, t : t + 48, l : l + 48] = p
        heat = L.gradcam_heatmap(jnp.asarray(x), jnp.zeros_like(jnp.asarray(x)), target=target)
        assert heat.shape == (3, 128, 128)
        assert float(heat.min()) >= 0.0 and float(heat.max()) == pytest.approx(1.0)
        for b in np.asarray(L.heatmap_box(heat, 0.5)):
            assert b[0] <= t + 24 < b[2] and b[1] <= l + 24 < b[3], (b, (t, l))
            # Non-localizing maps give the whole image; measured boxes cover 14-51% of it.
            assert (b[2] - b[0]) * (b[3] - b[1]) < 0.6 * 128 * 128, b


def test_gradcam_flat_when_no_evidence():
    # Identical images: no loss energy anywhere, so no region is preferred (crop = whole image).
    x = jnp.asarray(F.photos(64)[:1])
    np.testing.assert_allclose(L.gradcam_heatmap(x, x), 1.0)


def _torchvision_like_vgg16(hidden, classes):
    nn = torch.nn
    layers, c = [], 3
    for v in [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v

    class VGG(nn.Module):  # same attribute names and indices as torchvision.models.vgg16
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 49, hidden),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(hidden, hidden),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(hidden, classes),
            )

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG().eval()


@pytest.fixture(scope="module")
def small_classifier():
    torch.manual_seed(0)
    model = _torchvision_like_vgg16(hidden=16, classes=10)
    return model, L.convert_torchvision_vgg16(model.state_dict())


@pytest.mark.parametrize("size", [64, 50])
def test_torchvision_vgg16_conversion_matches_torch(small_classifier, size):
    model, params = small_classifier
    x01 = F.photos01(size)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy((x01 - mean) / std).permute(0, 3, 1, 2)).numpy()
    ours = np.asarray(L.vgg16_classifier_logits(params, jnp.asarray(x01 * 2 - 1)))
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_gradcam_classifier_target(small_classifier):
    _, params = small_classifier
    x = jnp.asarray(F.photos(64))
    heat = L.gradcam_heatmap(x, target="classifier", classifier_params=params, class_idx=3)
    assert heat.shape == (3, 64, 64) and np.all(np.isfinite(np.asarray(heat)))
    assert float(heat.max()) == pytest.approx(1.0)


def test_converter_and_gradcam_errors(small_classifier):
    model, _ = small_classifier
    sd = dict(model.state_dict())
    sd["classifier.9.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="unused source arrays"):
        L.convert_torchvision_vgg16(sd)
    del sd["classifier.9.weight"], sd["features.28.bias"]
    with pytest.raises(KeyError, match="features.28.bias"):
        L.convert_torchvision_vgg16(sd)
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="needs classifier_params"):
        L.gradcam_heatmap(x, target="classifier")
    with pytest.raises(ValueError, match="needs the reference image"):
        L.gradcam_heatmap(x)
    with pytest.raises(ValueError, match="unknown target"):
        L.gradcam_heatmap(x, x, target="saliency")


@pytest.mark.slow
def test_gradcam_attention_loss_uses_heat_map():
    x = jnp.asarray(F.photos(64))
    rec = x.at[:, 8:28, 8:28, :].set(0.0)
    cfg = L.ImageLossConfig()
    for at1_mode in ("weight", "box"):
        att = L.AttentionConfig(mode="gradcam", at1_mode=at1_mode)
        total = np.asarray(L.attention_image_loss(x, rec, cfg=cfg, att=att))
        assert np.all(total > np.asarray(L.image_loss(x, rec, cfg=cfg)))
    with pytest.raises(ValueError, match="at1_mode"):
        L.attention_image_loss(x, rec, att=L.AttentionConfig(mode="gradcam", at1_mode="circle"))
