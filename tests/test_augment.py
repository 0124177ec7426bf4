"""The contrastive augmentation ladder: nesting, per-image randomness, ranges, and each operation against an
independent reference (numpy, or tf.image for keras-cv's colour layers)."""

import colorsys

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_keras.data import augment


def run_level(ladder, images, level, seeds):
    """The ladder as the trainer runs it: per-example `sample`, then the batch step."""
    views, params = zip(*(ladder.sample(tf.constant(image), tf.constant(seed, tf.int64), level)
                          for image, seed in zip(images, seeds)))
    params = tf.nest.map_structure(lambda *p: tf.stack(p), *params) if params[0] else {}
    return ladder.augment(tf.stack(views), params, level).numpy(), params


def noise_images(count, height=40, width=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_levels_nest_by_construction():
    ladder = augment.simclr_ladder(32)
    t1, t2, t3 = (ladder.level(i) for i in (1, 2, 3))
    assert all(a is b for a, b in zip(t1, t2)) and all(a is b for a, b in zip(t2, t3))
    assert [type(x) for x in t1] == [augment.RandomResizedCrop]
    assert [type(x) for x in t2[1:]] == [augment.RandomColorJitter, augment.RandomGrayscale]
    assert [x.per_example for x in t3] == [True, True, False, False, False]
    assert [type(x) for x in t3[3:]] == [augment.RandomGaussianBlur, augment.RandomSobel]
    crop, jitter = augment.RandomResizedCrop(32), augment.RandomColorJitter()
    with pytest.raises(ValueError, match="T1"):
        augment.AugmentationLadder([[crop, jitter], [crop]], 32)
    with pytest.raises(ValueError, match="first"):
        augment.AugmentationLadder([[augment.RandomSobel(), crop]], 32)


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
    assert len(np.unique(params["3"]["sigma"].numpy())) == 12  # blur sigma per image
    assert len(np.unique(params["2"]["apply"].numpy())) == 2  # grayscale picked for some images only
    again, _ = run_level(ladder, images, 3, [[5, i] for i in range(12)])
    np.testing.assert_array_equal(views, again)


def test_crop_covers_the_requested_area_and_flip_mirrors_it():
    image = tf.constant(noise_images(1, 32, 32)[0])
    whole = augment.RandomResizedCrop(32, area=(1.0, 1.0), aspect_ratio=(1.0, 1.0), flip=0.0)
    np.testing.assert_allclose(whole.apply_one(image, tf.constant([0, 1])), image.numpy() / 255.0, atol=1e-6)
    part = augment.RandomResizedCrop(16, area=(0.25, 0.25), aspect_ratio=(1.0, 1.0), flip=0.0)
    mirrored = augment.RandomResizedCrop(16, area=(0.25, 0.25), aspect_ratio=(1.0, 1.0), flip=1.0)
    seed = tf.constant([3, 4])
    plain = part.apply_one(image, seed).numpy()
    np.testing.assert_allclose(mirrored.apply_one(image, seed).numpy(), plain[:, ::-1], atol=1e-4)
    # A quarter of a 32x32 image at 16 px is a 1:1 copy of a 16x16 window of it.
    windows = [image.numpy()[y:y + 16, x:x + 16] / 255.0 for y in range(17) for x in range(17)]
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
    out = augment.gaussian_blur(tf.constant(images), tf.constant(sigmas), 2).numpy()
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
    out = augment.sobel_magnitude(tf.constant(images)).numpy()
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
        params = {k: tf.constant(v, tf.float32) for k, v in factors.items()}
        params["order"] = tf.constant(order, tf.int32)
        results[order] = jitter.jitter(tf.constant(image, tf.float32), params).numpy()
        np.testing.assert_allclose(results[order], numpy_jitter(image, order, **factors), atol=1e-4)
    assert np.abs(results[(0, 1, 2, 3)] - results[(3, 2, 1, 0)]).max() > 0.01  # the order matters
    # The draws: strength s bounds every factor, and `order` is a permutation.
    for i in range(20):
        drawn = {k: v.numpy() for k, v in jitter.sample(tf.constant([1, i])).items()}
        assert abs(drawn["brightness"]) <= 0.8 and 0.2 <= drawn["contrast"] <= 1.8
        assert 0.2 <= drawn["saturation"] <= 1.8 and abs(drawn["hue"]) <= 0.2
        assert sorted(drawn["order"]) == [0, 1, 2, 3]
    never, always = augment.RandomColorJitter(rate=0.0), augment.RandomColorJitter(rate=1.0)
    image = tf.constant(image, tf.float32)
    np.testing.assert_array_equal(never.apply_one(image, tf.constant([0, 1])), image)
    assert np.abs(always.apply_one(image, tf.constant([0, 1])).numpy() - image.numpy()).max() > 0.01


def test_only_the_picked_images_change():
    images = tf.constant(np.random.default_rng(4).uniform(size=(6, 16, 16, 3)).astype(np.float32))
    picked = tf.constant([True, False, True, False, False, True])
    cases = [
        (augment.RandomGrayscale(), {"apply": picked}),
        (augment.RandomGaussianBlur(), {"apply": picked, "sigma": tf.fill([6], 1.5)}),
        (augment.RandomSobel(), {"apply": picked}),
    ]
    for layer, layer_params in cases:
        out = layer.augment(images, layer_params).numpy()
        kept = ~picked.numpy()
        np.testing.assert_array_equal(out[kept], images.numpy()[kept])
        assert np.abs(out[~kept] - images.numpy()[~kept]).reshape(3, -1).max(axis=1).min() > 1e-3
    gray = augment.RandomGrayscale().augment(images, {"apply": picked}).numpy()[0]
    assert np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 1], gray[..., 2])


def test_any_keras_augmentation_layer_can_join_a_ladder():
    import keras_cv

    crop = augment.RandomResizedCrop(16)
    t2 = [crop, keras.layers.RandomContrast(0.5, value_range=(0, 1))]
    t3 = t2 + [keras_cv.layers.RandomBrightness(0.3, value_range=(0, 1)), augment.RandomSobel(rate=1.0)]
    ladder = augment.AugmentationLadder([[crop], t2, t3], 16)
    for level in (2, 3):
        views, _ = run_level(ladder, noise_images(4), level, [[0, i] for i in range(4)])
        assert views.shape == (4, 16, 16, 3) and views.dtype == np.float32
    assert np.allclose(views[..., 0], views[..., 1])  # the Sobel layer ran after the foreign ones
    # Called on their own, the ladder's layers work like Keras augmentation layers.
    batch = tf.random.uniform([3, 20, 20, 3], seed=1)
    assert augment.RandomGaussianBlur(rate=1.0, seed=1)(batch).shape == (3, 20, 20, 3)
    assert augment.RandomResizedCrop(8, seed=1)(batch).shape == (3, 8, 8, 3)


# --- the ladder on the device (psl_keras.data.array_augment: Keras on JAX) ------------------------------
def test_array_ladder_steps_equal_the_tf_ladder_steps_with_the_same_choices():
    """Each step of the keras.ops ladder against the TF layer it stands in for, fed the same random choices
    (here under TensorFlow; test_jax.py runs the same steps under JAX)."""
    from psl_keras.data import array_augment

    images = noise_images(6, 32, 32, seed=3)
    ladder = array_augment.ArrayLadder(32, strength=0.5)
    params = ladder.draw(np.random.default_rng(1), 6, 3, 32, 32)
    views = np.asarray(array_augment.crop_resize(images.astype("float32"), params["boxes"], params["flips"], 32))
    for i, (y, x, h, w) in enumerate(params["boxes"]):
        reference = tf.image.resize(tf.slice(images[i], [y, x, 0], [h, w, 3]), [32, 32]).numpy()
        reference = reference[:, ::-1] if params["flips"][i] else reference
        np.testing.assert_allclose(views[i], reference, atol=1e-3)
    views = np.clip(views / 255.0, 0, 1).astype("float32")
    jitter = augment.RandomColorJitter(0.5)
    reference = np.stack([jitter.jitter(tf.constant(views[i]), {k: tf.constant(params[k][i]) for k in
                                                                 ("brightness", "contrast", "saturation", "hue",
                                                                  "order")}).numpy() for i in range(6)])
    np.testing.assert_allclose(np.asarray(ladder.jitter(views, params)), reference, atol=1e-5)
    gray = augment.RandomGrayscale().grayscale.augment_images(tf.constant(views)).numpy()
    np.testing.assert_allclose(np.asarray(array_augment.grayscale(views)), gray, atol=1e-6)
    radius = augment.RandomGaussianBlur().radius(32)
    assert ladder.blur_radius == radius
    np.testing.assert_allclose(np.asarray(array_augment.gaussian_blur(views, params["sigma"], radius)),
                               augment.gaussian_blur(tf.constant(views), tf.constant(params["sigma"]), radius).numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(array_augment.sobel_magnitude(views)),
                               augment.sobel_magnitude(tf.constant(views)).numpy(), atol=1e-5)


def test_array_ladder_has_the_tf_ladders_steps_and_settings():
    from psl_keras.data import array_augment

    tf_ladder = augment.simclr_ladder(32, 0.5, (0.2, 1.0), blur_rate=0.3, sobel_rate=0.1)
    ladder = array_augment.ArrayLadder(32, 0.5, (0.2, 1.0), blur_rate=0.3, sobel_rate=0.1)
    for level in (1, 2, 3):
        assert ladder.describe(level) == tf_ladder.describe(level)
    crop, jitter, gray, blur, sobel = tf_ladder.level(3)
    assert (crop.area, crop.aspect_ratio, crop.flip) == (ladder.crop_area, array_augment.ASPECT_RATIO,
                                                         array_augment.FLIP)
    assert (jitter.strength, jitter.rate, gray.rate) == (ladder.strength, array_augment.JITTER_RATE,
                                                         array_augment.GRAYSCALE_RATE)
    assert (blur.rate, blur.sigma, blur.kernel_fraction, sobel.rate) == (
        ladder.blur_rate, array_augment.BLUR_SIGMA, array_augment.BLUR_KERNEL_FRACTION, ladder.sobel_rate)
    # Each level draws what its steps need and no more; the choices are the generator's alone.
    assert set(ladder.draw(np.random.default_rng(0), 4, 1, 32, 32)) == {"boxes", "flips"}
    again = ladder.draw(np.random.default_rng(0), 4, 3, 32, 32)
    for key, value in ladder.draw(np.random.default_rng(0), 4, 3, 32, 32).items():
        np.testing.assert_array_equal(value, again[key])


@pytest.mark.parametrize("area", [(0.08, 1.0), (0.2, 1.0)])
def test_array_crop_boxes_follow_tf_sample_distorted_bounding_box(area):
    """SimCLR's crop on the device draws boxes as tf.image.sample_distorted_bounding_box does (height uniform
    for a uniform aspect ratio, not area uniform): the same mean and spread of area, aspect and corner."""
    from psl_keras.data import array_augment

    ours = array_augment.crop_boxes(np.random.default_rng(0), 20000, 32, 32, area)
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
    ladder = augment.simclr_ladder(8, blur_rate=0.3, sobel_rate=0.1)
    crop, jitter, gray, blur, sobel = ladder.level(3)
    images = _colour_images(RATE_SAMPLES)
    seeds = tf.stack([tf.fill([RATE_SAMPLES], 11), tf.range(RATE_SAMPLES)], axis=1)

    per_image = lambda layer: tf.function(lambda x, s: tf.map_fn(  # noqa: E731
        lambda a: layer.apply_one(*a), (x, s), fn_output_signature=tf.float32))
    # The ladder's crop, flip and all, on a square image it must keep whole: only the flip changes it.
    whole = augment.RandomResizedCrop(8, area=(1.0, 1.0), aspect_ratio=(1.0, 1.0), flip=crop.flip)
    flipped = per_image(whole)(tf.constant(images), seeds).numpy()
    same = lambda a, b: np.abs(a - b).reshape(RATE_SAMPLES, -1).max(axis=1) < 1e-5  # noqa: E731
    mirrored = same(flipped, images[:, :, ::-1])
    assert np.all(mirrored | same(flipped, images))
    rates = {"flip": mirrored.mean(),
             "jitter": _fired(images, per_image(jitter)(tf.constant(images), seeds).numpy()).mean()}
    for name, layer in (("gray", gray), ("blur", blur), ("sobel", sobel)):
        params = tf.vectorized_map(layer.sample, tf.cast(seeds, tf.int64))
        out = layer.augment(tf.constant(images), params).numpy()
        rates[name] = _fired(images, out).mean()
        if name == "gray":  # the picked images are grey, the others keep their colour
            grey = np.abs(out - out[..., :1]).reshape(RATE_SAMPLES, -1).max(axis=1) < 1e-5
            assert grey.mean() == pytest.approx(rates[name])
    expected = {"flip": 0.5, "jitter": 0.8, "gray": 0.2, "blur": 0.3, "sobel": 0.1}
    assert (crop.flip, jitter.rate, gray.rate, blur.rate, sobel.rate) == tuple(expected.values())
    for name, rate in expected.items():
        assert abs(rates[name] - rate) < RATE_TOLERANCE, (name, rates[name], rate)


def test_every_step_of_the_array_ladder_fires_at_its_rate():
    """The device ladder's draws and views together: each step changes the share of views its rate says."""
    from psl_keras.data import array_augment

    images = np.round(_colour_images(RATE_SAMPLES) * 255).astype(np.uint8)
    rates = {}
    for blur_rate, sobel_rate in ((0.3, 0.0), (0.0, 0.1)):
        # A crop of the whole image (area 1 on a square), so that the views before jitter are the images.
        ladder = array_augment.ArrayLadder(8, crop_area=(1.0, 1.0), blur_rate=blur_rate, sobel_rate=sobel_rate)
        params = ladder.draw(np.random.default_rng(3), RATE_SAMPLES, 3, 8, 8)
        level1, level2, level3 = (np.asarray(ladder.views(images, params, level)) for level in (1, 2, 3))
        mirrored = images[:, :, ::-1] / 255.0
        rates["flip"] = np.mean(np.abs(level1 - mirrored).reshape(RATE_SAMPLES, -1).max(axis=1) < 1e-4)
        grey = np.abs(level2 - level2[..., :1]).reshape(RATE_SAMPLES, -1).max(axis=1) < 1e-5
        rates["gray"] = grey.mean()
        rates["jitter"] = _fired(level1[~grey], level2[~grey]).mean()  # among the views still in colour
        rates["blur" if blur_rate else "sobel"] = _fired(level2, level3).mean()
    expected = {"flip": 0.5, "gray": 0.2, "jitter": 0.8, "blur": 0.3, "sobel": 0.1}
    for name, rate in expected.items():
        assert abs(rates[name] - rate) < RATE_TOLERANCE, (name, rates[name], rate)
