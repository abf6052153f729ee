"""The nvjpeg backend: agreement with PIL, fallback decodes, what the workers ship (image sizes
from the header, crop boxes), and decode failures: a bad file alone goes to the CPU, a device
failure is raised. The multi-crop kernel's own tests are in tests/test_crop.py."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from loaders import build_loader, geometry, nvjpeg
from loaders.batch import ViewGroup, is_channels_last_views
from loaders.crop import multi_crop_torch
from loaders.datasets import DataError, Split
from loaders.geometry import view_params
from loaders.images import image_size, jpeg_size
from loaders.nvjpeg import DecodeAndCut, FileBytes, NvjpegLoader, collate_bytes, decode_batch, decode_jpeg_cpu
from loaders.source import FileReader

GROUPS = [ViewGroup(2, 32, (0.3, 1.0), (3 / 4, 4 / 3)), ViewGroup(6, 18, (0.05, 0.3), (3 / 4, 4 / 3))]


def natural_image(w, h, seed=0):
    """Smooth structure plus texture, like a photo: random low-frequency waves and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] += np.sin(x * fx * 6.3 + y * fy * 6.3 + phase)
    img = (img - img.min()) / (img.max() - img.min()) * 220 + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("box, size", [((10, 20, 180, 240, False), 96), ((0, 0, 40, 30, True), 64),
                                       ((50, 60, 120, 120, False), 32)])
def test_crop_close_to_pil_bicubic(box, size):
    arr = natural_image(300, 200)
    top, left, h, w, flip = box
    ours = multi_crop_torch([torch.from_numpy(arr).permute(2, 0, 1).contiguous()], [[box]], size)[0, 0]
    pil = Image.fromarray(arr).resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
    if flip:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
    diff = (ours.float() - ref).abs()
    assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())


@pytest.fixture
def mixed_files(tmp_path):
    files = []
    for i, mode in enumerate(["RGB", "L", "CMYK", "RGB"]):
        arr = natural_image(80 + 10 * i, 60, seed=i)
        im = Image.fromarray(arr).convert(mode)
        path = tmp_path / (f"{i}.png" if i == 3 else f"{i}.jpg")
        im.save(path)
        files.append(str(path))
    return files


def test_decode_batch_handles_grey_cmyk_png(mixed_files):
    images = decode_batch([read_file(f) for f in mixed_files], mixed_files, torch.device("cpu"))
    for f, im in zip(mixed_files, images):
        ref = np.array(Image.open(f).convert("RGB"))
        assert im.shape == (3, *ref.shape[:2]) and im.dtype == torch.uint8
        # JPEG decoders differ slightly (and CMYK conversion more): compare coarsely
        assert (im.permute(1, 2, 0).float() - torch.from_numpy(ref).float()).abs().mean() < 6


def test_cpu_decode_equals_torchvision(tmp_path):
    """The CPU decode (simplejpeg) gives torchvision's decode_jpeg pixels, in the same layout."""
    path = tmp_path / "photo.jpg"
    Image.fromarray(natural_image(123, 77)).save(path, quality=90)
    data = read_file(str(path))
    ours, ref = decode_jpeg_cpu(data), decode_jpeg(data)
    assert ours.shape == ref.shape == (3, 77, 123) and ours.dtype == torch.uint8
    assert (ours.int() - ref.int()).abs().max() <= 1


def test_nvjpeg_views_match_pil_backend(mixed_files):
    split = Split(mixed_files, [0, 1, 2, 3])
    device = torch.device("cpu")
    ours = next(iter(build_loader("nvjpeg", split, GROUPS, 4, 0, device, 0).epoch(0)))
    ref = next(iter(build_loader("pil", split, GROUPS, 4, 0, device, 0).epoch(0)))
    assert torch.equal(ours.indices, ref.indices)
    for a, b in zip(ours.views, ref.views):
        assert a.shape == b.shape and a.dtype == torch.uint8
        diff = (a.float() - b.float()).abs()
        assert diff.mean() < 3, diff.mean()


def test_multi_crop_layout_view_major():
    images = [torch.full((3, 20, 20), i, dtype=torch.uint8) for i in range(3)]
    boxes = [[(0, 0, 20, 20, False), (5, 5, 10, 10, True)] for _ in images]
    out = multi_crop_torch(images, boxes, 8)
    assert out.shape == (2, 3, 3, 8, 8) and is_channels_last_views(out)
    for b in range(3):
        assert (out[:, b] == b).all()


def test_cpu_workers_cut_the_same_views(mixed_files):
    """On the CPU the workers decode and cut; the views equal the in-process ones, also after the
    main process has used its crop thread pool (forked workers make their own)."""
    split = Split(mixed_files * 2, [0, 1, 2, 3] * 2)
    device = torch.device("cpu")
    in_process = list(build_loader("nvjpeg", split, GROUPS, 4, 0, device, 0).epoch(1))
    in_workers = list(build_loader("nvjpeg", split, GROUPS, 4, 0, device, 2).epoch(1))
    assert len(in_process) == len(in_workers) == 2
    for a, b in zip(in_process, in_workers):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))


def test_cpu_worker_buffers_reused_only_after_release(mixed_files):
    """Workers write each batch into a shared buffer they reuse once the main process lets go of it:
    views held by the consumer never change, and dropped buffers come back (the main process keeps
    its mapping, so a returning buffer has the same address)."""
    split = Split(mixed_files * 8, [0, 1, 2, 3] * 8)
    device = torch.device("cpu")
    reference = [b.views for e in range(3) for b in build_loader("nvjpeg", split, GROUPS, 2, 0, device, 0).epoch(e)]
    loader = build_loader("nvjpeg", split, GROUPS, 2, 0, device, 2)
    held, addresses = [], []
    for epoch in range(3):
        for b, batch in enumerate(loader.epoch(epoch)):
            if (epoch, b) in ((0, 0), (1, 7)):  # kept to the end; the other batches are dropped at once
                held.append((len(addresses), batch.views))
            addresses.append(batch.views[0].untyped_storage().data_ptr())
            del batch
    for i, views in held:
        assert all(torch.equal(x, y) for x, y in zip(views, reference[i]))
    assert len(addresses) == 48 and len(set(addresses)) <= 2 * 5 + len(held)


def encoded(arr, mode="RGB", **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buffer, format=save.pop("format", "JPEG"), **save)
    return buffer.getvalue()


def test_jpeg_size_reads_the_frame_header():
    photo = natural_image(120, 80)
    for data in (encoded(photo), encoded(photo, progressive=True), encoded(photo, "L"), encoded(photo, "CMYK")):
        assert jpeg_size(data) == image_size(data) == (120, 80)
    # an EXIF thumbnail is a JPEG of its own, with its own frame header, inside the APP1 segment
    thumbnail = b"Exif\0\0" + encoded(natural_image(16, 12))
    main = encoded(photo)
    with_thumbnail = main[:2] + b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + main[2:]
    assert jpeg_size(with_thumbnail) == (120, 80)
    assert decode_jpeg_cpu(torch.frombuffer(bytearray(with_thumbnail), dtype=torch.uint8)).shape == (3, 80, 120)
    assert jpeg_size(main[:2] + b"\xff" + main[2:]) == (120, 80)  # a fill byte before a marker
    # not a JPEG, or no frame header: PIL's header reader says
    png = encoded(photo, format="PNG")
    assert jpeg_size(png) is None and image_size(png) == (120, 80)
    assert jpeg_size(main[:20]) is None


def test_workers_ship_each_images_size_and_the_boxes_drawn_for_it(mixed_files):
    split = Split(mixed_files, [0, 1, 2, 3])
    dataset = FileBytes(split, GROUPS, seed=7, reader=FileReader(split))
    batch = collate_bytes([dataset[(3, i)] for i in range(4)])
    assert batch.boxes.shape == (4, 2 + 6, 5) and batch.boxes.dtype == torch.int64 and batch.epoch == 3
    for i, path in enumerate(mixed_files):
        with Image.open(path) as im:
            width, height = im.size
        assert batch.sizes[i].tolist() == [height, width]
        drawn = [list(box) for group in view_params(7, 3, i, width, height, GROUPS) for box in group]
        assert batch.boxes[i].tolist() == drawn


def test_views_are_cut_from_the_boxes_of_seed_epoch_and_index(mixed_files):
    """The views the loader cuts are those of :func:`view_params` for (seed, epoch, index) and the
    decoded image's size, bit for bit, whichever process draws the boxes."""
    split = Split(mixed_files, [0, 1, 2, 3])
    batch = next(iter(build_loader("nvjpeg", split, GROUPS, 4, 5, torch.device("cpu"), 0).epoch(2)))
    indices = batch.indices.tolist()
    images = decode_batch([read_file(mixed_files[i]) for i in indices], [mixed_files[i] for i in indices],
                          torch.device("cpu"))
    params = [view_params(5, 2, i, im.shape[2], im.shape[1], GROUPS) for im, i in zip(images, indices)]
    for g, group in enumerate(GROUPS):
        assert torch.equal(batch.views[g], multi_crop_torch(images, [p[g] for p in params], group.size))


def test_the_process_that_trains_draws_no_boxes(mixed_files, monkeypatch):
    """Sizes and boxes come from the workers: the process that decodes (on CUDA, the one that
    trains) spends no time on them (they held the GIL 15-25 ms a batch of 256 there)."""
    trainer = os.getpid()

    def only_in_workers(fn):
        def guarded(*args, **kwargs):
            assert os.getpid() != trainer, f"{fn.__name__} ran in the process that decodes"
            return fn(*args, **kwargs)
        return guarded

    monkeypatch.setattr(geometry, "view_params", only_in_workers(geometry.view_params))
    monkeypatch.setattr(nvjpeg, "image_size", only_in_workers(nvjpeg.image_size))
    split = Split(mixed_files * 2, [0, 1, 2, 3] * 2)
    loader = NvjpegLoader(split, GROUPS, 4, 0, torch.device("cpu"), 2, decode_in_workers=False)
    assert len(list(loader.epoch(0))) == 2


def test_a_decode_of_another_size_than_the_header_is_refused(mixed_files):
    split = Split(mixed_files, [0, 1, 2, 3])
    batch = collate_bytes([FileBytes(split, GROUPS, 0, FileReader(split))[(0, i)] for i in range(4)])
    wrong = batch._replace(sizes=batch.sizes + torch.tensor([[0, 0], [0, 0], [1, 0], [0, 0]]))
    with pytest.raises(DataError, match=r"2\.jpg: decoded to 60x100 pixels, its header says 61x100"):
        DecodeAndCut(split, GROUPS, torch.device("cpu")).views(wrong)


class BatchedDecodeThatRejects:
    """torchvision's batched decode (on the CPU here), failing the whole call for any file in
    ``rejected`` as nvJPEG fails a batch holding a CMYK JPEG; it records what it decoded."""

    def __init__(self, rejected):
        self.rejected = {d.data_ptr() for d in rejected}
        self.calls, self.decoded = 0, {}

    def __call__(self, data):
        self.calls += 1
        if any(d.data_ptr() in self.rejected for d in data):
            raise RuntimeError("Error while decoding JPEG images: Unknown chroma subsampling")
        images = decode_jpeg(data, mode=ImageReadMode.RGB)
        self.decoded.update({d.data_ptr(): im for d, im in zip(data, images)})
        return images


def test_a_file_the_batched_decoder_rejects_goes_alone_to_the_cpu(tmp_path):
    files = []
    for i in range(16):
        path = tmp_path / (f"{i}.png" if i == 3 else f"{i}.jpg")
        im = Image.fromarray(natural_image(40 + i, 30, seed=i))
        (im.convert("CMYK") if i == 11 else im).save(path)
        files.append(str(path))
    data = [read_file(f) for f in files]
    decode = BatchedDecodeThatRejects([data[11]])
    images = decode_batch(data, files, torch.device("cpu"), decode)
    for i, (d, im) in enumerate(zip(data, images)):
        if i in (3, 11):  # the PNG never reaches the batched decoder, the CMYK JPEG fails in it
            assert d.data_ptr() not in decode.decoded
            ref = np.array(Image.open(files[i]).convert("RGB"))
            assert (im.permute(1, 2, 0).float() - torch.from_numpy(ref).float()).abs().mean() < 6
        else:  # every other JPEG is the batched decoder's own output
            assert im.data_ptr() == decode.decoded[d.data_ptr()].data_ptr()
    assert decode.calls <= 1 + 2 * 4  # halving 15 JPEGs down to the bad one, not one call per file


@pytest.mark.parametrize("failure", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    # torchvision's CUDA decode re-raises what it caught as a plain RuntimeError with the message
    RuntimeError("Error while decoding JPEG images: CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("Error while decoding JPEG images: Failed to synchronize CUDA stream: 700"),
    # nvJPEG's own buffers come from cudaMalloc, outside torch's cache: a full GPU fails there
    RuntimeError("Error while decoding JPEG images: Failed to decode batch: 5"),
])
def test_device_failures_are_raised_not_taken_for_a_bad_file(mixed_files, failure):
    calls = []

    def failing(data):
        calls.append(len(data))
        raise failure

    data = [read_file(f) for f in mixed_files]
    with pytest.raises(type(failure), match=str(failure)[:20]):
        decode_batch(data, mixed_files, torch.device("cpu"), failing)
    assert calls == [3]  # the three JPEGs, once: no retry, no CPU decode behind the failure


@pytest.mark.parametrize("message, device", [
    ("Error while decoding JPEG images: Failed to decode batch: 5", True),  # ALLOCATOR_FAILURE
    ("Error while decoding JPEG images: Failed to decode batch: 6", True),  # EXECUTION_FAILED
    ("Error while decoding JPEG images: Failed to create nvjpeg decoder: 8", True),
    ("Error while decoding JPEG images: Failed to get image info: 3", False),  # BAD_JPEG
    ("Error while decoding JPEG images: Failed to decode batch: 4", False),  # JPEG_NOT_SUPPORTED
    ("Error while decoding JPEG images: Failed to get image info: 10", False),  # INCOMPLETE_BITSTREAM
    ("Error while decoding JPEG images: Unknown chroma subsampling", False),
])
def test_nvjpeg_statuses_tell_the_device_from_the_file(message, device):
    from loaders.nvjpeg import is_device_failure

    assert is_device_failure(RuntimeError(message)) is device
