"""Rebuilds a labelled image set's pictures (dev/handset2, dev/handset3) from fetched bare git mirrors, where a
mirror of owner/name is MIRROR/owner+name/repo: each item is (file, repository, path, crop), the crop (x0, y0, x1,
y1) cutting one picture out of a result grid or page; a JPEG source without a crop is copied byte for byte,
everything else saved as RGB."""
import io
import os
import subprocess
from typing import Dict, Optional, Sequence, Tuple

from PIL import Image

Item = Tuple[str, str, str, Optional[Tuple[int, int, int, int]]]


def rebuild(commits: Dict[str, str], items: Sequence[Item], mirrors: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for name, repo, path, crop in items:
        git = os.path.join(mirrors, repo.replace("/", "+"), "repo")
        data = subprocess.run(["git", "--git-dir", git, "show", f"{commits[repo]}:{path}"], check=True,
                              capture_output=True).stdout
        source = Image.open(io.BytesIO(data))
        if crop is None and source.format == "JPEG" and source.mode == "RGB" and name.endswith(".jpg"):
            with open(os.path.join(out, name), "wb") as f:
                f.write(data)
            continue
        image = source.convert("RGB")
        if crop:
            image = image.crop(crop)
        image.save(os.path.join(out, name), **({"quality": 95} if name.endswith(".jpg") else {}))
        print(name, image.size)
