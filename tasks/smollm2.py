"""The converted SmolLM2-135M-Instruct folder (models/smollm2.py converts it), built once into
``data/models/`` and recorded beside it with its content digest, as the artifact store computes
it; a folder whose content still has the recorded digest is left as it is."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from models.smollm2 import DISTRIBUTION, FOLDER_NAME, convert, gguf_path
from tasks.store.files import temp_folder, write_text_atomic
from tasks.store.keys import digest_memo, file_digest

# The digest database of data/models/: a re-check costs a stat per file, not a read.
DIGESTS = ".digests.sqlite"


def record_path(folder: Path) -> Path:
    """Where the folder's build record (its content digest, where it came from) is kept: beside it."""
    return folder.with_name(folder.name + ".json")


def ensure(folder: str | os.PathLike[str], log: Any = print) -> dict[str, Any]:
    """The converted model at ``folder``, built when missing or changed; returns its record
    (``digest``: the folder's content digest, as the artifact store computes it).

    Idempotent: a folder whose content still has the recorded digest is left as it is.
    """
    folder = Path(folder).resolve()
    memo = digest_memo(folder.parent / DIGESTS)
    record_file = record_path(folder)
    if folder.is_dir() and record_file.is_file():
        record = json.loads(record_file.read_text())
        if memo.tree(folder) == record.get("digest"):
            return record
        log(f"{folder}: content differs from its record; rebuilding")
    source = gguf_path()
    started = time.perf_counter()
    log(f"converting {source.name} from the {DISTRIBUTION} wheel into {folder} (once; about 30 s)")
    tmp = temp_folder(folder.parent, FOLDER_NAME)
    try:
        convert(source, tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {
        "model": FOLDER_NAME,
        "digest": memo.tree(folder),
        "source": f"{DISTRIBUTION}==0.1.2:{source.name}",
        "source_sha256": file_digest(source),
        "dtype": "bfloat16",
        "files": sorted(p.name for p in folder.iterdir()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(record_file, json.dumps(record, indent=2) + "\n")
    log(f"built {folder} in {record['seconds']} s (digest {record['digest'][:16]})")
    return record
