"""The contrastive augmentation ladder: nesting, per-image randomness, ranges, and each operation against an
independent reference (numpy and colorsys, or TensorFlow's own crop sampler)."""

import colorsys

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_keras.data import augment, transforms


def batch1(params):
    return tf.nest.map_structure(lambda p: p[tf.newaxis], params)


def stacked(params):
    return tf.nest.map_structure(lambda *p: tf.stack(p), *params)


def draw(ladder, level, seed, shape):
    return ladder.sample(transforms.uniform(tf.constant(seed, tf.int64), [ladder.uniforms(level)]), level, shape)


def run_level(ladder, images, level, seeds):
    """The ladder as the trainer runs it: per example `sample` and `crop` (each image at its own size), then
    the batch steps."""
    params = [draw(ladder, level, seed, image.shape[:2]) for image, seed in zip(images, seeds)]
    views = tf.concat([ladder.crop(tf.constant(image)[None], batch1(p)) for image, p in zip(images, params)], 0)
    params = stacked(params)
    return ladder.augment(views, params, level).numpy(), params


def noise_images(count, height=40, width=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_levels_nest_by_construction():
    ladder = augment.simclr_ladder(32)
    t1, t2, t3 = (ladder.level(i) for i in (1, 2, 3))
    assert all(a is b for a, b in zip(t1, t2)) and all(a is b for a, b in zip(t2, t3))
    assert [type(x) for x in t1] == [augment.RandomResizedCrop]
    assert [type(x) for x in t2[1:]] == [augment.RandomColorJitter, augment.RandomGrayscale]
    assert [type(x) for x in t3[3:]] == [augment.RandomGaussianBlur, augment.RandomSobel]
    assert ladder.uniforms(1) < ladder.uniforms(2) < ladder.uniforms(3)
    jitter = augment.RandomColorJitter()
    with pytest.raises(ValueError, match="T1"):
        augment.AugmentationLadder(augment.RandomResizedCrop(32), [[jitter], []])


@pytest.mark.parametrize("level", [1, 2, 3])
def test_views_are_float32_in_unit_range_at_the_training_size(level):
    ladder = augment.simclr_ladder(24)
    views, _ = run_level(ladder, noise_images(6), level, [[0, i] for i in range(6)])
    assert views.dtype == np.float32 and views.shape == (6, 24, 24, 3)
    assert views.min() >= 0.0 and views.max() <= 1.0


def test_every_image_draws_its_own_parameters_and_a_seed_repeats_them():
    ladder = augment.simclr_ladder(32)
    image = noise_images(1)[0]
    images = [image] * 12
    views, params = run_level(ladder, images, 3, [[5, i] for i in range(12)])
    # Same image, different seeds: every view differs, and so do the per-image draws.
    flat = views.reshape(12, -1)
    assert min(np.abs(flat[i] - flat[j]).max() for i in range(12) for j in range(i)) > 0.01
    assert len(np.unique(params["2"]["sigma"].numpy())) == 12  # blur sigma per image
    assert len(np.unique(params["1"]["apply"].numpy())) == 2  # grayscale picked for some images only
    again, _ = run_level(ladder, images, 3, [[5, i] for i in range(12)])
    np.testing.assert_array_equal(views, again)


def crop_view(crop, image, seed):
    params = crop.sample(transforms.uniform(tf.constant(seed, tf.int64), [crop.uniforms]), image.shape[:2])
    return crop.apply(tf.constant(image)[None], batch1(params))[0].numpy()


def test_crop_covers_the_requested_area_and_flip_mirrors_it():
    image = noise_images(1, 32, 32)[0]
    whole = augment.RandomResizedCrop(32, area=(1.0, 1.0), aspect_ratio=(1.0, 1.0), flip=0.0)
    np.testing.assert_allclose(crop_view(whole, image, [0, 1]), image / 255.0, atol=1e-6)
    part = augment.RandomResizedCrop(16, area=(0.25, 0.25), aspect_ratio=(1.0, 1.0), flip=0.0)
    mirrored = augment.RandomResizedCrop(16, area=(0.25, 0.25), aspect_ratio=(1.0, 1.0), flip=1.0)
    plain = crop_view(part, image, [3, 4])
    np.testing.assert_allclose(crop_view(mirrored, image, [3, 4]), plain[:, ::-1], atol=1e-4)
    # A quarter of a 32x32 image at 16 px is a 1:1 copy of a 16x16 window of it.
    windows = [image[y:y + 16, x:x + 16] / 255.0 for y in range(17) for x in range(17)]
    assert min(np.abs(w - plain).max() for w in windows) < 1e-6


def numpy_blur(image, sigma, radius):
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(taps[k] * padded[k:k + image.shape[0]] for k in range(2 * radius + 1))
    return sum(taps[k] * rows[:, k:k + image.shape[1]] for k in range(2 * radius + 1))


def test_gaussian_blur_uses_each_images_sigma():
    images = np.random.default_rng(1).uniform(size=(3, 20, 24, 3)).astype(np.float32)
    sigmas = np.array([0.3, 1.0, 2.0], np.float32)
    out = transforms.gaussian_blur(tf.constant(images), tf.constant(sigmas), 2).numpy()
    for image, sigma, got in zip(images, sigmas, out):
        np.testing.assert_allclose(got, numpy_blur(image, sigma, 2), atol=1e-5)
    assert augment.blur_kernel_size(224) == 23 and augment.blur_kernel_size(32) == 3


def test_sobel_is_the_luma_gradient_magnitude():
    images = np.random.default_rng(2).uniform(size=(2, 12, 12, 3)).astype(np.float32)
    luma = images @ np.array([0.2989, 0.587, 0.114], np.float32)
    padded = np.pad(luma, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    window = lambda dy, dx: padded[:, 1 + dy:13 + dy, 1 + dx:13 + dx]  # noqa: E731
    gy = (window(1, -1) + 2 * window(1, 0) + window(1, 1)) - (window(-1, -1) + 2 * window(-1, 0) + window(-1, 1))
    gx = (window(-1, 1) + 2 * window(0, 1) + window(1, 1)) - (window(-1, -1) + 2 * window(0, -1) + window(1, -1))
    expected = np.clip(np.sqrt(gx**2 + gy**2) / 4, 0, 1)
    out = transforms.sobel_magnitude(tf.constant(images)).numpy()
    np.testing.assert_allclose(out[..., 0], expected, atol=1e-4)
    assert np.array_equal(out[..., 0], out[..., 2])


def numpy_jitter(image, order, brightness, contrast, saturation, hue):
    """SimCLR's colour jitter on one float image, written with numpy and colorsys."""

    def per_pixel(x, fn):
        return np.array([[colorsys.hsv_to_rgb(*fn(*colorsys.rgb_to_hsv(*p))) for p in row] for row in x])

    steps = {
        0: lambda x: x + brightness,
        1: lambda x: (x - x.mean(axis=(0, 1))) * contrast + x.mean(axis=(0, 1)),
        2: lambda x: per_pixel(x, lambda h, s, v: (h, min(s * saturation, 1.0), v)),
        3: lambda x: per_pixel(x, lambda h, s, v: ((h + hue) % 1.0, s, v)),
    }
    for op in order:
        image = np.clip(steps[op](image), 0.0, 1.0)
    return image


def test_colour_jitter_applies_simclrs_four_operations_in_the_drawn_order():
    image = np.random.default_rng(3).uniform(0.1, 0.9, size=(6, 6, 3))
    jitter = augment.RandomColorJitter(strength=1.0)
    factors = dict(brightness=0.1, contrast=1.3, saturation=0.6, hue=0.08)
    results = {}
    for order in ((0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)):
        params = {k: tf.constant([v], tf.float32) for k, v in factors.items()}
        params["order"] = tf.constant([order], tf.int32)
        results[order] = jitter.transform(tf.constant(image[None], tf.float32), params).numpy()[0]
        np.testing.assert_allclose(results[order], numpy_jitter(image, order, **factors), atol=1e-4)
    assert np.abs(results[(0, 1, 2, 3)] - results[(3, 2, 1, 0)]).max() > 0.01  # the order matters
    # The draws: strength s bounds every factor, and `order` is a permutation.
    for i in range(20):
        drawn = {k: np.asarray(v) for k, v in jitter.sample(transforms.uniform(tf.constant([1, i]), [9])).items()}
        assert abs(drawn["brightness"]) <= 0.8 and 0.2 <= drawn["contrast"] <= 1.8
        assert 0.2 <= drawn["saturation"] <= 1.8 and abs(drawn["hue"]) <= 0.2
        assert sorted(drawn["order"]) == [0, 1, 2, 3]
    images = tf.constant(np.repeat(image[None], 4, 0), tf.float32)
    for rate, changed in ((0.0, False), (1.0, True)):
        step = augment.RandomColorJitter(rate=rate)
        params = stacked([step.sample(transforms.uniform(tf.constant([0, i]), [9])) for i in range(4)])
        out = step.apply(images, params).numpy()
        assert (np.abs(out - images.numpy()).reshape(4, -1).max(axis=1) > 0.01).all() == changed
        assert (out == images.numpy()).all() != changed


def test_only_the_picked_images_change():
    images = tf.constant(np.random.default_rng(4).uniform(size=(6, 16, 16, 3)).astype(np.float32))
    picked = tf.constant([True, False, True, False, False, True])
    cases = [
        (augment.RandomGrayscale(0.2), {"apply": picked}),
        (augment.RandomGaussianBlur(), {"apply": picked, "sigma": tf.fill([6], 1.5)}),
        (augment.RandomSobel(0.2), {"apply": picked}),
    ]
    for step, step_params in cases:
        out = step.apply(images, step_params).numpy()
        kept = ~picked.numpy()
        np.testing.assert_array_equal(out[kept], images.numpy()[kept])
        assert np.abs(out[~kept] - images.numpy()[~kept]).reshape(3, -1).max(axis=1).min() > 1e-3
    gray = augment.RandomGrayscale(0.2).apply(images, {"apply": picked}).numpy()[0]
    assert np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 1], gray[..., 2])


def test_any_keras_augmentation_layer_can_join_a_ladder():
    import keras_cv

    t2 = [keras.layers.RandomContrast(0.5, value_range=(0, 1))]
    t3 = t2 + [keras_cv.layers.RandomBrightness(0.3, value_range=(0, 1)), augment.RandomSobel(rate=1.0)]
    ladder = augment.AugmentationLadder(augment.RandomResizedCrop(16), [[], t2, t3])
    for level in (2, 3):
        views, _ = run_level(ladder, noise_images(4), level, [[0, i] for i in range(4)])
        assert views.shape == (4, 16, 16, 3) and views.dtype == np.float32
    assert np.allclose(views[..., 0], views[..., 1])  # the Sobel step ran after the foreign ones


@pytest.mark.parametrize("area", [(0.08, 1.0), (0.2, 1.0)])
def test_crop_boxes_follow_tf_sample_distorted_bounding_box(area):
    """SimCLR's crop draws boxes as tf.image.sample_distorted_bounding_box does (height uniform for a uniform
    aspect ratio, not area uniform): the same mean and spread of area, aspect and corner."""
    crop = augment.RandomResizedCrop(32, area=area)
    seeds = tf.stack([tf.fill([20000], 3), tf.range(20000)], axis=1)
    ours = tf.function(lambda s: tf.vectorized_map(
        lambda seed: crop.sample(transforms.uniform(seed, [crop.uniforms]), (32, 32))["box"], s))(seeds).numpy()
    theirs = np.array([np.concatenate([t.numpy()[:2] for t in tf.image.stateless_sample_distorted_bounding_box(
        [32, 32, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=[i, 7], min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=area, max_attempts=100,
        use_image_if_no_bounding_boxes=True)[:2]]) for i in range(3000)])
    for boxes in (ours, theirs):
        assert boxes[:, 2:].min() >= 1 and (boxes[:, :2] + boxes[:, 2:]).max() <= 32
        assert (boxes[:, 2] * boxes[:, 3]).min() >= max(area[0], 0.1) * 1024 - 1e-6
    stats = lambda b: ((b[:, 2] * b[:, 3] / 1024).mean(), (b[:, 2] * b[:, 3] / 1024).std(),  # noqa: E731
                       (b[:, 3] / b[:, 2]).mean(), b[:, 0].mean(), b[:, 1].mean())
    # 3000 TF draws: standard errors ~0.004 (area), ~0.003 (aspect), ~0.1 px (corner).
    assert np.all(np.abs(np.subtract(stats(ours), stats(theirs))) <= [0.015, 0.01, 0.012, 0.35, 0.35])
    # An area-uniform draw (the obvious implementation) is far off: its mean area is 0.1 higher.
    assert (max(area[0], 0.1) + 1) / 2 - stats(ours)[0] > 0.08


# --- how often each step fires: its rate, measured on the images over many seeds -----------------------------
RATE_SAMPLES = 2000
RATE_TOLERANCE = 0.04  # above 4 binomial standard deviations at these rates and this count


def _colour_images(count, size=8, seed=7):
    return np.random.default_rng(seed).uniform(0.1, 0.9, (count, size, size, 3)).astype(np.float32)


def _fired(before, after):
    return np.abs(after - before).reshape(len(before), -1).max(axis=1) > 1e-4


def test_every_step_of_the_ladder_fires_at_its_rate():
    """Over 2,000 images with their own seeds: flip 0.5, jitter 0.8, grayscale 0.2 (SimCLR's), blur and Sobel at
    the rates the ladder was given — counted on what each step did to the images, not on its parameters."""
    # A crop of the whole image (area 1 on a square), so that only the flip changes it.
    ladder = augment.simclr_ladder(8, crop_area=(1.0, 1.0), blur_rate=0.3, sobel_rate=0.1)
    crop, jitter, gray, blur, sobel = ladder.level(3)
    images = _colour_images(RATE_SAMPLES)
    seeds = tf.stack([tf.fill([RATE_SAMPLES], 11), tf.range(RATE_SAMPLES)], axis=1)
    params = tf.function(lambda s: tf.vectorized_map(lambda seed: ladder.sample(
        transforms.uniform(seed, [ladder.uniforms(3)]), 3, (8, 8)), s))(seeds)
    cropped = ladder.crop(tf.constant(np.round(images * 255).astype(np.uint8)), params).numpy()
    images = np.round(images * 255) / 255.0
    same = lambda a, b: np.abs(a - b).reshape(RATE_SAMPLES, -1).max(axis=1) < 1e-5  # noqa: E731
    mirrored = same(cropped, images[:, :, ::-1])
    assert np.all(mirrored | same(cropped, images))
    rates = {"flip": mirrored.mean()}
    for index, (name, step) in enumerate((("jitter", jitter), ("gray", gray), ("blur", blur), ("sobel", sobel))):
        out = step.apply(tf.constant(images, tf.float32), params[str(index)]).numpy()
        rates[name] = _fired(images, out).mean()
        if name == "gray":  # the picked images are grey, the others keep their colour
            grey = np.abs(out - out[..., :1]).reshape(RATE_SAMPLES, -1).max(axis=1) < 1e-5
            assert grey.mean() == pytest.approx(rates[name])
    expected = {"flip": 0.5, "jitter": 0.8, "gray": 0.2, "blur": 0.3, "sobel": 0.1}
    assert (crop.flip, jitter.rate, gray.rate, blur.rate, sobel.rate) == tuple(expected.values())
    for name, rate in expected.items():
        assert abs(rates[name] - rate) < RATE_TOLERANCE, (name, rates[name], rate)
