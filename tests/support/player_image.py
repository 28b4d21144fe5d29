"""The player test image: the session's Python base plus one layer, the player as `python`.

The operator's pods run `python -m speedrun_trainer...`. In this image `python` is found first in
/opt/player/bin, where it is tests/support/player_program.py behind a `#!/usr/bin/python3 -I`
line, so a pod of the trainer's command runs the player instead of training, in a real container
as the operator made it (uid 1000, read-only root, /tmp an emptyDir; the player writes nothing
but the termination-log file the kubelet mounts). The base is the one tests/support/base_image.py
makes for the project's images (Debian bookworm's python3), so the layer is a few kilobytes: a
build is `buildah from` the base, `buildah copy`, `buildah config`, commit and push, seconds.

The tag is a hash of the player's source, this recipe and the base's digest; the loopback registry
(tests/support/image_registry.py) is asked for it first, so a second run builds nothing. Builds
take the images' lock (tests/support/images.py), so two sessions never build at once.

    ref, built = ensure_player(registry)   # "127.0.0.1:<port>/speedrun/player:<hash>", False: found
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from tests.support import player_program
from tests.support.base_image import REPOSITORY as BASE_REPOSITORY
from tests.support.base_image import ensure_base, run_logged
from tests.support.image_registry import CACHE, Registry
from tests.support.images import build_lock

REPOSITORY = "speedrun/player"
PROGRAM = Path(player_program.__file__)
PLAYER_PATH = "/opt/player/bin/python"
SHEBANG = "#!/usr/bin/python3 -I\n"  # -I: the pod's PYTHON* variables and the script's dir do not apply
PATH = "/opt/player/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONFIG = ["--env", f"PATH={PATH}", "--env", "LANG=C.UTF-8", "--cmd", "python", "--user", "1000:1000",
          "--label", "dev.speedrun.test=player"]  # fmt: skip


def player_tag(base_digest: str) -> str:
    recipe = "\n".join([SHEBANG, PLAYER_PATH, *CONFIG, base_digest, PROGRAM.read_text()])
    return "py3-" + hashlib.sha256(recipe.encode()).hexdigest()[:16]


def ensure_player(registry: Registry) -> tuple[str, bool]:
    """The player image's reference in `registry`, built and pushed first when its tag is not there;
    and whether it was built."""
    with build_lock("PYTHON_IMAGE"):  # it builds on the 3.11 base, as the trainer does
        base = ensure_base(registry)
        base_repo, _, base_tag = base.removeprefix(registry.host + "/").rpartition(":")
        assert base_repo == BASE_REPOSITORY, base
        base_digest = registry.digest(base_repo, base_tag)
        if base_digest is None:
            raise RuntimeError(f"{base}: not in the registry")
        tag = player_tag(base_digest)
        ref = registry.ref(REPOSITORY, tag)
        if registry.digest(REPOSITORY, tag) is not None:
            return ref, False
        build(base, ref)
        return ref, True


def build(base: str, ref: str) -> None:
    log = CACHE / "run" / f"player-{ref.rpartition(':')[2]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="speedrun-player-") as tmp:
        program = Path(tmp) / "python"
        program.write_text(SHEBANG + PROGRAM.read_text())
        container = run_logged(["buildah", "from", "--tls-verify=false", "--pull=false", base], log)
        try:
            run_logged(["buildah", "copy", "--chmod", "0755", container, str(program), PLAYER_PATH], log)
            run_logged(["buildah", "config", *CONFIG, container], log)
            run_logged(["buildah", "commit", "--rm", container, ref], log)
            container = ""
        finally:
            if container:
                subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    try:
        run_logged(["buildah", "push", "--tls-verify=false", ref], log)
    finally:
        subprocess.run(["buildah", "rmi", ref], capture_output=True, check=False)  # the registry keeps it
