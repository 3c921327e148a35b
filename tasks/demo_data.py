"""`mmedpo demo-data`: a small real-image data set built from installed packages.

Images come from pydicom-data / pydicom's test files (real CR, CT, MR, US studies) and
scikit-image (fundus, retinal microaneurysms, IHC pathology). Lesion boxes were set by
looking at each image; the MR's lesion box is read from its overlay plane, which a
radiologist drew around it. DICOM files are copied as they are so that the demo goes
through ingestion's DICOM path (MONOCHROME1 inversion, windowing).

Train and test use different images, so the assembly's leakage check keeps every pair.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from tasks.store import write_if_changed

REPORT_PROMPT = "Describe the findings of this image."

# name -> (source, file); source "dicom" = pydicom test file, "skimage" = skimage.data function
IMAGES = {
    "chest_xray.dcm": ("dicom", "RG1_UNCI.dcm"),
    "tibia_xray.dcm": ("dicom", "RG3_UNCI.dcm"),
    "liver_mr.dcm": ("dicom", "examples_overlay.dcm"),
    "lymph_node_us.dcm": ("dicom", "US1_UNCI.dcm"),
    "spine_ct.dcm": ("dicom", "CT_small.dcm"),
    "shoulder_mr.dcm": ("dicom", "MR2_UNCI.dcm"),
    "head_mr.dcm": ("dicom", "emri_small.dcm"),
    "retina.jpg": ("skimage", "retina"),
    "retina_microaneurysms.png": ("skimage", "microaneurysms"),
    "pathology_ihc.png": ("skimage", "immunohistochemistry"),
}

CHEST_MASSES = [[380, 1050, 620, 1240], [1240, 600, 1445, 795], [1335, 1075, 1565, 1270], [1380, 770, 1555, 955]]
TIBIA_FIBROMA = [[770, 980, 900, 1220]]
LIVER_MASS = [117, 102, 168, 165]  # the large rim-enhancing lesion; the overlay marks a second one
NODE_BOXES = [[88, 150, 313, 292], [320, 150, 546, 292]]
OPTIC_DISC = [[113, 536, 325, 790]]
MICROANEURYSMS = [[13, 17, 22, 25], [44, 66, 53, 74]]
IHC_GLAND = [[256, 302, 384, 471]]

# (id, image, task, question, answer, answer_type, boxes, split)
QUESTIONS = [
    ("chest-1", "chest_xray.dcm", "vqa", "Are there masses in the lungs?", "yes", "closed", CHEST_MASSES, "train"),
    (
        "chest-2",
        "chest_xray.dcm",
        "vqa",
        "What abnormality is seen in the lungs?",
        "multiple lung masses",
        "open",
        CHEST_MASSES,
        "train",
    ),
    ("chest-3", "chest_xray.dcm", "vqa", "Is there a pleural effusion?", "no", "closed", CHEST_MASSES, "train"),
    (
        "chest-4",
        "chest_xray.dcm",
        "vqa",
        "Are the masses in one lung or in both?",
        "both lungs",
        "open",
        CHEST_MASSES,
        "train",
    ),
    (
        "chest-5",
        "chest_xray.dcm",
        "report",
        REPORT_PROMPT,
        "Multiple round masses in both lungs, consistent with metastases. No pleural effusion. Normal heart size.",
        "report",
        CHEST_MASSES,
        "train",
    ),
    ("tibia-1", "tibia_xray.dcm", "vqa", "Is there a lesion in the tibia?", "yes", "closed", TIBIA_FIBROMA, "train"),
    (
        "tibia-2",
        "tibia_xray.dcm",
        "vqa",
        "Where is the lesion located?",
        "distal tibia",
        "open",
        TIBIA_FIBROMA,
        "train",
    ),
    ("tibia-3", "tibia_xray.dcm", "vqa", "What imaging modality is this?", "X-ray", "open", TIBIA_FIBROMA, "train"),
    (
        "tibia-4",
        "tibia_xray.dcm",
        "report",
        REPORT_PROMPT,
        "Lucent lesion with a sclerotic margin in the distal tibia, consistent with a non-ossifying fibroma. No "
        "fracture.",
        "report",
        TIBIA_FIBROMA,
        "train",
    ),
    ("liver-1", "liver_mr.dcm", "vqa", "Is there a lesion in the liver?", "yes", "closed", "liver", "train"),
    ("liver-2", "liver_mr.dcm", "vqa", "Which organ contains the lesion?", "liver", "open", "liver", "train"),
    ("liver-3", "liver_mr.dcm", "vqa", "What modality is used?", "MRI", "open", "liver", "train"),
    ("liver-4", "liver_mr.dcm", "vqa", "Is the lesion in the left kidney?", "no", "closed", "liver", "train"),
    (
        "liver-5",
        "liver_mr.dcm",
        "report",
        REPORT_PROMPT,
        "Large round lesion with an enhancing rim in the right liver lobe and a small second lesion laterally. Normal "
        "kidneys.",
        "report",
        "liver",
        "train",
    ),
    ("node-1", "lymph_node_us.dcm", "vqa", "What organ is shown?", "lymph node", "open", NODE_BOXES, "train"),
    (
        "node-2",
        "lymph_node_us.dcm",
        "vqa",
        "Is there increased blood flow in the node?",
        "yes",
        "closed",
        NODE_BOXES,
        "train",
    ),
    ("retina-1", "retina.jpg", "vqa", "Are there retinal hemorrhages?", "no", "closed", OPTIC_DISC, "train"),
    (
        "retina-2",
        "retina.jpg",
        "vqa",
        "What is the bright round structure on the left?",
        "optic disc",
        "open",
        OPTIC_DISC,
        "train",
    ),
    (
        "retina-3",
        "retina.jpg",
        "vqa",
        "What imaging modality is this?",
        "fundus photography",
        "open",
        OPTIC_DISC,
        "train",
    ),
    ("ma-1", "retina_microaneurysms.png", "vqa", "Are there microaneurysms?", "yes", "closed", MICROANEURYSMS, "train"),
    (
        "ma-2",
        "retina_microaneurysms.png",
        "vqa",
        "How many microaneurysms are visible?",
        "2",
        "open",
        MICROANEURYSMS,
        "train",
    ),
    (
        "ihc-1",
        "pathology_ihc.png",
        "vqa",
        "Is there membrane staining in the tumor cells?",
        "yes",
        "closed",
        IHC_GLAND,
        "train",
    ),
    ("ihc-2", "pathology_ihc.png", "vqa", "What type of image is this?", "pathology", "open", IHC_GLAND, "train"),
    ("spine-1", "spine_ct.dcm", "vqa", "What modality is this?", "CT", "open", [], "test"),
    ("spine-2", "spine_ct.dcm", "vqa", "Is there a fracture of the vertebral body?", "no", "closed", [], "test"),
    ("shoulder-1", "shoulder_mr.dcm", "vqa", "Which joint is shown?", "shoulder", "open", [], "test"),
    ("shoulder-2", "shoulder_mr.dcm", "vqa", "Is this an MRI?", "yes", "closed", [], "test"),
    ("head-1", "head_mr.dcm", "vqa", "Which body part is shown?", "head", "open", [], "test"),
    ("head-2", "head_mr.dcm", "vqa", "Is this a CT scan?", "no", "closed", [], "test"),
]


def build_demo_data(out: Path) -> Path:
    """Write ``out/demo.jsonl`` and ``out/images/``; returns the JSONL path. Idempotent: a file
    is written only when its bytes differ, so a second build leaves the folder untouched."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, (source, ref) in IMAGES.items():
        materialize(source, ref, images / name)
    liver_boxes = [LIVER_MASS, overlay_box(images / "liver_mr.dcm")]
    lines = []
    for sample_id, image, task, question, answer, answer_type, boxes, split in QUESTIONS:
        boxes = liver_boxes if boxes == "liver" else boxes
        lines.append(
            json.dumps(
                {
                    "id": sample_id,
                    "image": f"images/{image}",
                    "question": question,
                    "answer": answer,
                    "answer_type": answer_type,
                    "task": task,
                    "split": split,
                    "boxes": boxes,
                }
            )
        )
    path = out / "demo.jsonl"
    write_if_changed(path, ("\n".join(lines) + "\n").encode())
    return path


def overlay_box(path: Path) -> list[int]:
    """The bounding box of the overlay drawing around the liver lesion (left part of the image;
    the overlay also holds burned-in labels elsewhere)."""
    import pydicom

    overlay = pydicom.dcmread(path).overlay_array(0x6000)
    ys, xs = np.nonzero(overlay[:, : overlay.shape[1] // 4])
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def materialize(source: str, ref: str, target: Path) -> None:
    """Write one of the real images installed packages ship (``IMAGES``' sources) to ``target``,
    unless the same bytes are there already."""
    if source == "dicom":
        from pydicom.data import get_testdata_file

        # download=False: never reach for the network (pydicom would try for missing files).
        found = get_testdata_file(ref, download=False)
        if found is None:
            raise FileNotFoundError(f"pydicom test file {ref} is not installed (pip install pydicom-data)")
        data = Path(found).read_bytes()
    else:
        import skimage.data
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, ref)()).save(buffer, format=Image.registered_extensions()[target.suffix])
        data = buffer.getvalue()
    write_if_changed(target, data)
