import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from models.sam import Prompt, SamLoadError, SamSegmenter, load_sam, to_rgb8
from tests.support.sam import TINY_SAM, tiny_sam, tiny_sam_checkpoint


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 80), dtype=np.uint8), rng.integers(0, 256, (70, 40, 3), dtype=np.uint8)]


def test_batched_segmenter_matches_the_official_predictor():
    sam = tiny_sam()
    gray, rgb = _images()
    box = np.array([[8.0, 6.0, 40.0, 30.0]])
    points = np.array([[20.0, 35.0], [10.0, 50.0]])
    by_box, by_points = SamSegmenter(sam).segment([gray, rgb], [[Prompt(boxes=box)], [Prompt(points=points)]])
    by_box, by_points = by_box[0], by_points[0]

    predictor = SamPredictor(sam)
    predictor.set_image(to_rgb8(gray))
    masks, iou, _ = predictor.predict(box=box[0], multimask_output=False)
    assert by_box.mask.shape == (48, 80)
    assert by_box.predicted_iou == pytest.approx(iou, abs=1e-4)
    assert (by_box.mask == masks[0]).mean() > 0.99

    predictor.set_image(rgb)
    masks, iou, _ = predictor.predict(point_coords=points, point_labels=np.ones(2), multimask_output=True)
    best = int(np.argmax(iou))
    assert by_points.mask.shape == (70, 40)
    assert by_points.predicted_iou == pytest.approx([iou[best]], abs=1e-4)
    assert (by_points.mask == masks[best]).mean() > 0.99


def test_each_box_is_decoded_and_passed_in_the_model_frame():
    sam = tiny_sam()
    seen = []
    sam.prompt_encoder.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["boxes"].clone()), with_kwargs=True
    )
    boxes = np.array([[8.0, 6.0, 40.0, 30.0], [50.0, 10.0, 78.0, 44.0]])
    (result,) = SamSegmenter(sam).segment([_images()[0]], [[Prompt(boxes=boxes)]])
    # 48x80 image, 64 px model input: resized to 38x64 (SAM rounds the short side).
    scale = np.array([64 / 80, 38 / 48, 64 / 80, 38 / 48])
    assert torch.allclose(seen[0], torch.tensor(boxes * scale, dtype=torch.float))
    assert result[0].predicted_iou.shape == (2,)


def test_one_encoder_pass_for_all_images_and_prompts():
    sam = tiny_sam()
    calls = []
    sam.image_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images = _images()
    results = SamSegmenter(sam).segment(
        images,
        [
            [Prompt(boxes=np.array([[1.0, 1.0, 20.0, 20.0]])), Prompt(points=np.array([[5.0, 5.0]]))],
            [Prompt(points=np.array([[5.0, 5.0]]))],
        ],
    )
    assert calls == [2]
    assert [len(r) for r in results] == [2, 1]


def test_loader_reads_a_saved_state_dict(tmp_path):
    config = tiny_sam_checkpoint(tmp_path / "tiny.pth", seed=3)
    loaded = load_sam(config.model_type, config.checkpoint, TINY_SAM.model_dump())
    expected = tiny_sam(seed=3).state_dict()
    assert all(torch.equal(loaded.state_dict()[name], value) for name, value in expected.items())
    assert not torch.equal(loaded.mask_decoder.iou_token.weight, tiny_sam(seed=4).mask_decoder.iou_token.weight)


def test_loader_unwraps_a_model_key(tmp_path):
    torch.save({"model": tiny_sam(seed=5).state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    loaded = load_sam("custom", tmp_path / "wrapped.pth", TINY_SAM.model_dump())
    assert torch.equal(loaded.mask_decoder.iou_token.weight, tiny_sam(seed=5).mask_decoder.iou_token.weight)


def test_registry_types_need_a_checkpoint_that_fits(tmp_path):
    with pytest.raises(SamLoadError, match="needs a checkpoint"):
        load_sam("vit_b", None)
    config = tiny_sam_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(SamLoadError, match="does not fit model_type vit_b"):
        load_sam("vit_b", config.checkpoint)
    with pytest.raises(SamLoadError, match="unknown SAM model_type"):
        load_sam("vit_x", config.checkpoint)


def test_to_rgb8_stretches_16_bit_and_repeats_gray():
    pixels = np.array([[1000, 3000]], dtype=np.uint16)
    assert to_rgb8(pixels).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_medsam_preprocessing_follows_medsams_own_inference():
    sam = tiny_sam()
    seen_inputs, seen_boxes = [], []
    sam.image_encoder.register_forward_hook(lambda module, args, out: seen_inputs.append(args[0].clone()))
    sam.prompt_encoder.register_forward_hook(
        lambda module, args, kwargs, out: seen_boxes.append(kwargs["boxes"].clone()), with_kwargs=True
    )
    gray = _images()[0]  # 48 x 80
    box = np.array([[8.0, 6.0, 40.0, 30.0]])
    (result,) = SamSegmenter(sam, "medsam").segment([gray], [[Prompt(boxes=box)]])

    # MedSAM_Inference.py by hand: a 64 x 64 square (no aspect kept, no padding), [0, 1] by min-max, no mean/std.
    from skimage.transform import resize

    square = resize(to_rgb8(gray), (64, 64), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    expected = torch.as_tensor((square - square.min()) / (square.max() - square.min()), dtype=torch.float32)
    assert torch.allclose(seen_inputs[0][0], expected.permute(2, 0, 1))
    assert float(seen_inputs[0].min()) == 0.0 and float(seen_inputs[0].max()) == 1.0
    # Boxes scaled by 64 / W and 64 / H (SAM's own frame would be 64/80 and 38/48).
    assert torch.allclose(seen_boxes[0], torch.tensor(box * [64 / 80, 64 / 48, 64 / 80, 64 / 48], dtype=torch.float))
    with torch.no_grad():
        embedding = sam.image_encoder(expected.permute(2, 0, 1)[None])
        sparse, dense = sam.prompt_encoder(points=None, boxes=seen_boxes[0], masks=None)
        low_res, iou = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        probability = torch.nn.functional.interpolate(
            torch.sigmoid(low_res), size=(48, 80), mode="bilinear", align_corners=False
        )
    assert np.array_equal(result[0].mask, (probability[0, 0] > 0.5).numpy())
    assert result[0].predicted_iou == pytest.approx(iou[:, 0].numpy(), abs=1e-6)
    sam_frame = SamSegmenter(sam).segment([gray], [[Prompt(boxes=box)]])[0][0]
    assert not np.array_equal(sam_frame.mask, result[0].mask)  # the two preprocessings differ


def test_preprocessing_follows_the_checkpoint_kind(tmp_path):
    from tasks.config import SamConfig

    assert SamConfig(checkpoint=tmp_path / "medsam_vit_b.pth").preprocessing == "medsam"
    assert SamConfig(checkpoint=tmp_path / "sam_vit_b_01ec64.pth").preprocessing == "sam"
    assert SamConfig(checkpoint=tmp_path / "medsam_vit_b.pth", preprocess="sam").preprocessing == "sam"
    assert SamConfig(model_type="custom", preprocess="medsam").preprocessing == "medsam"
    with pytest.raises(ValueError, match="unknown SAM preprocessing"):
        SamSegmenter(tiny_sam(), "clip")


def test_a_bf16_encoder_segments_as_the_fp32_one():
    sam = tiny_sam()
    gray, rgb = _images()
    prompts = [[Prompt(boxes=np.array([[8.0, 6.0, 40.0, 30.0]]))], [Prompt(points=np.array([[20.0, 35.0]]))]]
    exact = SamSegmenter(sam).segment([gray, rgb], prompts)
    calls = []
    sam.image_encoder.patch_embed.register_forward_hook(lambda module, args, out: calls.append(out.dtype))
    fast = SamSegmenter(sam, encoder_bf16=True).segment([gray, rgb], prompts)
    assert calls == [torch.bfloat16]  # the encoder's convolution and blocks ran in bf16
    for (a,), (b,) in zip(exact, fast):
        assert a.mask.shape == b.mask.shape and (a.mask == b.mask).mean() > 0.95
        assert b.predicted_iou == pytest.approx(a.predicted_iou, abs=0.05)


def test_a_batch_is_prepared_in_parallel_threads_and_bit_identical_to_one_image_at_a_time(monkeypatch):
    import threading
    import time

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40 + 7 * i, 90 - 5 * i, 3), dtype=np.uint8) for i in range(6)]
    images.append((rng.random((33, 51)) * 4000).astype(np.uint16))  # 16-bit, stretched per image
    for preprocess in ("sam", "medsam"):
        segmenter = SamSegmenter(tiny_sam(), preprocess)
        alone = [segmenter._model_input(to_rgb8(image)) for image in images]
        threads, original = set(), segmenter._model_input

        def traced(rgb, original=original):
            threads.add(threading.get_ident())
            time.sleep(0.05)  # each image takes a while, as a full-size one does: the pool's threads overlap
            return original(rgb)

        monkeypatch.setattr(segmenter, "_model_input", traced)
        batch, sizes = segmenter.model_inputs(images)
        assert len(threads) > 1 and threading.get_ident() not in threads  # worker threads, several of them
        assert batch.shape == (len(images), *alone[0][0].shape)
        assert sizes == [size for _, size in alone]
        assert all(torch.equal(batch[i], tensor) for i, (tensor, _) in enumerate(alone))


def test_the_batch_size_auto_is_larger_on_a_gpu():
    from models.sam import batch_size

    assert batch_size("auto", "cpu") == 2
    assert batch_size("auto", "cuda") == batch_size("auto", "cuda:0") == 8
    assert batch_size(5, "cuda") == batch_size(5, "cpu") == 5
    from tasks.config import SamConfig

    assert SamConfig().batch_size == "auto" and SamConfig(batch_size=3).batch_size == 3
    for bad in (0, "big"):
        with pytest.raises(ValueError, match="batch_size"):
            SamConfig(batch_size=bad)
