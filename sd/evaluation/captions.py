"""The captions an evaluation generates from: MS-COCO's captions_*.json or a text file.

COCO (the usual FID-5k / FID-30k protocol): the images sorted by image id, and for each the first of its
captions in the file's order (each COCO image has five); the first N such captions. A text file: one
caption per line, blank lines skipped. Caption k is image k's, so a run resumes and splits by index.
"""
import json
from pathlib import Path


class CaptionsError(ValueError):
    """A captions file that cannot be used (the message names the file and what is wrong)."""


def coco_captions(data, path):
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CaptionsError(f"{path}: not an MS-COCO captions file (expected a JSON object with 'annotations': "
                            f"[{{'image_id', 'caption'}}, ...], as captions_val2017.json)")
    first = {}
    for k, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or not isinstance(a.get("caption"), str) or "image_id" not in a:
            raise CaptionsError(f"{path}: annotation {k} has no 'image_id' and 'caption' string: {str(a)[:80]}")
        first.setdefault(a["image_id"], a["caption"].strip())
    ids = sorted(im["id"] for im in data["images"] if im.get("id") in first) if isinstance(data.get("images"), list) \
        else sorted(first)
    return [first[i] for i in ids]


def read_captions(path, n=None):
    """The first n captions (all with n=None) of a COCO captions .json or a .txt file, one per line."""
    path = Path(path)
    if not path.is_file():
        raise CaptionsError(f"--captions {path}: no such file (MS-COCO's captions_val2017.json, or a text file "
                            f"with one caption per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise CaptionsError(f"--captions {path}: cannot be read as UTF-8 text ({e})") from None
    if path.suffix == ".json":
        try:
            captions = coco_captions(json.loads(text), path)
        except json.JSONDecodeError as e:
            raise CaptionsError(f"--captions {path}: malformed JSON ({e})") from None
    else:
        captions = [line.strip() for line in text.splitlines() if line.strip()]
    if not captions:
        raise CaptionsError(f"--captions {path}: holds no caption")
    if n is not None and n > len(captions):
        raise CaptionsError(f"--n {n}: {path} holds only {len(captions)} captions")
    return captions if n is None else captions[:n]
